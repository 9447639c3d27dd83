"""Point 2: the embedded Redis is locked (a generated password, private files), `up` hands the password
to everything it starts and `status` finds it; an external REDIS_URL with an ACL user and password works
for the facade, a worker, the dispatcher, the bulk lane, the CLI and `rq info`."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from dispatcher.client import Dispatcher
from dispatcher.settings import Settings
from npu_worker.redis_server import EmbeddedRedis, free_port, redis_server_binary
from tests.conftest import ADMIN_TOKEN, ROOT, WorkerProcess, _cleanup

from .helpers import MODEL, app, bearer


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private(directory: Path) -> None:
    assert mode(directory) == 0o700, directory
    for path in directory.rglob("*"):
        assert mode(path) == (0o700 if path.is_dir() else 0o600), (path, oct(mode(path)))


def test_the_embedded_redis_needs_its_password_and_keeps_its_files_private(tmp_path: Path) -> None:
    directory = tmp_path / "redis"
    with EmbeddedRedis(directory, persist=True) as embedded:
        with pytest.raises(redis.AuthenticationError):  # NOAUTH
            redis.Redis(port=embedded.port).set("k", "v")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=embedded.port, password="guess").ping()
        client = redis.Redis.from_url(embedded.url)
        client.set("k", "v")
        client.bgrewriteaof()
        time.sleep(0.5)
        assert embedded.process is not None
        cmdline = Path(f"/proc/{embedded.process.pid}/cmdline").read_bytes()
        assert embedded.password.encode() not in cmdline  # `ps` shows every user the command line
        first = embedded.password
        assert_private(directory)
        assert {p.name for p in directory.iterdir()} >= {"password", "redis.conf", "redis.log"}
    with EmbeddedRedis(directory, port=embedded.port, persist=True) as again:  # a restart: same password
        assert again.password == first and redis.Redis.from_url(again.url).get("k") == b"v"


@pytest.fixture
def acl_redis(tmp_path: Path, session_prefix: str) -> Iterator[str]:
    """A redis-server of our own with the default user off and one ACL user: REDIS_URL as an operator
    with an external, locked Redis writes it."""
    port = free_port()
    conf = tmp_path / "acl.conf"
    conf.write_text("user default off\nuser npu on >s3cret-pass ~* &* +@all\n")
    proc = subprocess.Popen([redis_server_binary(), str(conf), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    url = f"redis://npu:s3cret-pass@127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_an_external_redis_with_an_acl_user_works_everywhere(acl_redis: str, settings: Settings,
                                                             session_prefix: str) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(acl_redis.replace("npu:s3cret-pass@", "")).ping()
    locked = settings.model_copy(update={"redis_url": acl_redis, "key_prefix": f"{session_prefix}acl"})
    worker = WorkerProcess(locked, models=[MODEL])
    try:
        worker.wait_live()
        dispatcher = Dispatcher(locked)
        assert dispatcher.embed(["hello"], MODEL, allow_cloud=False).source == "npu"  # interactive lane
        job = dispatcher.submit_embed(["bulk hello"], MODEL)  # bulk lane
        deadline = time.monotonic() + 60
        while job.get_status(refresh=True) != "finished" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(job.latest_result().return_value["embeddings"]) == 1  # type: ignore[union-attr]
        with TestClient(app(locked)) as client:  # the facade
            answer = client.post("/embeddings", json={"texts": ["hi"], "model": MODEL}, headers=bearer(ADMIN_TOKEN))
            assert answer.status_code == 200 and answer.json()["source"] == "npu"
        env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_")}
        env.update(REDIS_URL=acl_redis, NPU_KEY_PREFIX=locked.key_prefix, PYTHONPATH=str(ROOT), COLUMNS="200")
        status = cli("npu_worker", "status", env=env)  # the CLI
        assert status.returncode == 0 and "1 live worker" in status.stdout, status.stdout + status.stderr
        assert "s3cret-pass" not in status.stdout  # the URL is shown without its password
        info = subprocess.run([str(Path(sys.executable).parent / "rq"), "info", "-u", acl_redis, "-S",
                               "dispatcher.protocol.MsgpackSerializer", f"{locked.key_prefix}:{MODEL}"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert info.returncode == 0 and f"{locked.key_prefix}:{MODEL}" in info.stdout, info.stdout + info.stderr
    finally:
        worker.stop()
        _cleanup(acl_redis, locked.key_prefix)


def test_up_locks_its_redis_and_everything_it_starts_has_the_password(tmp_path: Path, settings: Settings,
                                                                        session_prefix: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "models").symlink_to(settings.models_dir)  # prepared already: `up` finds them
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_") and k != "REDIS_URL"}
    env.update(NPU_STATE_DIR=str(state), NPU_KEY_PREFIX=f"{session_prefix}up", PYTHONPATH=str(ROOT),
               NPU_MODELS=f'["{MODEL}"]', NPU_LOG_LEVEL="WARNING", COLUMNS="200")
    up = subprocess.Popen([sys.executable, "-m", "npu_worker", "up", "--port", str(port), "--workers", "1"],
                          env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        announced = state / "redis.url"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status = cli("npu_worker", "status", env=env) if announced.exists() else None
            if status and "1 live worker" in status.stdout:
                break
            time.sleep(0.5)
        assert status is not None and "1 live worker" in status.stdout, status  # status read the password
        url = announced.read_text().strip()
        assert mode(announced) == 0o600 and mode(state) == 0o700
        assert_private(state / "redis")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=int(url.rsplit(":", 1)[1].split("/")[0])).keys()
        assert redis.Redis.from_url(url).ping()
        assert httpx.get(f"http://127.0.0.1:{port}/livez").status_code == 200
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
