"""When a job counts as lost with its worker, and when it has been lost too often: one policy for both lanes.

A worker is dead once its heartbeat expired. The workers index (`Keys.workers`) remembers each worker's
expiry for `DEAD_WORKER_MEMORY_S`, so a peer can tell "died" (take over its jobs) from "never one of
ours" (a plain `rq worker`, whose jobs RQ's own rules cover). A job handed to `max_deliveries` workers
that all died with it is a poison job: it is failed visibly (the interactive dead-letter stream, RQ's
failed registry) instead of taking down the fleet one worker at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from dispatcher.protocol import Keys

DELIVERIES = "npu_deliveries"
"""`job.meta` key of a bulk job: names of the workers that died while running it (its lost deliveries)."""


def worker_expiries(r: redis.Redis, keys: Keys, worker_ids: list[str]) -> dict[str, float | None]:
    """When each worker's heartbeat expires (in the past: dead); None: not one of ours, or dead for long."""
    if not worker_ids:
        return {}
    return dict(zip(worker_ids, r.zmscore(keys.workers, worker_ids), strict=True))


def dead_workers(r: redis.Redis, keys: Keys, worker_ids: list[str]) -> set[str]:
    """Workers among these whose heartbeat expired. Only our workers read the streams, so an id unknown to
    the index is a worker dead for longer than it remembers (or a Redis that lost its data)."""
    now = time.time()
    return {w for w, expiry in worker_expiries(r, keys, worker_ids).items() if expiry is None or expiry < now}


@dataclass(frozen=True)
class Deliveries:
    """How many lost deliveries a job may have before it is given up on."""

    max_deliveries: int

    def exhausted(self, lost: int) -> bool:
        """True when `lost` workers died with the job: it is not handed to another one."""
        return lost >= self.max_deliveries
