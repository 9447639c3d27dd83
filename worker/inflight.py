"""What this process holds across steps of its loop, in one place, changed only through these methods.

Two kinds of work outlive the step that took them: generations (interactive ones report through the
outbox, pushed after each step; bulk ones report to RQ when their engine finishes them) and the bulk
jobs this process has taken. The lanes are built once and command this state; nothing copies it.
text-embeddings-inference's queue (one owner acting on commands) is the model.
"""

from __future__ import annotations

from dispatcher.protocol import Job, Reply


class InFlight:
    def __init__(self) -> None:
        self._bulk: set[str] = set()
        """Ids of the bulk jobs this process is running: a job started under its name but not here was
        orphaned by a Redis failure, and the reaper requeues it like a dead worker's."""
        self._bulk_generating: set[str] = set()
        """Ids of bulk generations in an engine: they outlive the step that started them."""
        self._outbox: list[tuple[Job, Reply]] = []
        """Interactive generations' messages produced during a step, pushed together after it."""

    # --- bulk jobs

    def bulk_taken(self, job_id: str) -> None:
        self._bulk.add(job_id)

    def bulk_generating(self, job_id: str) -> None:
        """The bulk job entered a generation engine: it keeps running after this step."""
        self._bulk_generating.add(job_id)

    def bulk_ended(self, job_id: str) -> None:
        """Finished or failed (called before RQ is told, so a Redis failure then leaves it orphaned)."""
        self._bulk.discard(job_id)
        self._bulk_generating.discard(job_id)

    def bulk_interrupted(self) -> None:
        """Redis failed mid-batch: only generations in an engine still run here (an embedding batch never
        outlives its step), so every other job taken, even one caught half-dequeued, is orphaned."""
        self._bulk &= self._bulk_generating

    def runs_bulk(self, job_id: str) -> bool:
        return job_id in self._bulk

    # --- interactive generations' replies

    def reply(self, job: Job, reply: Reply) -> None:
        self._outbox.append((job, reply))

    def take_replies(self) -> list[tuple[Job, Reply]]:
        replies, self._outbox = self._outbox, []
        return replies
