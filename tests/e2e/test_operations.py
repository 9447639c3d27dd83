"""A request id given to the facade shows up in the worker's JSON log lines for that job."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastapi.testclient import TestClient

from api.app import create_app
from dispatcher.settings import Settings
from tests.conftest import WorkerProcess, signed


def test_request_id_follows_the_job_into_json_worker_logs(isolated: Settings, tmp_path: Path) -> None:
    log_file = tmp_path / "worker.log"
    proc = WorkerProcess(isolated, models=["all-minilm-l6-v2"], log_file=log_file, NPU_LOG_JSON="true",
                         NPU_LOG_LEVEL="DEBUG")
    try:
        proc.wait_live()
        with signed(TestClient(create_app(isolated))) as c:
            response = c.post("/embeddings", json={"texts": ["trace me"], "model": "all-minilm-l6-v2"},
                              headers={"X-Request-ID": "trace-7f3a"})
            assert response.status_code == 200 and response.headers["x-request-id"] == "trace-7f3a"
            assert len(c.get("/models").headers["x-request-id"]) == 16  # one is made when none is given
        deadline = time.monotonic() + 10
        lines: list[dict] = []
        while time.monotonic() < deadline:
            lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
            if any(entry.get("request_id") == "trace-7f3a" for entry in lines):
                break
            time.sleep(0.2)
        traced = [entry for entry in lines if entry.get("request_id") == "trace-7f3a"]
        assert traced and "embedded job" in traced[0]["message"] and traced[0]["level"] == "DEBUG"
    finally:
        proc.stop()


def test_status_lists_live_workers_and_queues(settings: Settings, worker: WorkerProcess) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT, worker_env

    out = subprocess.run([sys.executable, "-m", "npu_worker", "status"], env={**worker_env(settings),
                         "COLUMNS": "250"}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert settings.node_id in out.stdout and "all-minilm-l6-v2 (CPU, text-embedding)" in out.stdout
    assert "live worker(s)" in out.stdout and "worker(s) on cpu" in out.stdout  # per-model summary rows
