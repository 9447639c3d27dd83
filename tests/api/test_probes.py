"""`/livez` and `/readyz` (unauthenticated probes) and the Retry-After of a 503 `no_worker`."""

from __future__ import annotations

import socket
import time

from fastapi.testclient import TestClient

from api.app import create_app
from dispatcher.settings import Settings
from tests.conftest import WorkerProcess, signed

MODEL, LLM = "all-minilm-l6-v2", "smollm2-135m-instruct"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ready_when_every_model_has_a_live_worker(settings: Settings, worker: WorkerProcess) -> None:
    with TestClient(create_app(settings)) as c:  # no credentials: probes are public
        r = c.get("/readyz")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ready" and body["redis"] == "ok"
        assert body["models"][MODEL]["ready"] and body["models"][MODEL]["workers"] >= 1
        assert c.get("/readyz", params={"model": LLM}).json()["models"].keys() == {LLM}
        assert c.get("/livez").json() == {"status": "ok"}


def test_not_ready_per_model_and_unknown_model(isolated: Settings) -> None:
    with TestClient(create_app(isolated)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.headers["Retry-After"] == str(isolated.retry_after_s)
        models = r.json()["models"]
        assert models[MODEL] == {"ready": False, "workers": 0, "reason": "no_worker",
                                 "message": f"no live worker serves {MODEL!r}"}
        assert c.get("/readyz", params={"model": LLM}).status_code == 503
        missing = c.get("/readyz", params={"model": "nope"})
        assert missing.status_code == 404 and missing.json()["error"] == "model_not_found"


def test_not_ready_without_redis_and_quickly(isolated: Settings) -> None:
    gone = isolated.model_copy(update={"redis_url": f"redis://127.0.0.1:{_closed_port()}/0"})
    with TestClient(create_app(gone)) as c:
        started = time.monotonic()
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["redis"] == "unreachable" and r.headers["Retry-After"] == "2"
        assert time.monotonic() - started < 3  # bounded: a probe never hangs on Redis
        assert c.get("/livez").status_code == 200


def test_no_worker_503_carries_retry_after(isolated: Settings) -> None:
    with signed(TestClient(create_app(isolated))) as c:
        r = c.post("/embeddings", json={"texts": ["x"], "model": MODEL, "allow_cloud": False})
        assert r.status_code == 503 and r.json()["reason"] == "no_worker"
        assert r.headers["Retry-After"] == str(isolated.retry_after_s)
