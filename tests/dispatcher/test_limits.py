"""Backpressure (a bounded queue per model) and the per-request token limit, with a real worker."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from rq.job import JobStatus

from api.app import create_app
from dispatcher import Dispatcher, InputTooLargeError, JobFailedError, OverloadedError
from dispatcher.protocol import Job, Keys, pack
from dispatcher.settings import Settings
from tests.cloud_server import CloudServer
from tests.conftest import WorkerProcess, signed

MODEL = "all-minilm-l6-v2"
MAX_QUEUE, MAX_TOKENS = 3, 40


@pytest.fixture(scope="module")
def limited(redis_url: str, settings: Settings) -> Iterator[tuple[Settings, WorkerProcess]]:
    """A worker of its own (key prefix of its own) whose request token limit is tiny."""
    s = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}lim", "max_queue": MAX_QUEUE})
    proc = WorkerProcess(s, models=[MODEL], NPU_MAX_REQUEST_TOKENS=str(MAX_TOKENS))
    proc.wait_live()
    yield s, proc
    proc.stop()


def _backlog(s: Settings, n: int) -> None:
    """`n` jobs waiting in the stream (already late: the worker will drop them when it reads them)."""
    r, keys = s.redis(), Keys(s.key_prefix)
    for _ in range(n):
        job = Job(kind="embed", model=MODEL, reply=keys.reply("nobody"), deadline=time.time() - 1, texts=["x"])
        r.xadd(keys.stream(MODEL), {"j": pack(job)})


def test_a_full_queue_is_429_with_retry_after_or_the_cloud(limited: tuple[Settings, WorkerProcess],
                                                          cloud: CloudServer) -> None:
    s, proc = limited
    proc.proc.send_signal(signal.SIGSTOP)  # alive by its heartbeat for a few seconds, but not reading
    try:
        _backlog(s, MAX_QUEUE)
        with pytest.raises(OverloadedError) as err:
            Dispatcher(s).embed(["one more"], MODEL, allow_cloud=False)
        assert err.value.status == 429 and err.value.retry_after_s == s.retry_after_s
        with signed(TestClient(create_app(s))) as c:
            response = c.post("/embeddings", json={"texts": ["one more"], "model": MODEL, "allow_cloud": False})
            assert response.status_code == 429 and response.json()["error"] == "overloaded"
            assert response.headers["Retry-After"] == str(s.retry_after_s)
        with_cloud = Dispatcher(s.model_copy(update={"cloud_base_url": cloud.base_url}))
        result = with_cloud.embed(["one more"], MODEL)
        assert result.source == "cloud" and result.fallback_reason == "overloaded"
        assert s.redis().xlen(Keys(s.key_prefix).stream(MODEL)) == MAX_QUEUE  # nothing added beyond the bound
    finally:
        proc.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 10
    while s.redis().xlen(Keys(s.key_prefix).stream(MODEL)) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.6)  # past the route cache
    assert Dispatcher(s).embed(["room again"], MODEL, allow_cloud=False).source == "npu"


def test_a_request_over_the_total_token_limit_is_413(limited: tuple[Settings, WorkerProcess]) -> None:
    s, _ = limited
    d = Dispatcher(s)
    texts = ["a sentence of about a dozen tokens, give or take a few words"] * 4  # ~60 tokens together
    with pytest.raises(JobFailedError) as err:
        d.embed(texts, MODEL, allow_cloud=False)
    assert err.value.status == 413 and err.value.code == "too_many_tokens"
    assert err.value.extra["limit"] == MAX_TOKENS and err.value.extra["tokens"] > MAX_TOKENS
    assert d.embed(texts[:2], MODEL, allow_cloud=False).vectors.shape == (2, 384)
    with signed(TestClient(create_app(s))) as c:
        body = c.post("/embeddings", json={"texts": texts, "model": MODEL, "allow_cloud": False}).json()
        assert body["error"] == "too_many_tokens" and body["limit"] == MAX_TOKENS
    job = d.submit_embed(texts, MODEL)  # the bulk lane applies the same limit
    deadline = time.monotonic() + 20
    while job.get_status() not in (JobStatus.FAILED, JobStatus.FINISHED) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.get_status() == JobStatus.FAILED and "too_many_tokens" in job.latest_result().exc_string


def test_the_bulk_queue_is_bounded_too(isolated: Settings) -> None:
    d = Dispatcher(isolated.model_copy(update={"max_bulk_queue": 2}))
    d.submit_embed(["a"], MODEL)
    d.submit_embed(["b"], MODEL)  # no worker serves this prefix: both stay queued
    with pytest.raises(OverloadedError):
        d.submit_embed(["c"], MODEL)
    assert d.bulk_queue(MODEL).count == 2


def test_input_limits_are_checked_before_anything_is_queued(isolated: Settings) -> None:
    d = Dispatcher(isolated.model_copy(update={"max_texts": 2, "max_text_chars": 10}))
    with pytest.raises(InputTooLargeError):
        d.embed(["a", "b", "c"], MODEL)
    with pytest.raises(InputTooLargeError):
        d.submit_embed(["x" * 11], MODEL)
    keys = Keys(isolated.key_prefix)
    assert d.redis.xlen(keys.stream(MODEL)) == 0 and d.bulk_queue(MODEL).count == 0
