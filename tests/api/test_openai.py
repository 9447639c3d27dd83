"""The official `openai` client, unchanged, against the /v1 endpoints; and a facade as another's cloud."""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dispatcher.settings import Settings
from tests.cloud_server import CloudServer
from tests.conftest import ADMIN_TOKEN, APP_KEY, LiveFacade, signed

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
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input=[])
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input="x", dimensions=12)
    assert err.value.body["param"] == "dimensions"


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"model": LLM, "messages": [{"role": "user"}]}, "messages[0].content", "Missing required parameter"),
    ({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature",
     "expected a number"),
    ({"model": LLM, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "expected one of"),
    ({"model": LLM, "messages": []}, "messages", "too short"),
    ({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, "stop",
     "at most 4"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model", "Missing required parameter"),
])
def test_validation_errors_are_400_in_openai_shape_with_param(facade: LiveFacade, body: dict, param: str,
                                                               words: str) -> None:
    r = httpx.post(f"{facade.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"] and error["type"] == "invalid_request_error"
    assert "Field required" not in error["message"] and "Input should" not in error["message"]  # not pydantic's


def test_stop_strings_end_the_text(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Name three colours, separated by commas."}]
    full = client.chat.completions.create(model=LLM, max_tokens=24, messages=messages).choices[0].message.content
    words = full.split()
    assert len(words) >= 4, full
    stop = words[2]  # greedy decoding: the same text again, cut before this word
    cut = client.chat.completions.create(model=LLM, max_tokens=24, messages=messages, stop=stop).choices[0]
    assert stop not in cut.message.content and full.startswith(cut.message.content.rstrip())
    assert len(cut.message.content) < len(full) and cut.finish_reason == "stop"
    streamed = client.chat.completions.create(model=LLM, max_tokens=24, messages=messages, stop=["nope", stop],
                                              stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == cut.message.content


def test_content_as_text_parts_created_and_model_lookup(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(model=LLM, max_tokens=16, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}]}])
    assert "Paris" in result.choices[0].message.content
    assert abs(result.created - time.time()) < 120
    model = client.models.retrieve(LLM)
    assert model.id == LLM and model.created > 1_600_000_000
    assert {m.created for m in client.models.list()} != {0}
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("nope")
    assert err.value.body["code"] == "model_not_found"


def test_include_usage_as_openai_documents(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    chunks = list(client.chat.completions.create(model=LLM, max_tokens=8, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens > 0
    assert last.usage.total_tokens > last.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-2].choices[0].finish_reason in ("stop", "length")
    plain = list(client.chat.completions.create(model=LLM, max_tokens=8, messages=messages, stream=True))
    assert all(c.usage is None and c.choices for c in plain)


def test_async_client_chat_stop_and_models(facade: LiveFacade) -> None:
    asyncio.run(_async_client(facade))


async def _async_client(facade: LiveFacade) -> None:
    client = openai.AsyncOpenAI(base_url=f"{facade.url}/v1", api_key=APP_KEY, max_retries=0)
    try:
        result = await client.chat.completions.create(
            model=LLM, max_tokens=16, stop=["Paris"], messages=[{"role": "user", "content": [
                {"type": "text", "text": "What is the capital of France?"}]}])
        assert "Paris" not in result.choices[0].message.content and result.choices[0].finish_reason == "stop"
        assert (await client.models.retrieve(MODEL)).id == MODEL
        embedded = await client.embeddings.create(model=MODEL, input="hello")
        assert len(embedded.data[0].embedding) == 384
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": 5}])
    finally:
        await client.close()


def test_stop_travels_to_the_cloud(isolated: Settings, cloud: CloudServer) -> None:
    with TestClient(create_app(isolated.model_copy(update={"cloud_base_url": cloud.base_url}))) as c:
        r = c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                   json={"model": LLM, "messages": [{"role": "user", "content": "hi"}], "stop": "END"})
        assert r.status_code == 200, r.text
    assert cloud.calls[-1]["body"]["stop"] == ["END"]


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


def test_inference_takes_stop_too(facade: LiveFacade) -> None:
    with httpx.Client(base_url=facade.url, timeout=60, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        body = {"prompt": "What is the capital of France?", "model": LLM, "max_tokens": 16}
        full = http.post("/inference", json=body).json()["text"]
        assert "Paris" in full
        cut = http.post("/inference", json={**body, "stop": ["Paris"]}).json()
        assert "Paris" not in cut["text"] and full.startswith(cut["text"]) and cut["finish_reason"] == "stop"
        assert http.post("/inference", json={**body, "stop": [""]}).status_code == 422
