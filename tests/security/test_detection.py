"""Point 6: capability detection sends nothing replayable. It signs v2, bound to the host it calls, so the
headers a hostile node receives are refused by our facade; v1 only for a node marked legacy; no 500
without a signing identity; the error stored for viewers is a short reason of ours."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.testclient import TestClient

from dispatcher.settings import Settings
from dispatcher.signing import HEADER_NONCE, ServiceHTTPClient
from tests.cloud_server import ThreadedServer
from tests.conftest import ADMIN_TOKEN, SERVICE_ID, SERVICE_KEY

from .helpers import app, bearer, served

HEALTH = {"status": "healthy", "redis": "ok", "workers": 1, "max_concurrent": 1, "memory_gb": 8.0,
          "utilization": 0.0, "device_type": "CPU", "loaded_models": ["m"], "missing_models": [], "queue_depth": 0,
          "cloud_fallback": False}
MODELS = {"available": ["m"], "loaded_models": ["m"], "models": []}
"""A facade's answers, as our own /health and /models give them."""


class Hostile:
    """A "node" that records the headers it is sent; answers like a facade, or with a page of HTML."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.html = False
        self.health: dict[str, Any] = {}
        """Fields of its /health answer that differ from a facade's."""
        recorder = FastAPI()

        @recorder.get("/{path:path}")
        async def anything(request: Request) -> Response:
            self.seen.append({**request.headers, "path": request.url.path})
            if self.html:
                return HTMLResponse("<html><script>alert(1)</script>" + "x" * 5000 + "</html>", status_code=500)
            return JSONResponse({**HEALTH, **self.health} if request.url.path == "/health" else MODELS)

        self.server = ThreadedServer(recorder).start()


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    node = Hostile()
    yield node
    node.server.stop()


def register(client: TestClient, hostile: Hostile, node_id: str, **extra: Any) -> dict[str, Any]:
    hostile.seen.clear()
    response = client.post("/api/fleet/nodes", headers=bearer(ADMIN_TOKEN), json={
        "id": node_id, "name": node_id, "address": hostile.server.url, "roles": ["npu-worker"], **extra})
    assert response.status_code == 201, response.text
    return response.json()


def test_detection_headers_replayed_against_the_facade_are_refused(isolated: Settings, hostile: Hostile) -> None:
    with TestClient(app(isolated)) as client:
        node = register(client, hostile, "hostile")
        assert node["detection"]["status"] == "ok"
        assert {h["x-service-nonce"] is not None for h in hostile.seen} == {True}  # v2
        assert len(hostile.seen) == 2
        for captured in hostile.seen:
            replay = {k: v for k, v in captured.items() if k.startswith("x-service-")}
            for target in ("/health", "/models"):  # signed for another host
                assert client.get(target, headers=replay).status_code == 401, target
    # A replayer also sends the Host it was signed for: a facade that knows its own names refuses that too.
    with TestClient(app(isolated, auth_hosts=["testserver"])) as client:
        for captured in hostile.seen:
            replay = {k: v for k, v in captured.items() if k.startswith("x-service-")}
            assert client.get("/health", headers={**replay, "host": captured["host"]}).status_code == 401


def test_a_facade_with_auth_hosts_refuses_a_signature_made_for_another_host(isolated: Settings) -> None:
    from dispatcher.signing import sign_headers
    from tests.conftest import SERVICE_ID, SERVICE_KEY

    with TestClient(app(isolated, auth_hosts=["testserver"])) as client:
        for_them = sign_headers(SERVICE_ID, SERVICE_KEY, "GET", "/models", v2=True, host="node.example")
        assert client.get("/models", headers={**for_them, "host": "node.example"}).status_code == 401
        for_us = sign_headers(SERVICE_ID, SERVICE_KEY, "GET", "/models", v2=True, host="testserver")
        assert client.get("/models", headers=for_us).status_code == 200


def test_a_legacy_node_is_probed_with_v1(isolated: Settings, hostile: Hostile) -> None:
    with TestClient(app(isolated)) as client:
        node = register(client, hostile, "legacy", legacy_signing=True)
        assert node["detection"]["status"] == "ok" and node["legacy_signing"] is True
        assert hostile.seen and all(HEADER_NONCE.lower() not in h for h in hostile.seen)


