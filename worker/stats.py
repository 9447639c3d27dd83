"""The worker's counters and busy time: written by the loop, read by the heartbeat thread.

Every write and the snapshot take one lock, so a heartbeat never copies a counter dict that the loop
is growing (which raises in CPython) and always sees counters, busy time and the running embedding
batch of the same instant.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import psutil

from dispatcher.protocol import BATCH_BUCKETS


@cache
def _me() -> psutil.Process:
    return psutil.Process()


def rss_bytes() -> int:
    """This process's resident memory, for the heartbeat: what an operator sizes machines by."""
    return int(_me().memory_info().rss)


@dataclass(frozen=True)
class StatsSnapshot:
    counters: dict[str, int]
    busy_seconds: float
    """Inference time since start: the heartbeat turns its growth into `busy_fraction`."""
    embedding: int
    """Texts in the embedding inference running right now."""


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._busy_seconds = 0.0
        self._embedding = 0

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def peak(self, name: str, value: int) -> None:
        """Keep the largest value seen."""
        with self._lock:
            self._counters[name] = max(self._counters[name], value)

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    @contextmanager
    def inference(self, texts: int = 0) -> Iterator[None]:
        """Time an inference as busy; `texts` are counted as running while it lasts."""
        started = time.perf_counter()
        with self._lock:
            self._embedding = texts
        try:
            yield
        finally:
            with self._lock:
                self._busy_seconds += time.perf_counter() - started
                self._embedding = 0

    def count_model(self, model: str, inferences: int, items: int, seconds: float) -> None:
        """Per-model activity for the fleet's details view: inferences, texts or tokens, busy time."""
        with self._lock:
            self._counters[f"model:{model}:inferences"] += inferences
            self._counters[f"model:{model}:items"] += items
            self._counters[f"model:{model}:busy_ms"] += int(seconds * 1000)

    def count_batches(self, sizes: list[int]) -> None:
        """Embedding batches, with the cumulative histogram buckets /metrics shows."""
        with self._lock:
            self._counters["batches"] += len(sizes)
            self._counters["texts"] += sum(sizes)
            for size in sizes:
                self._counters["batch_texts"] += size
                for bound in BATCH_BUCKETS:
                    if size <= bound:
                        self._counters[f"batch_le_{bound}"] += 1

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(dict(self._counters), self._busy_seconds, self._embedding)
