"""Fair share among apps, where the jobs wait: a short in-worker queue per model, served in weighted order.

Each app's jobs wait in streams of their own (`Keys.stream(..., tag)`), so one app's long queue never
stands in front of another's job. The worker reads every app's streams in one XREADGROUP (COUNT applies
per stream), keeps what it read here, and takes each batch in start-time fair queueing order: an app's
next job starts at the later of the virtual clock and its previous job's finish, finishes `work / weight`
later, and the job with the earliest start goes next. So apps with queued work share the device in
proportion to their weights, counted in work (texts for embeddings, tokens for generation), an app that
was idle banks no credit, and a lone app takes every batch (work-conserving). Inside an app, its
low-priority jobs go only when it has no normal ones.

What is held here is pending on this worker (read, not acked): a peer takes it over if the worker dies,
as any read entry. The lane reads an app's streams again only while it holds less than a batch of its
work, so at most about two batches per app wait here rather than in Redis.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from dispatcher.protocol import Job


@dataclass(frozen=True)
class Held:
    """A job read from `stream` and not yet served."""

    stream: str
    entry_id: bytes
    job: Job
    work: int


def work_of(job: Job) -> int:
    """What a job costs the device, in the unit fairness counts: texts, or a generation's token budget."""
    if job.kind == "embed":
        return max(1, len(job.texts or []))
    return max(1, job.max_tokens or 1)


class FairQueue:
    """One model's held jobs, by app, taken in weighted fair order."""

    def __init__(self, weight: Callable[[str], float]):
        self.weight = weight
        self._normal: dict[str, deque[Held]] = {}
        self._low: dict[str, deque[Held]] = {}
        self._finish: dict[str, float] = {}
        self._clock = 0.0
        self._work: dict[str, int] = {}

    def add(self, app: str, low: bool, held: Held) -> None:
        (self._low if low else self._normal).setdefault(app, deque()).append(held)
        self._work[app] = self._work.get(app, 0) + held.work

    def work(self, app: str) -> int:
        """Work of `app` held here."""
        return self._work.get(app, 0)

    def __len__(self) -> int:
        return sum(len(q) for q in self._normal.values()) + sum(len(q) for q in self._low.values())

    def clear(self) -> None:
        self._normal.clear()
        self._low.clear()
        self._work.clear()

    def _head(self, app: str) -> deque[Held] | None:
        for queues in (self._normal, self._low):
            queue = queues.get(app)
            if queue:
                return queue
        return None

    def take(self, max_work: int, max_jobs: int | None = None) -> list[Held]:
        """The next jobs in fair order, up to `max_work` (the first job always, whatever its work) and
        `max_jobs`."""
        taken: list[Held] = []
        total = 0
        while max_jobs is None or len(taken) < max_jobs:
            best: tuple[float, str] | None = None
            for app in set(self._normal) | set(self._low):
                if self._head(app) is None:
                    continue
                start = max(self._clock, self._finish.get(app, 0.0))
                if best is None or (start, app) < best:
                    best = (start, app)
            if best is None:
                break
            start, app = best
            queue = self._head(app)
            assert queue is not None
            if taken and total + queue[0].work > max_work:
                break
            held = queue.popleft()
            taken.append(held)
            total += held.work
            self._work[app] -= held.work
            self._clock = start
            self._finish[app] = start + held.work / self.weight(app)
        return taken
