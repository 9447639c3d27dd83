"""`--api-workers N`: N facade processes on one port, each answering."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from dispatcher.settings import Settings
from npu_worker.redis_server import free_port
from tests.conftest import ADMIN_TOKEN, ROOT, worker_env


def test_serve_runs_several_facade_processes_on_one_port(settings: Settings) -> None:
    port = free_port()
    env = worker_env(settings, NPU_ADMIN_TOKENS=f'["{ADMIN_TOKEN}"]')
    proc = subprocess.Popen([sys.executable, "-m", "npu_worker", "serve", "--port", str(port), "--api-workers", "2"],
                            env=env, cwd=ROOT)
    try:
        url, deadline, children = f"http://127.0.0.1:{port}", time.monotonic() + 60, []
        while time.monotonic() < deadline:
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            try:
                if len(children) >= 2 and httpx.get(f"{url}/livez", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        facades = [c for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(facades) == 2, children  # uvicorn's processes (spawned), not threads
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
            assert all(client.get("/models").status_code == 200 for _ in range(20))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
