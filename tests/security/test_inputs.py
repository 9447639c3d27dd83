"""Points 4 and 9: every input that is not valid text is a 422, never a 500 (with a real worker behind the
facade, so a surrogate would reach msgpack); strict bodies on /v1 and the load-balancing setting."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from dispatcher.client import Dispatcher
from dispatcher.errors import ECHO_CHARS, InvalidInputError
from dispatcher.limits import MAX_STOP, MAX_STOP_CHARS
from dispatcher.settings import Settings
from tests.conftest import ADMIN_TOKEN, WorkerProcess

from .helpers import CHAT_MODEL, JSON, MODEL, app, bearer

LONE = "\\ud800"
"""As JSON writes it: a lone high surrogate (and below, a lone low one)."""
SURROGATE_BODIES = {
    "/embeddings texts": ("/embeddings", f'{{"texts": ["ok", "a{LONE}b"], "model": "{MODEL}"}}', "texts.1"),
    "/embeddings model": ("/embeddings", f'{{"texts": ["ok"], "model": "x{LONE}"}}', "model"),
    "/inference prompt": ("/inference", f'{{"prompt": "{LONE}", "model": "{CHAT_MODEL}", "max_tokens": 2}}',
                          "prompt"),
    "/v1/embeddings input": ("/v1/embeddings", f'{{"input": "\\udfff", "model": "{MODEL}"}}', "input"),
    "/v1/embeddings input list": ("/v1/embeddings", f'{{"input": ["a", "\\udfff"], "model": "{MODEL}"}}',
                                  "input.1"),
    "/v1/chat content": ("/v1/chat/completions", f'{{"model": "{CHAT_MODEL}", "max_tokens": 2, "messages": '
                         f'[{{"role": "user", "content": "hi {LONE}"}}]}}', "messages.0.content"),
    "fleet label": ("/api/fleet/nodes", f'{{"name": "n1", "labels": {{"k": "{LONE}"}}}}', "labels.k"),
    "load-balancing key": ("/api/npu/load-balancing", f'{{"modelAffinity": {{"{LONE}": []}}}}', "modelAffinity."),
}


@pytest.fixture
def admin(settings: Settings, worker: WorkerProcess) -> Iterator[TestClient]:
    with TestClient(app(settings), headers=bearer(ADMIN_TOKEN)) as client:
        yield client


@pytest.mark.parametrize("case", SURROGATE_BODIES.values(), ids=SURROGATE_BODIES.keys())
def test_a_lone_surrogate_in_any_field_is_a_422_naming_it(admin: TestClient, case: tuple[str, str, str]) -> None:
    path, body, field = case
    response = admin.post(path, content=body.encode(), headers=JSON)
    openai = path.startswith("/v1/")
    assert response.status_code == (400 if openai else 422), response.text  # OpenAI's status on /v1
    error = response.json()["error"]
    message = error["message"] if openai else response.json()["message"]
    assert message.startswith(field) and "surrogate" in message
    if openai:
        assert error["param"] == field


def test_a_valid_surrogate_pair_and_nul_are_text(admin: TestClient) -> None:
    body = f'{{"texts": ["emoji \\ud83d\\ude00", "a\\u0000b"], "model": "{MODEL}", "allow_cloud": false}}'
    response = admin.post("/embeddings", content=body.encode(), headers=JSON)
    assert response.status_code == 200, response.text
    assert len(response.json()["embeddings"]) == 2


def test_the_dispatcher_refuses_a_surrogate_before_anything_is_enqueued(isolated: Settings) -> None:
    dispatcher = Dispatcher(isolated)
    with pytest.raises(InvalidInputError, match="texts\\[0\\] is not valid text"):
        dispatcher.embed(["\ud800"], MODEL)
    with pytest.raises(InvalidInputError, match="messages\\[0\\].content is not valid text"):
        dispatcher.generate([{"role": "user", "content": "\udc00"}], CHAT_MODEL)
    with pytest.raises(InvalidInputError, match="texts\\[0\\] is not valid text"):
        dispatcher.submit_embed(["\ud800"], MODEL)


STRICT = [
    ("/v1/chat/completions", {"stream": "yes"}, "stream"),
    ("/v1/chat/completions", {"max_tokens": "3"}, "max_tokens"),
    ("/v1/chat/completions", {"temperature": "0.5"}, "temperature"),
    ("/v1/chat/completions", {"top_p": 0.5}, "top_p"),
    ("/v1/chat/completions", {"max_completion_tokens": 0}, "max_tokens"),
    ("/v1/embeddings", {"encoding_format": "float", "dimensions": "384"}, "dimensions"),
    ("/v1/embeddings", {"unknown_option": True}, "unknown_option"),
]


@pytest.mark.parametrize("case", STRICT, ids=[f"{p} {f}" for p, _, f in STRICT])
def test_strict_v1_bodies_name_the_field(isolated: Settings, case: tuple[str, dict[str, object], str]) -> None:
    path, extra, field = case
    base: dict[str, object] = ({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
                               if "chat" in path else {"model": MODEL, "input": "hi"})
    with TestClient(app(isolated), headers=bearer(ADMIN_TOKEN)) as client:
        response = client.post(path, json={**base, **extra})
    assert response.status_code in (400, 422), response.text  # 400 in OpenAI's shape once /v1 errors move
    assert field in response.text


def test_the_load_balancing_body_is_strict(isolated: Settings) -> None:
    with TestClient(app(isolated), headers=bearer(ADMIN_TOKEN)) as client:
        unknown = client.post("/api/npu/load-balancing", json={"strategy": "least-loaded", "weights": {}})
        assert unknown.status_code == 422 and "weights" in unknown.text
        wrong_type = client.post("/api/npu/load-balancing", json={"modelAffinity": {MODEL: "node-a"}})
        assert wrong_type.status_code == 422
        fine = client.post("/api/npu/load-balancing", json={"strategy": "round-robin"})
        assert fine.status_code == 200 and fine.json()["strategy"] == "round-robin"


# --- round 3: points 3, 5, 7 and 16 (refused before any worker is asked: none runs here)

CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
PROMPT = {"prompt": "hi", "model": CHAT_MODEL, "max_tokens": 2, "allow_cloud": False, "deadline_s": 0.5}


@pytest.fixture
def operator(isolated: Settings) -> Iterator[TestClient]:
    with TestClient(app(isolated), headers=bearer(ADMIN_TOKEN)) as client:
        yield client


@pytest.mark.parametrize("stop", [["x" * (MAX_STOP_CHARS + 1)], ["a"] * (MAX_STOP + 1), "x" * 7_000_000],
                         ids=["long", "many", "7MB"])
def test_stop_strings_are_bounded_on_both_routes(operator: TestClient, stop: object) -> None:
    if isinstance(stop, list):
        native = operator.post("/inference", json={**PROMPT, "stop": stop})
        assert native.status_code == 422 and native.json()["error"] == "invalid_request", native.text[:300]
    chat = operator.post("/v1/chat/completions", json={**CHAT, "stop": stop})
    assert chat.status_code == 400 and chat.json()["error"]["param"].startswith("stop"), chat.text[:300]
    assert len(chat.content) < 2000


def test_stop_strings_at_the_limit_pass_and_the_schema_states_it(operator: TestClient) -> None:
    at_limit = ["x" * MAX_STOP_CHARS] * MAX_STOP
    answered = operator.post("/inference", json={**PROMPT, "stop": at_limit})
    assert answered.status_code == 503, answered.text  # past validation: no worker serves this prefix
    schema = operator.get("/openapi.json").json()["components"]["schemas"]
    native = schema["InferenceRequest"]["properties"]["stop"]["anyOf"][0]
    assert native["maxItems"] == MAX_STOP and native["items"]["maxLength"] == MAX_STOP_CHARS
    assert f'"maxLength":{MAX_STOP_CHARS}' in json.dumps(schema["ChatRequest"]["properties"]["stop"],
                                                          separators=(",", ":"))


@pytest.mark.parametrize("path", ["/embeddings", "/inference", "/v1/embeddings", "/v1/chat/completions"])
@pytest.mark.parametrize("depth", [1000, 100_000])
def test_any_nesting_depth_is_refused_in_the_routes_shape(operator: TestClient, path: str, depth: int) -> None:
    body = "[" * depth + '"\\ud800"' + "]" * depth
    response = operator.post(path, content=body.encode(), headers=JSON)
    openai = path.startswith("/v1/")
    assert response.status_code == (400 if openai else 422), response.text[:300]
    assert (response.json()["error"]["type"] if openai else response.json()["error"]) in (
        "invalid_request_error", "invalid_request")


def test_unknown_model_names_are_echoed_capped(isolated: Settings, operator: TestClient) -> None:
    name = "m" * 1_000_000
    for response in (operator.post("/embeddings", json={"texts": ["x"], "model": name}),
                     operator.post("/v1/embeddings", json={"input": "x", "model": name}),
                     operator.get(f"/v1/models/{'m' * 50_000}")):
        assert response.status_code == 404 and len(response.content) < 2000, (response.status_code,
                                                                               len(response.content))
        assert "m" * ECHO_CHARS + "..." in response.text
    with TestClient(app(isolated)) as stranger:
        ready = stranger.get("/readyz", params={"model": "m" * 50_000})
    assert ready.status_code == 404 and len(ready.content) < 2000 and "m" * ECHO_CHARS + "..." in ready.text


def test_every_answer_says_nosniff(isolated: Settings, operator: TestClient) -> None:
    with TestClient(app(isolated)) as stranger:
        answers = [stranger.get("/livez"), stranger.get("/health"), stranger.get("/no-such-route"),
                   operator.get("/health"), operator.post("/embeddings", content=b"{", headers=JSON),
                   stranger.get("/fleet")]
    for response in answers:
        assert response.headers.get_list("x-content-type-options") == ["nosniff"], response.request.url
