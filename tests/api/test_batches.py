"""OpenAI's Files and Batch API with the official `openai` client, against a real facade and worker."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import numpy as np
import openai
import orjson
import pytest
from pydantic import SecretStr

from dispatcher.protocol import Keys
from dispatcher.settings import Settings
from tests.conftest import ADMIN_TOKEN, APP_KEY, ROOT, VIEWER_TOKEN, LiveFacade

MODEL = "all-minilm-l6-v2"
LLM = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def client(facade: LiveFacade) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{facade.url}/v1", api_key=APP_KEY, max_retries=0)


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def embed_lines(n: int, url: str = "/v1/embeddings") -> list[dict[str, Any]]:
    return [{"custom_id": f"req-{i}", "method": "POST", "url": url,
             "body": {"model": MODEL, "input": [f"text number {i}"] * (1 + i % 3)}} for i in range(n)]


def upload(client: openai.OpenAI, data: bytes) -> str:
    return client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id


def wait(client: openai.OpenAI, batch_id: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.3)
    raise TimeoutError(f"batch {batch_id} still {batch.status}")


def output(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in client.files.content(file_id).read().splitlines()] if file_id else []


def bulk_jobs(settings: Settings) -> int:
    """Jobs in the session's bulk queues (nothing a refused batch may have enqueued)."""
    r, keys = settings.redis(), Keys(settings.key_prefix)
    return sum(int(r.llen(f"rq:queue:{q.decode()[9:]}")) for q in r.smembers("rq:queues")
               if q.decode().startswith(f"rq:queue:{keys.prefix}:"))


def test_embedding_batch_answers_every_line_as_the_route_does(client: openai.OpenAI) -> None:
    lines = embed_lines(24)
    lines[5]["body"]["encoding_format"] = "base64"
    lines[9]["body"]["input"] = "word " * 3000  # within the character limit, over the model's tokens: refused
    file_id = upload(client, jsonl(lines))
    assert client.files.retrieve(file_id).bytes == len(jsonl(lines))
    assert file_id in [f.id for f in client.files.list(purpose="batch")]
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h",
                                  metadata={"job": "nightly"})
    assert batch.status == "in_progress" and batch.request_counts.total == 24 and batch.metadata == {"job": "nightly"}
    done = wait(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 23 and done.request_counts.failed == 1
    assert done.completed_at >= done.created_at
    out, errors = output(client, done.output_file_id), output(client, done.error_file_id)
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(24) if i != 9]  # its group's others too
    assert [e["custom_id"] for e in errors] == ["req-9"] and errors[0]["response"]["status_code"] in (400, 413)
    assert errors[0]["response"]["body"]["error"]["code"] == "input_too_long", errors[0]
    direct = client.embeddings.create(model=MODEL, input=lines[7]["body"]["input"])
    body = out[7]["response"]["body"]
    assert out[7]["response"]["status_code"] == 200 and out[7]["error"] is None
    assert body["object"] == "list" and body["model"] == MODEL and len(body["data"]) == 2
    assert body["usage"] == direct.usage.model_dump()
    assert np.allclose(body["data"][1]["embedding"], direct.data[1].embedding, atol=2e-3)
    assert isinstance(out[5]["response"]["body"]["data"][0]["embedding"], str)  # base64, as asked
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(done.id)  # a finished batch cannot be cancelled


