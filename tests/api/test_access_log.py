"""One access-log line per request, refusals and unrouted requests included; text and JSON forms."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dispatcher.logs import JSONFormatter
from dispatcher.settings import Settings
from tests.conftest import SERVICE_ID, WorkerProcess, as_operator, signed

MODEL = "all-minilm-l6-v2"


def lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [r.access for r in caplog.records if r.name == "npu.access"]


def test_every_request_is_one_line(settings: Settings, worker: WorkerProcess, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="npu.access")
    with signed(TestClient(create_app(settings))) as c:
        assert c.post("/embeddings", json={"texts": ["secret text"], "model": MODEL},
                      headers={"X-Request-ID": "acc-1"}).status_code == 200
        assert c.get("/nope").status_code == 404
        c.auth = None
        assert c.get("/health").status_code == 401
        assert as_operator(c, "not-a-token").get("/models").status_code == 401
    served, missing, refused, bad_token = lines(caplog)
    assert served["method"] == "POST" and served["route"] == "/embeddings" and served["status"] == 200
    assert served["request_id"] == "acc-1" and served["caller"] == f"service:{SERVICE_ID}"
    assert served["model"] == MODEL and served["source"] == "npu" and served["duration_ms"] > 0
    assert missing["status"] == 404 and missing["route"] == "unmatched:/nope" and missing["caller"] == "-"
    assert refused["route"] == "/health" and refused["status"] == 401 and bad_token["status"] == 401
    text = [r.getMessage() for r in caplog.records if r.name == "npu.access"]
    assert all("secret text" not in t and "not-a-token" not in t for t in text)
    assert text[0].startswith("POST /embeddings 200 ") and f"rid=acc-1 caller=service:{SERVICE_ID}" in text[0]
    assert served["app"] == SERVICE_ID and f"app={SERVICE_ID} " in text[0]  # a service counts as its id's app


def test_503_and_json_form(isolated: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="npu.access")
    with signed(TestClient(create_app(isolated))) as c:
        assert c.post("/embeddings", json={"texts": ["x"], "model": MODEL, "allow_cloud": False}).status_code == 503
    record = next(r for r in caplog.records if r.name == "npu.access")
    entry = json.loads(JSONFormatter().format(record))
    assert entry["status"] == 503 and entry["route"] == "/embeddings" and entry["level"] == "INFO"
    assert entry["logger"] == "npu.access" and entry["caller"] == f"service:{SERVICE_ID}" and entry["request_id"]
