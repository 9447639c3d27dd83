"""The embedded stack `npu-worker up` runs: its Redis is bounded and trimmed, and a new run forgets the
workers of the previous one."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from dispatcher.protocol import Keys, pack
from dispatcher.settings import Settings
from npu_worker.redis_server import EmbeddedRedis, free_port
from npu_worker.stack import REDIS_FILE, start_embedded, stop_embedded
from tests.cli.test_status import beat
from tests.conftest import ROOT, signed

MODEL = "all-minilm-l6-v2"


def plant_live_worker(client: redis.Redis, prefix: str, ttl_s: float = 60) -> str:
    """A worker's heartbeat as a worker writes it, live for `ttl_s`."""
    b = beat(999999, {MODEL: "cpu"})
    keys, expires = Keys(prefix), time.time() + ttl_s
    client.set(keys.worker(b.worker_id), pack(b), px=int(ttl_s * 1000))
    client.zadd(keys.workers, {b.worker_id: expires})
    client.zadd(keys.live(MODEL), {b.worker_id: expires})
    return b.worker_id


def fill(client: redis.Redis) -> None:
    """Up to the bound: big writes first, then small ones, until even a small one is refused."""
    i = 0
    for size in (256 * 1024, 4096, 64):
        with pytest.raises(redis.exceptions.OutOfMemoryError):  # noeviction: refused, nothing dropped
            for _ in range(16 * 1024 * 1024 // size):  # 16 MiB at most, should the bound not hold
                client.set(f"full:ballast:{i}", b"x" * size)
                i += 1


def test_config_module_and_debug_are_disabled(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis", persist=False) as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        for command in (("CONFIG", "GET", "dir"), ("MODULE", "LIST"), ("DEBUG", "SLEEP", "0")):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(*command)
        client.close()


def test_a_full_embedded_redis_refuses_jobs_with_503_redis_full(tmp_path: Path, settings: Settings) -> None:
    ours = settings.model_copy(update={"state_dir": tmp_path, "redis_maxmemory_mb": 3, "key_prefix": "full"})
    embedded, ours = start_embedded(ours)
    try:
        client = ours.redis()
        plant_live_worker(client, ours.key_prefix)
        fill(client)
        kept = sum(1 for _ in client.scan_iter(match="full:ballast:*"))
        with signed(TestClient(create_app(ours))) as c:
            r = c.post("/embeddings", json={"texts": ["x"], "model": MODEL, "allow_cloud": False})
        assert r.status_code == 503 and r.json()["error"] == "redis_full", r.text
        assert r.headers["Retry-After"]
        assert sum(1 for _ in client.scan_iter(match="full:ballast:*")) == kept  # nothing evicted
        client.close()
    finally:
        stop_embedded(ours, embedded)
    assert not (tmp_path / REDIS_FILE).exists()


def test_a_new_run_forgets_the_previous_runs_workers(tmp_path: Path, settings: Settings) -> None:
    """An unclean stop leaves heartbeats, valid for their TTL, in the append-only file."""
    ours = settings.model_copy(update={"state_dir": tmp_path, "key_prefix": "again"})
    embedded, first = start_embedded(ours)
    client = first.redis()
    worker_id = plant_live_worker(client, ours.key_prefix)
    client.close()
    embedded.process.kill()  # type: ignore[union-attr]  # as an unclean stop would
    embedded.process.wait()  # type: ignore[union-attr]
    embedded, second = start_embedded(ours)
    try:
        client, keys = second.redis(), Keys(ours.key_prefix)
        assert client.zcount(keys.live(MODEL), time.time(), "+inf") == 0
        with TestClient(create_app(second)) as c:
            assert c.get("/readyz").status_code == 503
        # still known as a dead worker, so its peers take over its jobs
        score = client.zscore(keys.workers, worker_id)
        assert score is not None and score <= time.time()
        client.close()
    finally:
        stop_embedded(second, embedded)


def test_prepared_models_are_private(tmp_path: Path, settings: Settings) -> None:
    """The README promises a 0700 state directory with 0600 files; models built by an older version (the
    umask's 0755/0644) are tightened too."""
    from worker.prepare import prepare_all

    models = tmp_path / "models"
    models.mkdir(mode=0o755)
    for name in settings.model_copy().models_dir.iterdir():  # prepared once per machine: not rebuilt
        if not name.name.startswith("."):
            (models / name.name).symlink_to(name)
    older = models / "exported-earlier"
    older.mkdir(mode=0o755)
    (older / "openvino_model.xml").write_text("<net/>")
    (older / "openvino_model.xml").chmod(0o644)
    prepare_all(settings.model_copy(update={"state_dir": tmp_path}))
    assert stat.S_IMODE(models.stat().st_mode) == 0o700
    assert stat.S_IMODE(older.stat().st_mode) == 0o700
    assert stat.S_IMODE((older / "openvino_model.xml").stat().st_mode) == 0o600


def test_up_after_an_unclean_stop_is_not_ready_from_the_old_runs_heartbeats(tmp_path: Path,
                                                                               settings: Settings) -> None:
    """The embedded Redis's data as a run killed with its workers leaves it: heartbeats still valid. A new
    `up` (no workers here, so nothing can be ready) must not answer `/readyz` 200 from them."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "models").symlink_to(settings.models_dir)
    with EmbeddedRedis(state / "redis") as previous:  # persisted, as up runs it
        client = redis.Redis.from_url(previous.url)
        for model in ("all-minilm-l6-v2", "smollm2-135m-instruct"):
            b = beat(999999, {model: "cpu"})
            b = b.model_copy(update={"worker_id": f"{b.worker_id}-{model}"})
            client.set(Keys("npu").worker(b.worker_id), pack(b), px=60_000)
            client.zadd(Keys("npu").workers, {b.worker_id: time.time() + 60})
            client.zadd(Keys("npu").live(model), {b.worker_id: time.time() + 60})
        client.close()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_") and k != "REDIS_URL"}
    env.update({"NPU_STATE_DIR": str(state), "NPU_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)})
    up = subprocess.Popen([sys.executable, "-m", "npu_worker", "up", "--port", str(port), "--workers", "0"],
                          env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert up.poll() is None and time.monotonic() < deadline
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert ready.status_code == 503, ready.text
        assert {m["workers"] for m in ready.json()["models"].values()} == {0}
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
