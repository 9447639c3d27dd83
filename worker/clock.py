"""Redis's clock, as seen from this worker.

A stream entry's id is Redis's own time (ms) when the job was queued, and a job carries how long its
caller waits from then (`Job.budget_ms`). Comparing the two on Redis's clock means no two hosts' wall
clocks are ever compared: a caller whose clock is minutes off still has its jobs run, and its late
jobs still dropped.
"""

from __future__ import annotations

import time

import redis

REFRESH_S = 30.0
"""How often the offset is measured again (one TIME round trip); clocks drift by far less meanwhile."""


class RedisClock:
    def __init__(self, r: redis.Redis):
        self.redis = r
        self._offset_s = 0.0
        self._next = 0.0

    def now_ms(self) -> float:
        """Redis's time now, in ms."""
        if time.monotonic() >= self._next:
            before = time.time()
            seconds, micros = self.redis.time()
            after = time.time()
            self._offset_s = seconds + micros / 1e6 - (before + after) / 2
            self._next = time.monotonic() + REFRESH_S
        return (time.time() + self._offset_s) * 1000


def entry_ms(entry_id: bytes) -> int:
    """When a stream entry was added, in Redis's clock (the first part of its id)."""
    return int(entry_id.split(b"-", 1)[0])
