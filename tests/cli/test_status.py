"""`npu-worker status`'s table at the README's threshold width: every model name and its device whole on
one line, and the `queued i/b` column explained."""

from __future__ import annotations

import io
import time

from rich.console import Console

from dispatcher.protocol import Heartbeat
from npu_worker.status import WIDE, render

MODELS = {"all-minilm-l6-v2": "cpu", "smollm2-135m-instruct": "cpu"}


def beat(pid: int, models: dict[str, str]) -> Heartbeat:
    node = "workstation-01"
    return Heartbeat(worker_id=f"{node}:{pid}:a1b2c3", node_id=node, pid=pid, started=time.time(), at=time.time(),
                     models=models, devices={m: "CPU" for m in models}, max_concurrent=32, memory_gb=15.5,
                     queue_depth=123, queue_depths={m: {"interactive": 3, "bulk": 120} for m in models}, running=1,
                     utilization=12.5, busy_fraction=0.3, counters={"jobs": 12345, "bulk_jobs": 6789})


def shown(width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(render([beat(123456, MODELS), beat(123457, {"all-minilm-l6-v2": "cpu"})],
                         "redis://:***@127.0.0.1:6379/0", "npu", width))
    return console.export_text()


def test_table_at_110_columns_keeps_models_whole_and_explains_queued() -> None:
    text = shown(WIDE)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= WIDE
    for model, device in MODELS.items():
        assert any(f"{model} ({device})" in line for line in lines), text
    assert "workstation-01:123456:a1b2c3" in text
    assert "queued i/b: jobs waiting in the interactive / bulk lane" in text, text


def test_narrow_terminal_gets_blocks() -> None:
    text = shown(80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "all-minilm-l6-v2: 2 worker(s) on cpu, queued" in text, text
