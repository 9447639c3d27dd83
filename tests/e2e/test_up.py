"""The README's main job: `npu-worker up` with nothing configured (no REDIS_URL, no keys), then the
signed one-liner `npu-worker call`, plain RQ and `rq info`."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis
from rq import Queue
from rq.job import JobStatus

from dispatcher.protocol import EMBED_TASK, MsgpackSerializer
from dispatcher.settings import Settings
from dispatcher.signing import ServiceHTTPClient
from npu_worker.redis_server import free_port, redacted
from tests.conftest import ROOT


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_up_runs_redis_facade_and_worker_and_stops_them_all(tmp_path: Path, settings: Settings) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "models").symlink_to(settings.models_dir)  # prepared once per machine; up must not rebuild
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_") and k != "REDIS_URL"}
    env.update({"NPU_STATE_DIR": str(state), "NPU_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)})
    log = tmp_path / "up.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "npu_worker", "up", "--port", str(port), "--workers", "1"],
                                env=env, cwd=ROOT, start_new_session=True, stdin=subprocess.DEVNULL, stderr=out)
    base = f"http://127.0.0.1:{port}"
    credentials = state / "credentials.json"
    try:
        deadline = time.monotonic() + 120
        while not credentials.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no credentials generated"
            time.sleep(0.1)
        # A backend on this machine signs with the generated key without any configuration.
        client = ServiceHTTPClient(settings=Settings(state_dir=state), base_url=base, timeout=30)
        while True:
            assert proc.poll() is None, "npu-worker up exited"
            assert time.monotonic() < deadline, "not healthy in time"
            try:
                if client.get("/health", timeout=2).json().get("status") == "healthy":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)

        # Nothing but liveness answers without credentials; the generated ones are private to their owner.
        assert httpx.get(f"{base}/livez").json() == {"status": "ok"}
        assert httpx.get(f"{base}/health").status_code == 401
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        secrets = json.loads(credentials.read_text())
        printed = log.read_text()
        assert str(credentials) in printed and "npu-worker call" in printed
        assert secrets["service_key"] not in printed and secrets["admin_token"] not in printed
        # the OpenAI section's app key is named too (where it is, not what it is)
        assert "api_key <app_key from that file>" in printed and secrets["app_key"] not in printed
        # the prepared models are private like the rest of the state directory
        models = (state / "models").resolve()
        assert stat.S_IMODE(models.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600) for p in models.rglob("*"))
        # up says when the models are served, so the quick start's first call does not meet a 503.
        while "ready: all-minilm-l6-v2, smollm2-135m-instruct served at" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

        # The README's one-liner (signed v2), and the same with the seed's v1.
        call = [sys.executable, "-m", "npu_worker", "call", "--url", base]
        done = subprocess.run([*call, "POST", "/embeddings", '{"texts":["hi"],"model":"all-minilm-l6-v2"}'],
                              capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
        assert done.returncode == 0, done.stderr
        body = json.loads(done.stdout)
        assert len(body["embeddings"][0]) == 384 and body["source"] == "npu"
        body = client.post("/embeddings", json={"texts": ["hi"], "model": "all-minilm-l6-v2"}).json()
        assert len(body["embeddings"][0]) == 384 and body["source"] == "npu"
        v1 = subprocess.run([*call, "--v1", "GET", "/health"], capture_output=True, text=True, timeout=60,
                            cwd=ROOT, env=env)
        assert v1.returncode == 0 and json.loads(v1.stdout)["status"] == "healthy", v1.stderr
        missing = subprocess.run([*call, "GET", "/nope"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                                 env=env)
        assert missing.returncode == 1 and "404" in missing.stderr
        # Without --url, call finds the facade up announced (here not on the default port).
        facade = state / "facade.url"
        assert facade.read_text().strip() == base and stat.S_IMODE(facade.stat().st_mode) == 0o600
        found = subprocess.run([sys.executable, "-m", "npu_worker", "call", "GET", "/health"], capture_output=True,
                               text=True, timeout=60, cwd=ROOT, env=env)
        assert found.returncode == 0 and json.loads(found.stdout)["status"] == "healthy", found.stderr
        # The generated admin token is an operator's way in.
        admin = httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {secrets['admin_token']}"})
        assert admin.status_code == 200
        client.close()

        # The embedded Redis is where up says it is; a backend with plain RQ uses it.
        url = (state / "redis.url").read_text().strip()
        queue = Queue("npu:all-minilm-l6-v2", connection=redis.Redis.from_url(url), serializer=MsgpackSerializer)
        job = queue.enqueue(EMBED_TASK, kwargs={"texts": ["bulk"], "model": "all-minilm-l6-v2"})
        end = time.monotonic() + 30
        while job.get_status() != JobStatus.FINISHED and time.monotonic() < end:
            time.sleep(0.1)
        assert len(job.latest_result().return_value["embeddings"][0]) == 384

        # The README's rq info command shows the per-model queues and the worker.
        rq = Path(sys.executable).parent / "rq"
        info = subprocess.run([str(rq), "info", "-u", url, "-S", "dispatcher.protocol.MsgpackSerializer"],
                              capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)
        assert "npu:all-minilm-l6-v2" in info.stdout and "npu:smollm2-135m-instruct" in info.stdout
        assert "1 workers" in info.stdout, info.stdout

        # With no REDIS_URL, the CLI finds the embedded Redis that up announced.
        status = subprocess.run([sys.executable, "-m", "npu_worker", "status"], capture_output=True, text=True,
                                timeout=60, cwd=ROOT, env={**env, "COLUMNS": "200"})
        assert "1 live worker(s)" in status.stdout and redacted(url) in status.stdout, status.stdout + status.stderr
        assert url not in status.stdout  # the password is not printed
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0
    end = time.monotonic() + 20
    while _group_alive(proc.pid) and time.monotonic() < end:  # worker and redis-server are in its group
        time.sleep(0.2)
    assert not _group_alive(proc.pid), "a child of up outlived it"
    assert not (state / "redis.url").exists()  # nothing announces a Redis that is gone
    assert not (state / "facade.url").exists()
    # ... and nothing falls back to another Redis: status says no stack runs
    status = subprocess.run([sys.executable, "-m", "npu_worker", "status"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT, env=env)
    assert status.returncode == 1 and status.stderr.startswith("error: no Redis"), status.stdout + status.stderr
