"""Points 4 and 9: every input that is not valid text is a 422, never a 500 (with a real worker behind the
facade, so a surrogate would reach msgpack); strict bodies on /v1 and the load-balancing setting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from dispatcher.client import Dispatcher
from dispatcher.errors import InvalidInputError
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
