"""Fixtures: a real Redis (6379 when it answers, else an embedded one), a key prefix per test session,
real worker processes on the bundled models, an OpenAI-compatible "cloud" server, and credentials of the
session (a service key, an admin and a viewer token, an app key) with helpers that make a TestClient use them.

Nothing here touches keys outside the session's prefix; everything it made is deleted at the end.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from starlette import testclient

from dispatcher.protocol import Heartbeat, Keys, unpack
from dispatcher.settings import Settings
from dispatcher.signing import ServiceAuth
from npu_worker.redis_server import EmbeddedRedis
from tests.cloud_server import CloudServer, ThreadedServer

ROOT = Path(__file__).resolve().parent.parent

SERVICE_ID = "tests"
SERVICE_KEY = secrets.token_hex(32)
ADMIN_TOKEN = secrets.token_urlsafe(32)
VIEWER_TOKEN = secrets.token_urlsafe(32)
APP_KEY = secrets.token_urlsafe(32)
"""This session's credentials; every facade the tests build accepts them (see `settings`)."""


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """NPU_TEST_REDIS_URL if set; else the machine's Redis on 6379; else an embedded one."""
    url = os.environ.get("NPU_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"
    if _redis_answers(url):
        yield url
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False) as embedded:
        yield embedded.url


def _cleanup(url: str, prefix: str) -> None:
    r = redis.Redis.from_url(url)
    for key in r.scan_iter(match=f"*{prefix}*", count=1000):
        r.delete(key)
    # RQ names its job and result keys by job id alone; a job of this session names its queue (`origin`).
    rq_keys = list(r.scan_iter(match="rq:*", count=1000))
    ours = {k.split(b":")[2] for k in rq_keys if k.startswith(b"rq:job:") and k.count(b":") == 2
            and prefix.encode() in (r.hget(k, "origin") or b"")}
    doomed = [k for k in rq_keys if len(parts := k.split(b":")) > 2 and parts[2] in ours]
    if doomed:
        r.delete(*doomed)
    for index in ("rq:queues", "rq:workers"):
        stale = [m for m in r.smembers(index) if prefix.encode() in m]
        if stale:
            r.srem(index, *stale)


@pytest.fixture(scope="session")
def session_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"npt{uuid.uuid4().hex[:8]}"
    yield prefix
    _cleanup(redis_url, prefix)


@pytest.fixture(scope="session")
def settings(redis_url: str, session_prefix: str) -> Settings:
    """Settings of the shared worker: the machine's prepared models, this session's keys."""
    from worker.prepare import prepare_all

    s = Settings(redis_url=redis_url, key_prefix=session_prefix, node_id=f"{session_prefix}-node",
                 cloud_base_url=None, service_keys={SERVICE_ID: SERVICE_KEY}, admin_tokens=[ADMIN_TOKEN],
                 viewer_tokens=[VIEWER_TOKEN], api_keys=[APP_KEY], service_id=SERVICE_ID, service_key=SERVICE_KEY)
    prepare_all(s)
    return s


def signed(client: TestClient, auth: ServiceAuth | None = None) -> TestClient:
    """Makes every request of `client` signed by the real `ServiceAuth` flow (this session's key, v1 unless
    `auth` says otherwise). The flow is wrapped in the Auth base class of whichever httpx flavour the
    TestClient is built on (newer Starlette uses httpx2), since httpx checks that class."""
    auth = auth or ServiceAuth(SERVICE_ID, SERVICE_KEY)

    class Flavoured(testclient.httpx.Auth):
        requires_request_body = True

        def auth_flow(self, request: Any) -> Any:
            return auth.auth_flow(request)

    client.auth = Flavoured()
    return client


def as_operator(client: TestClient, token: str) -> TestClient:
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_") and k != "REDIS_URL"}
    env.update({"REDIS_URL": settings.redis_address, "NPU_KEY_PREFIX": settings.key_prefix,
                "NPU_NODE_ID": settings.node_id, "NPU_STATE_DIR": str(settings.state_dir),
                "NPU_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


def live_beats(settings: Settings) -> list[Heartbeat]:
    r, keys = settings.redis(), Keys(settings.key_prefix)
    ids = r.zrangebyscore(keys.workers, time.time(), "+inf")
    raws = r.mget([keys.worker(i.decode()) for i in ids]) if ids else []
    return [Heartbeat.model_validate(unpack(raw)) for raw in raws if raw]


class WorkerProcess:
    """A real `npu-worker work` process."""

    def __init__(self, settings: Settings, models: list[str] | None = None, log_file: Path | None = None,
                 **env: str):
        args = [sys.executable, "-m", "npu_worker", "work"]
        for m in models or []:
            args += ["--model", m]
        self.settings = settings
        self.log = open(log_file, "wb") if log_file else None  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(args, env=worker_env(settings, **env), cwd=ROOT, stderr=self.log)

    def wait_live(self, timeout: float = 90) -> Heartbeat:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for beat in live_beats(self.settings):
                if beat.pid == self.proc.pid:
                    return beat
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}")
            time.sleep(0.2)
        raise TimeoutError("worker did not report a heartbeat")

    def beat(self) -> Heartbeat | None:
        return next((b for b in live_beats(self.settings) if b.pid == self.proc.pid), None)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log:
            self.log.close()


@pytest.fixture(scope="session")
def worker(settings: Settings) -> Iterator[WorkerProcess]:
    """One worker serving both bundled models, shared by the session."""
    proc = WorkerProcess(settings)
    proc.wait_live()
    yield proc
    proc.stop()


@pytest.fixture
def isolated(redis_url: str, settings: Settings) -> Iterator[Settings]:
    """Settings under a fresh prefix of their own: no worker serves them unless the test starts one."""
    prefix = f"{settings.key_prefix}x{uuid.uuid4().hex[:6]}"
    yield settings.model_copy(update={"key_prefix": prefix, "node_id": f"{prefix}-node"})
    _cleanup(redis_url, prefix)


@pytest.fixture(scope="session")
def cloud() -> Iterator[CloudServer]:
    server = CloudServer(dim=384).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def wrong_dim_cloud() -> Iterator[CloudServer]:
    server = CloudServer(dim=1536).start()
    yield server
    server.stop()


class LiveFacade(ThreadedServer):
    """The facade on a loopback port, in a thread of the test process."""

    def __init__(self, settings: Settings):
        from api.app import create_app

        super().__init__(create_app(settings))
        self.start()


@pytest.fixture(scope="session")
def facade(settings: Settings, worker: WorkerProcess) -> Iterator[LiveFacade]:
    """A facade on a real port in front of the session's worker."""
    live = LiveFacade(settings)
    yield live
    live.stop()
