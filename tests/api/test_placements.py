"""Where each model really runs, its engine and the earlier devices' refusals: from a real worker's heartbeat to
`/health`, the node card's data and `npu-worker status`."""

from __future__ import annotations

import io

import openvino as ov
from fastapi.testclient import TestClient
from rich.console import Console

from api.app import create_app
from dispatcher.settings import Settings
from npu_worker.status import WIDE, render
from tests.conftest import ADMIN_TOKEN, WorkerProcess, as_operator

MODEL = "all-minilm-l6-v2"


def test_health_node_and_status_show_device_engine_and_refusals(isolated: Settings) -> None:
    missing = [d for d in ("NPU", "GPU") if d not in ov.Core().available_devices]
    proc = WorkerProcess(isolated, models=[MODEL])
    try:
        proc.wait_live()
        beat = proc.beat()
        with as_operator(TestClient(create_app(isolated)), ADMIN_TOKEN) as c:
            health = c.get("/health").json()
            node = next(n for n in c.get("/api/fleet/nodes").json()["nodes"] if n["id"] == isolated.node_id)
    finally:
        proc.stop()
    assert beat is not None and beat.placements is not None
    placed = beat.placements[MODEL]
    assert placed.device == beat.devices[MODEL] and placed.engine == "text-embedding"
    assert [d for d in placed.refused if d in missing] == missing and all(placed.refused.values())
    assert health["placements"][MODEL] == placed.model_dump()
    assert node["placements"][MODEL] == placed.model_dump()
    console = Console(width=WIDE, record=True, file=io.StringIO())
    console.print(render([beat], "redis://127.0.0.1:6379/0", isolated.key_prefix, WIDE))
    text = console.export_text()
    assert f"{MODEL} ({placed.device}, text-embedding)" in text, text
    for device in missing:
        assert f"{MODEL}: {device} refused: " in text, text
