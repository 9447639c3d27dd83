"""The official `openai` client, unchanged, against the /v1 endpoints; and a facade as another's cloud."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dispatcher.settings import Settings
from tests.conftest import APP_KEY, LiveFacade, signed

MODEL = "all-minilm-l6-v2"
LLM = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def client(facade: LiveFacade) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{facade.url}/v1", api_key=APP_KEY, max_retries=0)


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model=MODEL, input=["hello world", "a cat on the mat"])
    vectors = np.asarray([d.embedding for d in result.data])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert [d.index for d in result.data] == [0, 1] and result.usage.prompt_tokens > 4
    as_float = client.embeddings.create(model=MODEL, input="hello world").data[0].embedding
    raw = client.embeddings.create(model=MODEL, input="hello world", encoding_format="base64").data[0].embedding
    # The openai client decodes base64 itself when it asked for it; decode here if it did not.
    decoded = np.frombuffer(base64.b64decode(raw), dtype="<f4") if isinstance(raw, str) else np.asarray(raw)
    assert np.allclose(decoded, as_float, atol=1e-6)
    assert np.allclose(decoded, vectors[0], atol=2e-3)  # alone vs. padded in a batch of two


def test_chat_completion(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=LLM, max_tokens=16,
        messages=[{"role": "system", "content": "You answer in one short sentence."},
                  {"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in result.choices[0].message.content and result.choices[0].finish_reason in ("stop", "length")
    assert result.usage.completion_tokens <= 16 and result.usage.prompt_tokens > 10


def test_chat_completion_streams(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=LLM, max_tokens=20, stream=True,
                                            messages=[{"role": "user", "content": "Count from one to ten."}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 4 and text.strip() and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert {c.model for c in chunks} == {LLM}


def test_chat_stream_without_a_model_name_names_the_default(facade: LiveFacade) -> None:
    with httpx.stream("POST", f"{facade.url}/v1/chat/completions", headers={"Authorization": f"Bearer {APP_KEY}"},
                      json={"model": "", "stream": True, "max_tokens": 3,
                            "messages": [{"role": "user", "content": "hi"}]}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.read()
        events = [line for line in r.iter_lines() if line.startswith("data: {")]
    assert events and all(f'"model":"{LLM}"' in e for e in events)


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL, LLM]


def test_errors_come_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="nope", input="x")
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model=MODEL, input=[])
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model=MODEL, input="x", dimensions=12)


def test_a_facade_serves_as_another_facades_cloud(isolated: Settings, facade: LiveFacade) -> None:
    """The fallback speaks the protocol the facade serves: a node with no worker falls back to a peer."""
    cloudy = isolated.model_copy(update={"cloud_base_url": f"{facade.url}/v1", "cloud_api_key": APP_KEY})
    with signed(TestClient(create_app(cloudy))) as c:
        body = c.post("/embeddings", json={"texts": ["hello world"], "model": MODEL}).json()
        assert body["source"] == "cloud" and body["dim"] == 384
        with signed(TestClient(create_app(facade.server.config.app.state.settings))) as direct:
            local = direct.post("/embeddings", json={"texts": ["hello world"], "model": MODEL}).json()
        assert np.allclose(body["embeddings"][0], local["embeddings"][0], atol=1e-5)


def test_openai_routes_need_credentials(facade: LiveFacade) -> None:
    stranger = openai.OpenAI(base_url=f"{facade.url}/v1", api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.embeddings.create(model=MODEL, input="x")
