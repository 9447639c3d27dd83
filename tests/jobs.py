"""RQ job functions the tests enqueue on the bulk lane; a worker process imports them by name."""

from __future__ import annotations

import os
from pathlib import Path


def exit_first_time(marker: str) -> str:
    """Kills the worker running it the first time (as a crash or kill -9 would), succeeds after."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died once")
        os._exit(1)
    return "survived"


def always_exit() -> None:
    """A poison job: kills every worker that runs it."""
    os._exit(1)
