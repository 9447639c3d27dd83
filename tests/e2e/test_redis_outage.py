"""Redis goes away and comes back empty: the facade answers (503, or the cloud) throughout, the worker
stays up, and requests are served by it again within 2 s of Redis's return.

This test runs its own redis-server on a port of its own; the machine's Redis is never touched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dispatcher.settings import Settings
from npu_worker.redis_server import EmbeddedRedis
from tests.cloud_server import CloudServer
from tests.conftest import WorkerProcess, signed

MODEL = "all-minilm-l6-v2"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    yield server
    server.stop()


def _embed(c: TestClient, allow_cloud: bool) -> tuple[int, dict]:
    response = c.post("/embeddings", json={"texts": ["outage"], "model": MODEL, "allow_cloud": allow_cloud})
    return response.status_code, response.json()


def test_redis_outage_without_persistence(own_redis: EmbeddedRedis, settings: Settings, cloud: CloudServer) -> None:
    s = settings.model_copy(update={"redis_url": own_redis.url, "cloud_base_url": cloud.base_url})
    proc, restarted = WorkerProcess(s, models=[MODEL]), None
    try:
        proc.wait_live()
        with signed(TestClient(create_app(s))) as c:
            assert _embed(c, allow_cloud=False)[1]["source"] == "npu"

            own_redis.stop()
            started = time.monotonic()
            status, body = _embed(c, allow_cloud=False)
            assert status == 503 and body["error"] == "redis_unavailable"
            assert time.monotonic() - started < 1.0  # a quick answer, not redis-py's retries for seconds
            status, body = _embed(c, allow_cloud=True)
            assert status == 200 and body["source"] == "cloud" and body["fallback_reason"] == "redis_unavailable"
            assert c.get("/health").status_code == 503
            time.sleep(3)
            assert proc.proc.poll() is None, "the worker exited while Redis was away"

            restarted = EmbeddedRedis(own_redis.directory, port=own_redis.port, persist=False).start()  # empty
            back = time.monotonic()
            while True:
                status, body = _embed(c, allow_cloud=False)
                if status == 200 and body["source"] == "npu":
                    break
                assert time.monotonic() - back < 10, (status, body)
                time.sleep(0.05)
            recovered_in = time.monotonic() - back
            print(f"served by the worker again {recovered_in:.2f}s after Redis returned")
            assert recovered_in <= 2.0
            assert c.get("/health").json()["status"] in ("healthy", "degraded")
        assert proc.proc.poll() is None
    finally:
        proc.stop()
        if restarted:
            restarted.stop()
