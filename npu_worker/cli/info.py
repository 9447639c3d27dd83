"""Commands that look at the fleet: `status` (like `rq info`) and `alive` (a container healthcheck)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from dispatcher.settings import Settings, get_settings

from .app import Failure
from .checks import check_redis, where

if TYPE_CHECKING:
    from dispatcher.protocol import Heartbeat


async def _live_beats(settings: Settings) -> list[Heartbeat]:
    """The fleet service is async (the facade's); a CLI command runs it once with `asyncio.run`."""
    from dispatcher.fleet import Fleet
    from dispatcher.models import Registry
    from dispatcher.protocol import Keys

    r = settings.aredis()
    try:
        return await Fleet(r, Keys(settings.key_prefix), settings, Registry.load(settings)).heartbeats()
    finally:
        await r.aclose()


def live_beats(settings: Settings) -> list[Heartbeat]:
    import asyncio

    return asyncio.run(_live_beats(settings))


def status(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every 2 s until Ctrl-C.")] = False,
) -> None:
    """Live workers, their models and devices, both lanes' queue depth and utilization (like `rq info`)."""
    from rich.console import Console as StdoutConsole
    from rich.console import RenderableType
    from rich.live import Live

    from ..status import render

    settings = get_settings()
    check_redis(settings)
    out = StdoutConsole()

    def now() -> RenderableType:
        return render(live_beats(settings), where(settings), settings.key_prefix, out.width)

    if not watch:
        out.print(now())
        return
    with Live(now(), console=out, refresh_per_second=1) as live:
        try:
            while True:
                time.sleep(2)
                live.update(now())
        except KeyboardInterrupt:
            pass


def alive(
    pid: Annotated[int, typer.Option(help="The worker process's id (1: the worker of a container).")] = 1,
) -> None:
    """Liveness of one worker (a container healthcheck): exit 0 if the worker with this pid on this node
    (NPU_NODE_ID) has a live heartbeat in Redis, else 1. A worker beats from a thread of its own even in a
    long inference, so a missing beat means it is dead, stuck or cut off from Redis."""
    settings = get_settings()
    check_redis(settings)
    if not any(b.pid == pid and b.node_id == settings.node_id for b in live_beats(settings)):
        raise Failure(f"no live heartbeat from worker pid {pid} on node {settings.node_id!r}")
    print(f"alive: worker pid {pid} on node {settings.node_id}")
