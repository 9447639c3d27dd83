"""RQ callbacks the bulk tests attach to jobs; a worker process imports them by name.

Each records what it saw under a key named after the job's queue, so the test's prefix cleanup removes it.
"""

from __future__ import annotations

from typing import Any


def _key(job: Any, what: str) -> str:
    return f"{job.origin}:callback:{job.id}:{what}"


def record_success(job: Any, connection: Any, result: Any) -> None:
    connection.set(_key(job, "success"), str(sorted(result)), ex=300)


def record_failure(job: Any, connection: Any, exc_type: Any, exc: Any, traceback: Any) -> None:
    connection.incr(_key(job, "failure"))
    connection.expire(_key(job, "failure"), 300)


def raise_on_success(job: Any, connection: Any, result: Any) -> None:
    raise RuntimeError("a success callback that raises")