def test_without_a_signing_identity_the_node_is_registered_and_detection_says_why(isolated: Settings,
                                                                                   hostile: Hostile) -> None:
    verifying_only = isolated.model_copy(update={"service_id": None, "service_key": None})
    with TestClient(app(verifying_only)) as client:
        node = register(client, hostile, "unsigned")
        assert node["detection"]["status"] == "not_configured"
        assert "NPU_SERVICE_ID" in node["detection"]["error"] and hostile.seen == []
        listed = client.get("/api/fleet/nodes", headers=bearer(ADMIN_TOKEN)).json()["nodes"]
        assert [n["detection"]["status"] for n in listed if n["id"] == "unsigned"] == ["not_configured"]


def test_a_detection_error_is_a_short_reason_of_ours(isolated: Settings, hostile: Hostile) -> None:
    hostile.html = True
    try:
        with TestClient(app(isolated)) as client:
            node = register(client, hostile, "broken")
    finally:
        hostile.html = False
    detection = node["detection"]
    assert detection["status"] == "error" and detection["error"] == "/health answered HTTP 500"
    with TestClient(app(isolated)) as client:
        gone = client.post("/api/fleet/nodes", headers=bearer(ADMIN_TOKEN), json={
            "id": "gone", "name": "gone", "address": "http://127.0.0.1:9", "roles": ["npu-worker"]}).json()
    assert gone["detection"]["error"] == "unreachable (ConnectError)"


# --- round 3, point 8: the secure setting is the default

def test_a_replayed_probe_with_the_nodes_host_is_refused_by_default(isolated: Settings, hostile: Hostile) -> None:
    assert isolated.auth_hosts == []
    with TestClient(app(isolated)) as client:
        register(client, hostile, "replayed")
        assert len(hostile.seen) == 2
        for captured in hostile.seen:
            replay = {k: v for k, v in captured.items() if k.startswith("x-service-")}
            answered = client.get(captured.get("path", "/health"), headers={**replay, "host": captured["host"]})
            assert answered.status_code == 401, answered.text


def test_by_default_the_facade_accepts_its_own_names(isolated: Settings) -> None:
    """Over uvicorn: v2 signed for the address it is bound to, and for localhost on that port."""
    server = served(isolated)
    try:
        for base in (server.url, f"http://localhost:{server.port}"):
            with ServiceHTTPClient(SERVICE_ID, SERVICE_KEY, base_url=base, timeout=10) as http:
                assert http.get("/models").status_code == 200, base
        with ServiceHTTPClient(SERVICE_ID, SERVICE_KEY, base_url=server.url, timeout=10,
                               headers={"host": f"127.0.0.1:{server.port + 1}"}) as http:
            assert http.get("/models").status_code == 401  # another port is another server
    finally:
        server.stop()


def test_a_legacy_probe_is_logged_as_the_exception(isolated: Settings, hostile: Hostile,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dispatcher.detection")
    with TestClient(app(isolated)) as client:
        register(client, hostile, "legacy-logged", legacy_signing=True)
    assert any("legacy-logged" in r.getMessage() and "v1" in r.getMessage() for r in caplog.records)


# --- round 3, point 6: a node's report is held to our own schema

@pytest.mark.parametrize(("field", "value"), [
    ("max_concurrent", 10**30), ("device_type", "<img src=x onerror=alert(1)>"), ("device_type", {"a": [1]}),
    ("loaded_models", ["<script>alert(1)</script>"]), ("utilization", 1e9), ("status", "<b>fine</b>")])
def test_a_report_that_does_not_fit_our_schema_is_refused_and_nothing_stored(
        isolated: Settings, hostile: Hostile, field: str, value: object) -> None:
    hostile.health = {field: value}
    try:
        with TestClient(app(isolated)) as client:
            node = register(client, hostile, "liar")
            listed = client.get("/api/fleet/nodes", headers=bearer(ADMIN_TOKEN))
    finally:
        hostile.health = {}
    detection = node["detection"]
    assert detection["status"] == "error" and detection["error"].startswith(f"/health does not fit the schema: {field}")
    assert node["capabilities"] is None and "<" not in detection["error"] and len(detection["error"]) < 200
    assert listed.status_code == 200 and "alert" not in listed.text
