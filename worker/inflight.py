"""What this process holds across steps of its loop, in one place, changed only through these methods.

Two kinds of work outlive the step that took them: generations (interactive ones report through the
outbox, pushed after each step; bulk ones report to RQ when their engine finishes them) and the bulk
jobs this process has taken. The lanes are built once and command this state; nothing copies it.
text-embeddings-inference's queue (one owner acting on commands) is the model.

Cancellation is a command here too: every generation in an engine is registered with how to stop it
(`engine.cancel` bound to its job), and an interactive one with when its caller's budget ends and when it
last told its caller anything, so the outbox flush cuts it at its deadline and sends a generation that
streams no text a sign of progress (`StartReply` again, every `PROGRESS_S`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dispatcher.protocol import PROGRESS_S, DeltaReply, Job, Reply, StartReply

Stop = Callable[[str], bool]
"""Stops one generation in its engine, for a reason (`protocol.CANCEL_REASONS`); False if it had ended."""


@dataclass
class _Generation:
    job: Job | None
    """None for a bulk job (it answers RQ, not a caller's reply key)."""
    stop: Stop
    ends_at: float | None
    """When its caller's budget ends (time.monotonic), if the caller gave one."""
    said_at: float
    """When its caller last got a message from it."""


class InFlight:
    def __init__(self) -> None:
        self._bulk: set[str] = set()
        """Ids of the bulk jobs this process is running: a job started under its name but not here was
        orphaned by a Redis failure, and the reaper requeues it like a dead worker's."""
        self._bulk_generating: set[str] = set()
        """Ids of bulk generations in an engine: they outlive the step that started them."""
        self._outbox: list[tuple[Job, Reply]] = []
        """Interactive generations' messages produced during a step, pushed together after it."""
        self._generations: dict[str, _Generation] = {}
        """Every generation in an engine, by job id: what cancelling it needs."""

    # --- bulk jobs

    def bulk_taken(self, job_id: str) -> None:
        self._bulk.add(job_id)

    def bulk_generating(self, job_id: str, stop: Stop | None = None) -> None:
        """The bulk job entered a generation engine: it keeps running after this step."""
        self._bulk_generating.add(job_id)
        if stop is not None:
            self._generations[job_id] = _Generation(None, stop, None, 0.0)

    def bulk_ended(self, job_id: str) -> None:
        """Finished or failed (called before RQ is told, so a Redis failure then leaves it orphaned)."""
        self._bulk.discard(job_id)
        self._bulk_generating.discard(job_id)
        self._generations.pop(job_id, None)

    def bulk_interrupted(self) -> None:
        """Redis failed mid-batch: only generations in an engine still run here (an embedding batch never
        outlives its step), so every other job taken, even one caught half-dequeued, is orphaned."""
        self._bulk &= self._bulk_generating

    def runs_bulk(self, job_id: str) -> bool:
        return job_id in self._bulk

    # --- interactive generations

    def generating(self, job: Job, stop: Stop, ends_at: float | None, now: float) -> None:
        """An interactive generation entered an engine (its `StartReply` is the first message)."""
        self._generations[job.id] = _Generation(job, stop, ends_at, now)

    def reply(self, job: Job, reply: Reply) -> None:
        self._outbox.append((job, reply))
        if not isinstance(reply, StartReply | DeltaReply):
            self._generations.pop(job.id, None)

    def take_replies(self, now: float) -> list[tuple[Job, Reply]]:
        """The step's messages; a generation that sent none for `PROGRESS_S` gets a repeated start."""
        for job, _ in self._outbox:
            if (generation := self._generations.get(job.id)) is not None:
                generation.said_at = now
        for generation in self._generations.values():
            if generation.job is not None and now - generation.said_at >= PROGRESS_S:
                generation.said_at = now
                self._outbox.append((generation.job, StartReply()))
        replies, self._outbox = self._outbox, []
        return replies

    # --- cancellation

    @property
    def has_generations(self) -> bool:
        """Generations run here: the worker reads its cancel set with each step's replies."""
        return bool(self._generations)

    def overdue(self, now: float) -> list[str]:
        """Ids of the interactive generations whose caller's budget has ended."""
        return [job_id for job_id, g in self._generations.items() if g.ends_at is not None and g.ends_at <= now]

    def cancel(self, job_id: str, reason: str) -> bool:
        """Stop a generation running here (its engine ends it at its next step); False if none runs."""
        generation = self._generations.get(job_id)
        if generation is None:
            return False
        generation.ends_at = None  # told once
        return generation.stop(reason)
