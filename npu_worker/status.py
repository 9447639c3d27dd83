"""What `npu-worker status` prints: a table on a wide terminal, a block of short lines per worker on a
narrow one. Pure functions of the heartbeats, so they are tested without a terminal."""

from __future__ import annotations

import textwrap
import time

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from dispatcher.fleet import by_model, placements
from dispatcher.protocol import Heartbeat

WIDE = 110
"""Columns from which `status` prints its full table; narrower terminals get one block per worker."""
QUEUED = "queued i/b: jobs waiting in the interactive / bulk lane; seen: age of the last heartbeat"


def render(beats: list[Heartbeat], where: str, prefix: str, width: int, now: float | None = None) -> RenderableType:
    now = time.time() if now is None else now
    title = f"npu-worker: {len(beats)} live worker(s) on {where} (prefix {prefix})"
    return table(beats, title, now) if width >= WIDE else blocks(beats, title, now)


def _where(b: Heartbeat, model: str, dtype: str) -> str:
    """`model (CPU, continuous-batching)`: the device it really runs on and its engine (device type alone
    from older workers)."""
    placement = (b.placements or {}).get(model)
    if placement is None or placement.engine is None:
        return f"{model} ({dtype})"
    at_once = f", {placement.max_concurrent} at once" if placement.max_concurrent else ""
    return f"{model} ({placement.device}, {placement.engine}{at_once})"


def _refusals(beats: list[Heartbeat]) -> list[str]:
    """One short line per device that refused a model before the one it runs on."""
    return [f"{model}: {device} refused: {textwrap.shorten(reason, 90, placeholder=' ...')}"
            for model, p in placements(beats).items()
            for device, reason in p.refused.items()]


def _jobs(b: Heartbeat) -> int:
    return b.counters.get("jobs", 0) + b.counters.get("bulk_jobs", 0)


def blocks(beats: list[Heartbeat], title: str, now: float) -> Text:
    out = Text(title + "\n", style="bold")
    for b in sorted(beats, key=lambda b: (b.node_id, b.worker_id)):
        out.append(f"\n{b.worker_id}", style="bold")
        out.append(f"  node {b.node_id}, seen {now - b.at:.1f}s ago\n")
        for m, d in b.models.items():
            depth = b.queue_depths.get(m, {})
            out.append(f"  {_where(b, m, d)}  queued {depth.get('interactive', 0)}/{depth.get('bulk', 0)}\n")
        out.append(f"  running {b.running}, util {b.utilization:.0f}%, busy {b.busy_fraction * 100:.0f}%, "
                   f"jobs {_jobs(b)}\n")
    for model, state in sorted(by_model(beats).items()):
        out.append(f"\n{model}", style="bold")
        out.append(f": {state.workers} worker(s) on {', '.join(sorted(state.devices))}, "
                   f"queued {state.interactive_depth}/{state.bulk_depth} (interactive/bulk)\n")
    for line in _refusals(beats):
        out.append(f"  {line}\n", style="dim")
    return out


def table(beats: list[Heartbeat], title: str, now: float) -> Table:
    """One line per model a worker serves, so a model name and its device stay whole on one line (the
    worker id names the node); the numbers never wrap; the caption says what `queued i/b` counts and which
    devices refused a model."""
    grid = Table(title=title, caption="\n".join([QUEUED, *_refusals(beats)]), caption_justify="left", box=None,
                 header_style="bold")
    grid.add_column("worker", overflow="fold", ratio=1)
    grid.add_column("model (device)", no_wrap=True)
    for column in ("queued i/b", "running", "util %", "busy %", "jobs", "seen"):
        grid.add_column(column, justify="right", no_wrap=True)
    for b in sorted(beats, key=lambda b: (b.node_id, b.worker_id)):
        for n, (m, d) in enumerate(b.models.items() or [("-", "-")]):
            depth = b.queue_depths.get(m, {})
            queued = f"{depth.get('interactive', 0)}/{depth.get('bulk', 0)}"
            if n == 0:
                grid.add_row(b.worker_id, _where(b, m, d), queued, str(b.running), f"{b.utilization:.0f}",
                             f"{b.busy_fraction * 100:.0f}", str(_jobs(b)), f"{now - b.at:.1f}s")
            else:
                grid.add_row("", _where(b, m, d), queued)
    grid.add_row()
    for model, state in sorted(by_model(beats).items()):
        grid.add_row(f"{state.workers} worker(s) on {', '.join(sorted(state.devices))}", Text(model, style="bold"),
                     f"{state.interactive_depth}/{state.bulk_depth}")
    return grid
