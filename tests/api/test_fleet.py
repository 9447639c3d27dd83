"""Fleet endpoints against real Redis, a real worker and a second facade as another node's address."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dispatcher.settings import Settings
from npu_worker.redis_server import free_port
from tests.conftest import ADMIN_TOKEN, VIEWER_TOKEN, LiveFacade, WorkerProcess, as_operator

MODEL = "all-minilm-l6-v2"


@pytest.fixture
def admin(settings: Settings, worker: WorkerProcess) -> Iterator[TestClient]:
    with as_operator(TestClient(create_app(settings)), ADMIN_TOKEN) as c:
        yield c
        for node in c.get("/api/fleet/nodes").json()["nodes"]:
            if node["id"].startswith("added-"):
                c.delete(f"/api/fleet/nodes/{node['id']}")
        c.post("/api/npu/load-balancing", json={"strategy": "least-loaded", "modelAffinity": {}})


def test_worker_node_is_listed_with_its_measured_state(admin: TestClient, settings: Settings) -> None:
    nodes = {n["id"]: n for n in admin.get("/api/fleet/nodes", params={"role": "npu-worker"}).json()["nodes"]}
    node = nodes[settings.node_id]
    assert node["status"] == "online" and node["workers"] >= 1 and node["deviceType"] == "cpu"
    assert MODEL in node["loadedModels"] and 0 <= node["utilization"] <= 100


def test_status_has_exactly_the_seed_shape(admin: TestClient, settings: Settings) -> None:
    body = admin.get(f"/api/nodes/{settings.node_id}/npu/status").json()
    assert set(body) == {"node_id", "capabilities", "loadedModels", "queueDepth", "lastHealthCheck"}
    assert set(body["capabilities"]) == {"models", "maxConcurrent", "memoryGB", "deviceType", "utilization"}
    assert body["node_id"] == settings.node_id and MODEL in body["loadedModels"]
    assert body["capabilities"]["deviceType"] == "cpu" and body["capabilities"]["maxConcurrent"] >= 32
    checked = datetime.strptime(body["lastHealthCheck"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["lastHealthCheck"])
    assert checked.timestamp() > time.time() - 30
    missing = admin.get("/api/nodes/no-such-node/npu/status")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_assigning_the_role_detects_capabilities_through_signed_calls(admin: TestClient, facade: LiveFacade) -> None:
    created = admin.post("/api/fleet/nodes", json={"id": "added-peer", "name": "Peer", "address": facade.url})
    assert created.status_code == 201 and created.json()["capabilities"] is None  # no role: no probe
    node = admin.patch("/api/fleet/nodes/added-peer", json={"roles": ["npu-worker"]}).json()
    assert node["detection"]["status"] == "ok", node["detection"]
    caps = node["capabilities"]
    assert caps["deviceType"] == "cpu" and MODEL in caps["models"] and caps["maxConcurrent"] >= 32
    assert datetime.strptime(node["lastHealthCheck"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc).timestamp() > time.time() - 30
    status = admin.get("/api/nodes/added-peer/npu/status").json()  # no workers of its own: the detected values
    assert status["capabilities"]["deviceType"] == "cpu" and status["lastHealthCheck"] == node["lastHealthCheck"]


def test_unreachable_address_is_an_error_within_the_timeout(admin: TestClient) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    admin.post("/api/fleet/nodes", json={"id": "added-dead", "name": "Dead", "address": dead})
    started = time.monotonic()
    node = admin.patch("/api/fleet/nodes/added-dead", json={"roles": ["npu-worker"]}).json()
    assert time.monotonic() - started < 5
    assert node["detection"]["status"] == "error" and node["detection"]["error"]
    assert node["capabilities"] is None and node["status"] == "offline"  # nothing made up


def test_viewers_read_but_cannot_change(settings: Settings, worker: WorkerProcess) -> None:
    with as_operator(TestClient(create_app(settings)), VIEWER_TOKEN) as c:
        assert c.get("/api/fleet/nodes").status_code == 200
        assert c.post("/api/fleet/nodes", json={"name": "x"}).status_code == 403
        assert c.post("/api/npu/load-balancing", json={"strategy": "round-robin"}).status_code == 403


def test_load_balancing_is_stored_and_affinity_is_validated(admin: TestClient, settings: Settings) -> None:
    good = {"strategy": "model-affinity", "modelAffinity": {MODEL: [settings.node_id]}}
    assert admin.post("/api/npu/load-balancing", json=good).json() == good
    assert admin.get("/api/npu/load-balancing").json() == good
    for bad, code in [({MODEL: ["no-such-node"]}, "unknown_node"), ({"no-such-model": [settings.node_id]},
                                                                    "unknown_model")]:
        response = admin.post("/api/npu/load-balancing", json={"strategy": "model-affinity", "modelAffinity": bad})
        assert response.status_code == 422 and response.json()["error"] == code
    admin.post("/api/fleet/nodes", json={"id": "added-empty", "name": "Empty"})
    lacking = admin.post("/api/npu/load-balancing", json={"strategy": "model-affinity",
                                                          "modelAffinity": {MODEL: ["added-empty"]}})
    assert lacking.status_code == 422 and lacking.json()["error"] == "model_not_on_node"
    assert admin.post("/api/npu/load-balancing", json={"strategy": "fastest"}).status_code == 422


def test_node_crud(admin: TestClient) -> None:
    assert admin.post("/api/fleet/nodes", json={"id": "added-crud", "name": "Crud", "labels": {"rack": "2"}}
                      ).status_code == 201
    again = admin.post("/api/fleet/nodes", json={"id": "added-crud", "name": "Again"})
    assert again.status_code == 409 and again.json()["error"] == "conflict"
    updated = admin.patch("/api/fleet/nodes/added-crud", json={"name": "Renamed", "labels": {"rack": "3"}}).json()
    assert updated["name"] == "Renamed" and updated["labels"] == {"rack": "3"}
    assert admin.delete("/api/fleet/nodes/added-crud").status_code == 204
    assert admin.delete("/api/fleet/nodes/added-crud").status_code == 404
    assert admin.patch("/api/fleet/nodes/added-crud", json={"name": "x"}).status_code == 404
