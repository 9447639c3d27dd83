"""The facade's documented endpoints, in-process, against Redis and a real worker process.

Every request is signed as a service (seed v1); authentication itself is tested in test_auth.py.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dispatcher.settings import Settings
from tests.cloud_server import CloudServer
from tests.conftest import WorkerProcess, signed

MODEL = "all-minilm-l6-v2"
LLM = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def http(settings: Settings, worker: WorkerProcess) -> Iterator[TestClient]:
    with signed(TestClient(create_app(settings.model_copy(update={"max_texts": 8, "max_text_chars": 4000})))) as c:
        yield c


def test_health_has_the_seed_fields(http: TestClient) -> None:
    body = http.get("/health").json()
    assert body["status"] == "healthy"
    assert body["max_concurrent"] >= 32 and body["memory_gb"] > 0 and 0 <= body["utilization"] <= 100
    assert body["device_type"] == "cpu" and set(body["loaded_models"]) == {MODEL, LLM}
    assert body["queue_depth"] >= 0 and body["workers"] >= 1


def test_models_lists_what_can_be_asked_for(http: TestClient) -> None:
    body = http.get("/models").json()
    assert body["available"] == [MODEL, LLM]
    info = {m["name"]: m for m in body["models"]}
    assert info[MODEL]["dim"] == 384 and info[MODEL]["loaded"] and info[MODEL]["devices"] == ["cpu"]
    assert info[LLM]["task"] == "generation"


def test_embeddings(http: TestClient) -> None:
    response = http.post("/embeddings", json={"texts": ["hi", "hello there"], "model": MODEL})
    assert response.status_code == 200
    body = response.json()
    vectors = np.asarray(body["embeddings"])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert body["source"] == "npu" and body["device"] == "cpu" and body["dim"] == 384
    assert body["timings"]["total_ms"] > 0 and body["timings"]["inference_ms"] > 0
    assert body["usage"]["prompt_tokens"] == sum(body["token_counts"])


def test_inference(http: TestClient) -> None:
    body = http.post("/inference", json={"prompt": "What is the capital of France?", "model": LLM,
                                         "max_tokens": 12, "temperature": 0}).json()
    assert "Paris" in body["text"] and body["source"] == "npu" and body["usage"]["completion_tokens"] <= 12


@pytest.mark.parametrize("path, body, status, code", [
    ("/embeddings", {"texts": ["hi"], "model": "nope"}, 404, "model_not_found"),
    ("/inference", {"prompt": "hi", "model": "nope"}, 404, "model_not_found"),
    ("/embeddings", {"texts": [], "model": MODEL}, 422, "invalid_input"),
    ("/embeddings", {"texts": ["ok", ""], "model": MODEL}, 422, "invalid_input"),
    ("/embeddings", {"texts": "not a list", "model": MODEL}, 422, "invalid_request"),
    ("/embeddings", {"texts": [1, 2], "model": MODEL}, 422, "invalid_request"),
    ("/embeddings", {"model": MODEL}, 422, "invalid_request"),
    ("/embeddings", {"texts": ["hi"], "model": MODEL, "unknown": 1}, 422, "invalid_request"),
    ("/embeddings", {"texts": ["a"] * 9, "model": MODEL}, 413, "too_many_texts"),
    ("/embeddings", {"texts": ["a" * 4001], "model": MODEL}, 413, "input_too_large"),
    ("/embeddings", {"texts": ["word " * 400], "model": MODEL}, 422, "input_too_long"),
    ("/embeddings", {"texts": ["hi"], "model": LLM}, 422, "wrong_task"),
    ("/inference", {"prompt": "", "model": LLM}, 422, "invalid_input"),
    ("/inference", {"prompt": "hi", "model": LLM, "max_tokens": 0}, 422, "invalid_input"),
    ("/inference", {"prompt": "hi", "model": LLM, "max_tokens": 100000}, 422, "invalid_input"),
    ("/inference", {"prompt": "hi", "model": LLM, "temperature": -1}, 422, "invalid_input"),
])
def test_bad_input_gets_a_clear_error(http: TestClient, path: str, body: dict, status: int, code: str) -> None:
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"] == code and payload["message"]
    if code == "model_not_found":
        assert payload["available"] == [MODEL, LLM]


def test_malformed_json_is_422(http: TestClient) -> None:
    response = http.post("/embeddings", content=b'{"texts": [', headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"] == "invalid_request"


def test_truncation_is_reported_per_input(http: TestClient) -> None:
    body = http.post("/embeddings", json={"texts": ["short", "word " * 400], "model": MODEL,
                                          "truncate": True}).json()
    assert body["truncated"] == [False, True] and body["token_counts"][1] > 256


def test_no_worker_and_no_cloud_is_503_and_unhealthy(isolated: Settings) -> None:
    with signed(TestClient(create_app(isolated))) as c:
        response = c.post("/embeddings", json={"texts": ["hi"], "model": MODEL})
        assert response.status_code == 503 and response.json()["error"] == "unavailable"
        health = c.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"


def test_no_worker_with_cloud_answers_from_the_cloud(isolated: Settings, cloud: CloudServer) -> None:
    with signed(TestClient(create_app(isolated.model_copy(update={"cloud_base_url": cloud.base_url})))) as c:
        body = c.post("/embeddings", json={"texts": ["hi"], "model": MODEL}).json()
        assert body["source"] == "cloud" and body["fallback_reason"] == "no_worker" and body["dim"] == 384
        assert c.post("/inference", json={"prompt": "hi"}).json()["source"] == "cloud"
        assert c.get("/health").json()["status"] == "degraded"
        private = c.post("/embeddings", json={"texts": ["hi"], "model": MODEL, "allow_cloud": False})
        assert private.status_code == 503


def test_redis_gone_is_503_not_a_crash(settings: Settings) -> None:
    gone = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with signed(TestClient(create_app(gone))) as c:
        response = c.post("/embeddings", json={"texts": ["hi"], "model": MODEL})
        assert response.status_code == 503 and response.json()["error"] == "redis_unavailable"
        assert c.get("/health").json()["status"] == "unhealthy"


def test_inference_streams_server_sent_events(http: TestClient) -> None:
    import orjson

    with http.stream("POST", "/inference", json={"prompt": "Count from one to ten.", "model": LLM,
                                                 "max_tokens": 24, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [orjson.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    deltas = [e["delta"] for e in events if "delta" in e]
    assert len(deltas) > 3 and events[-1]["done"] is True
    assert "".join(deltas) == events[-1]["text"] and events[-1]["usage"]["completion_tokens"] <= 24
    assert events[-1]["timings"]["ttft_ms"] > 0


def test_streaming_request_with_bad_input_is_a_json_error(http: TestClient) -> None:
    response = http.post("/inference", json={"prompt": "", "model": LLM, "stream": True})
    assert response.status_code == 422 and response.json()["error"] == "invalid_input"


@pytest.mark.parametrize("content, code", [
    (b"\xff\xfe{not utf-8", "invalid_request"),  # FastAPI's own 400, in our shape and status
    (b'{"texts": ["hi"], "allow_cloud": 0}', "invalid_request"),  # 0 is not false
    (b'{"texts": ["hi"], "truncate": "yes"}', "invalid_request"),
    (b'{"texts": ["\\u001f \\ufeff"]}', "invalid_input"),  # blank by any reading
])
def test_hostile_bodies_are_422_in_the_documented_shape(http: TestClient, content: bytes, code: str) -> None:
    response = http.post("/embeddings", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"] == code, response.text


def test_unknown_paths_answer_in_the_error_shape(http: TestClient) -> None:
    response = http.get("/nope")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_schema_states_the_limits_and_integral_floats_are_integers(http: TestClient) -> None:
    bodies = http.get("/openapi.json").json()["components"]["schemas"]
    texts = bodies["EmbeddingsRequest"]["properties"]["texts"]
    assert texts["maxItems"] == 8 and texts["items"]["maxLength"] == 4000 and texts["minItems"] == 1
    body = http.post("/inference", json={"prompt": "Say hi.", "model": LLM, "max_tokens": 2.0}).json()
    assert body["usage"]["completion_tokens"] <= 2


def test_tiny_temperatures_decode_greedily_and_the_default_length_obeys_the_limit(
        settings: Settings, worker: WorkerProcess) -> None:
    with signed(TestClient(create_app(settings.model_copy(update={"max_new_tokens": 3})))) as c:
        response = c.post("/inference", json={"prompt": "Tell me a long story.", "model": LLM,
                                               "temperature": 1e-300})  # 0 in float32: the engine refused it
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] <= 3  # no max_tokens: the default, capped


def test_a_request_sets_its_own_deadline(isolated: Settings) -> None:
    """`deadline_s` in the body is the request's whole budget: a stalled worker costs that, not the default."""
    proc = WorkerProcess(isolated, models=[MODEL])
    try:
        proc.wait_live()
        with signed(TestClient(create_app(isolated.model_copy(update={"deadline_s": 30})))) as c:
            assert c.post("/embeddings", json={"texts": ["warm"], "model": MODEL}).status_code == 200
            proc.proc.send_signal(signal.SIGSTOP)
            started = time.monotonic()
            response = c.post("/embeddings", json={"texts": ["x"], "model": MODEL, "deadline_s": 0.5,
                                                   "allow_cloud": False})
            assert response.status_code == 503 and response.json()["reason"] == "deadline"
            assert 0.45 <= time.monotonic() - started < 1.5
            refused = c.post("/inference", json={"prompt": "hi", "deadline_s": 0})
            assert refused.status_code == 422 and "deadline_s" in refused.json()["message"]
    finally:
        proc.proc.send_signal(signal.SIGCONT)
        proc.stop()