def test_chat_batch_and_the_async_client(facade: LiveFacade) -> None:
    async def run() -> tuple[Any, list[dict[str, Any]]]:
        client = openai.AsyncOpenAI(base_url=f"{facade.url}/v1", api_key=APP_KEY, max_retries=0)
        lines = [{"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": LLM, "max_tokens": 8,
                           "messages": [{"role": "user", "content": f"Say the number {i}."}]}} for i in range(4)]
        file = await client.files.create(file=("chat.jsonl", jsonl(lines)), purpose="batch")
        batch = await client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")
        for _ in range(600):
            batch = await client.batches.retrieve(batch.id)
            if batch.status == "completed":
                break
            await asyncio.sleep(0.3)
        content = await client.files.content(batch.output_file_id)
        await client.close()
        return batch, [orjson.loads(line) for line in content.read().splitlines()]

    batch, out = asyncio.run(run())
    assert batch.status == "completed" and batch.request_counts.completed == 4
    assert sorted(o["custom_id"] for o in out) == [f"chat-{i}" for i in range(4)]
    body = out[0]["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == LLM
    assert body["choices"][0]["message"]["content"] and 0 < body["usage"]["completion_tokens"] <= 8


def test_cancel_stops_dispatching_and_ends_cancelled(client: openai.OpenAI, facade: LiveFacade) -> None:
    lines = [{"custom_id": f"c-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": LLM, "max_tokens": 24, "messages": [{"role": "user", "content": f"Story {i}"}]}}
             for i in range(40)]
    batch = client.batches.create(input_file_id=upload(client, jsonl(lines)), endpoint="/v1/chat/completions",
                                  completion_window="24h")
    running = httpx.get(f"{facade.url}/api/batches", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}).json()
    mine = next(b for b in running["batches"] if b["id"] == batch.id)  # the operator page's view
    assert mine["request_counts"]["total"] == 40 and 0 <= mine["done"] < 1
    assert httpx.get(f"{facade.url}/api/batches", headers={"Authorization": f"Bearer {APP_KEY}"}).status_code == 403
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done = wait(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    answered = output(client, done.output_file_id) + output(client, done.error_file_id)
    assert sorted(o["custom_id"] for o in answered) == sorted(f"c-{i}" for i in range(40))  # each once
    skipped = [o for o in answered if o["error"]]
    assert skipped and all(o["error"]["code"] == "batch_cancelled" for o in skipped)
    assert done.request_counts.completed + done.request_counts.failed == 40
    assert done.request_counts.failed == len(skipped)


def test_hostile_input_is_refused_and_nothing_is_enqueued(client: openai.OpenAI, facade: LiveFacade,
                                                          settings: Settings) -> None:
    before = bulk_jobs(settings)
    with pytest.raises(openai.BadRequestError, match="Line 2 is not a JSON object"):
        upload(client, b'{"custom_id": "a"}\nthis is not json\n')
    with pytest.raises(openai.BadRequestError, match="lines; the limit is"):
        upload(client, b"\n" * 1_000_000)
    with pytest.raises(openai.APIStatusError, match="Line 1 is .* bytes; the limit is") as err:
        upload(client, b'{"x": "' + b"a" * (settings.batch_line_max_bytes + 1) + b'"}\n')
    assert err.value.status_code == 413
    lines = embed_lines(6)
    lines[3]["url"] = "/v1/chat/completions"
    lines[4]["body"]["input"] = 7
    failed = client.batches.create(input_file_id=upload(client, jsonl(lines)), endpoint="/v1/embeddings",
                                   completion_window="24h")
    assert failed.status == "failed" and failed.failed_at and failed.output_file_id is None
    errors = [(e.line, e.code, e.param) for e in failed.errors.data]
    assert errors == [(4, "mismatched_endpoint", "url"), (5, "invalid_request", "body.input")]
    # Another app's file and batch: unknown to this app (404, not 403); the admin sees every app's.
    other_key = "another-app-key"
    two_apps = LiveFacade(settings.model_copy(update={"api_keys": [SecretStr(APP_KEY), SecretStr(other_key)]}))
    try:
        other = openai.OpenAI(base_url=f"{two_apps.url}/v1", api_key=other_key, max_retries=0)
        theirs = upload(other, jsonl(embed_lines(2)))
        their_batch = other.batches.create(input_file_id=theirs, endpoint="/v1/embeddings", completion_window="24h")
        for attempt in (lambda: client.files.retrieve(theirs), lambda: client.files.content(theirs),
                        lambda: client.files.delete(theirs), lambda: client.batches.retrieve(their_batch.id),
                        lambda: client.batches.cancel(their_batch.id),
                        lambda: client.batches.create(input_file_id=theirs, endpoint="/v1/embeddings",
                                                      completion_window="24h")):
            with pytest.raises(openai.NotFoundError):
                attempt()
        assert theirs not in [f.id for f in client.files.list()]
        assert their_batch.id not in [b.id for b in client.batches.list()]
        assert failed.id not in [b.id for b in other.batches.list()]
        admin = openai.OpenAI(base_url=f"{facade.url}/v1", api_key=ADMIN_TOKEN, max_retries=0)
        assert {failed.id, their_batch.id} <= {b.id for b in admin.batches.list()}
        assert wait(other, their_batch.id).status == "completed"
    finally:
        two_apps.stop()
    r = settings.redis()
    assert not r.exists(f"rq:job:{failed.id}-0")
    assert not r.sismember(Keys(settings.key_prefix).batches_active, failed.id)
    assert bulk_jobs(settings) == before


def test_the_docs_example_runs(facade: LiveFacade) -> None:
    """docs/batch-api.md's example, as written, against the test facade (its address and app key substituted)."""
    text = (ROOT / "docs" / "batch-api.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("http://localhost:8081", facade.url).replace("<app key>", APP_KEY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("completed") and out.stdout.splitlines()[1:] == [
        "doc-0 384", "doc-1 384", "doc-2 384"]


def test_an_expired_batch_ends_expired_with_every_line_answered(client: openai.OpenAI, settings: Settings) -> None:
    lines = [{"custom_id": f"x-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": LLM, "max_tokens": 24, "messages": [{"role": "user", "content": f"Tale {i}"}]}}
             for i in range(30)]
    batch = client.batches.create(input_file_id=upload(client, jsonl(lines)), endpoint="/v1/chat/completions",
                                  completion_window="24h")
    r, key = settings.redis(), Keys(settings.key_prefix).batch(batch.id)
    obj = orjson.loads(r.hget(key, "obj"))
    r.hset(key, "obj", orjson.dumps({**obj, "expires_at": obj["created_at"] - 1}))  # its 24 hours are up
    done = wait(client, batch.id)
    assert done.status == "expired" and done.expired_at
    answered = output(client, done.output_file_id) + output(client, done.error_file_id)
    assert sorted(o["custom_id"] for o in answered) == sorted(f"x-{i}" for i in range(30))
    assert any(o["error"] and o["error"]["code"] == "batch_expired" for o in answered)
