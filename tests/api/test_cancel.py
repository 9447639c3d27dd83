"""Work nobody waits for stops (issue 22, section 4; issue 25, item 4), measured by the worker's own counters.

Every test reads the session worker's heartbeat counters: `model:<llm>:items` (tokens it generated),
`jobs` and `cancelled_<reason>`. A generation is long (300 tokens, greedy) so one that runs to its end
cannot pass for a stopped one.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from rq.job import JobStatus

from dispatcher.client import AsyncDispatcher, Dispatcher
from dispatcher.errors import InvalidInputError, NotFoundError
from dispatcher.settings import Settings
from tests.conftest import ADMIN_TOKEN, APP_KEY, LiveFacade, WorkerProcess

MODEL = "all-minilm-l6-v2"
LLM = "smollm2-135m-instruct"
LONG = 300
PROMPT = "Write a very long story about a lighthouse keeper and the sea, with many chapters."
TOKENS = f"model:{LLM}:items"
SLACK = 6
"""Tokens a stopped generation may still produce after its caller's last chunk: the chunks in flight
between worker and caller (a token each), the step that learns of the cancel, and the one that ends it."""


def counters(worker: WorkerProcess) -> dict[str, int]:
    beat = worker.beat()
    assert beat is not None
    return beat.counters


def quiet(worker: WorkerProcess) -> dict[str, int]:
    """The counters once the work of earlier tests is in them (a generation is counted when it ends, and
    the heartbeat carries that up to an interval later)."""
    time.sleep(worker.settings.heartbeat_interval_s + 0.3)
    return counters(worker)


def settled(worker: WorkerProcess, ready: Callable[[dict[str, int]], bool], timeout: float = 20) -> dict[str, int]:
    """The worker's counters once `ready` holds and one more heartbeat has gone out (the generation's own
    tokens are counted when its engine ends it, a step after the cancel)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        now = counters(worker)
        if ready(now):
            time.sleep(worker.settings.heartbeat_interval_s + 0.3)
            return counters(worker)
        time.sleep(0.2)
    raise AssertionError(f"the worker's counters never showed it: {counters(worker)}")


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {APP_KEY}"}


def test_a_client_leaving_a_stream_stops_its_generation(facade: LiveFacade, worker: WorkerProcess) -> None:
    before = quiet(worker)
    chunks = 0
    with httpx.Client(timeout=60) as client, client.stream(
            "POST", f"{facade.url}/v1/chat/completions", headers=bearer(),
            json={"model": LLM, "stream": True, "max_tokens": LONG, "temperature": 0,
                  "messages": [{"role": "user", "content": PROMPT}]}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content"' in line:
                chunks += 1
                if chunks == 4:
                    break  # leaving the block closes the connection
    after = settled(worker, lambda c: c.get("cancelled_client_gone", 0) > before.get("cancelled_client_gone", 0))
    generated = after.get(TOKENS, 0) - before.get(TOKENS, 0)
    assert chunks <= generated <= chunks + SLACK, generated
    assert after.get("jobs", 0) == before.get("jobs", 0)  # not counted as served
    metrics = httpx.get(f"{facade.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
    assert 'npu_cancelled_total{reason="client_gone"}' in metrics
    assert any(line.startswith("npu_worker_cancelled_total{") and 'reason="client_gone"' in line
               and not line.endswith(" 0.0") for line in metrics.splitlines())


def test_a_client_leaving_before_its_answer_stops_its_generation(facade: LiveFacade, worker: WorkerProcess) -> None:
    before = quiet(worker)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and hangs up while the worker generates
        httpx.post(f"{facade.url}/inference", headers=bearer(), timeout=httpx.Timeout(60, read=1.0),
                   json={"prompt": PROMPT, "model": LLM, "max_tokens": LONG, "temperature": 0})
    after = settled(worker, lambda c: c.get("cancelled_client_gone", 0) > before.get("cancelled_client_gone", 0))
    assert after.get(TOKENS, 0) - before.get(TOKENS, 0) < LONG // 2


def test_a_queued_embedding_whose_client_left_is_not_computed(facade: LiveFacade, worker: WorkerProcess) -> None:
    before = quiet(worker)
    worker.proc.send_signal(signal.SIGSTOP)  # alive by its heartbeat for a few seconds, but reading nothing
    try:
        # The stopped worker's blocking read (a call Redis answers without it) takes the first job; the
        # second waits on the stream, and its client leaves.
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, f"{facade.url}/v1/embeddings", headers=bearer(), timeout=30,
                                json={"model": MODEL, "input": ["taken by the stopped worker's read"]})
            time.sleep(0.3)
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{facade.url}/v1/embeddings", headers=bearer(), timeout=httpx.Timeout(30, read=0.5),
                           json={"model": MODEL, "input": [f"nobody will read vector {i}" for i in range(5)]})
            time.sleep(0.3)  # the facade's cancel (XDEL) lands
            worker.proc.send_signal(signal.SIGCONT)
            assert first.result().status_code == 200
    finally:
        worker.proc.send_signal(signal.SIGCONT)
    # A job sent after it is served, so by then the worker has read everything that was queued.
    assert httpx.post(f"{facade.url}/v1/embeddings", headers=bearer(), timeout=30,
                      json={"model": MODEL, "input": ["served"]}).status_code == 200
    after = settled(worker, lambda c: c.get("jobs", 0) >= before.get("jobs", 0) + 2)
    assert after["jobs"] - before.get("jobs", 0) == 2
    assert after.get("texts", 0) - before.get("texts", 0) == 2  # not the 5 texts of the job whose client left


def test_cancelling_an_async_call_stops_its_generation(settings: Settings, worker: WorkerProcess) -> None:
    before = quiet(worker)

    async def cancel_midway() -> int:
        dispatcher = AsyncDispatcher(settings)
        seen = 0

        async def read() -> None:
            nonlocal seen
            async for chunk in dispatcher.stream(PROMPT, LLM, max_tokens=LONG, temperature=0):
                seen += bool(chunk.delta)

        try:
            task = asyncio.create_task(read())
            while seen < 3:
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return seen  # the cancellation runs in a task of its own, which aclose() lets finish
        finally:
            await dispatcher.aclose()

    seen = asyncio.run(cancel_midway())
    after = settled(worker, lambda c: c.get("cancelled_caller_cancelled", 0)
                    > before.get("cancelled_caller_cancelled", 0))
    assert after.get(TOKENS, 0) - before.get(TOKENS, 0) <= seen + SLACK


def test_closing_a_sync_stream_early_stops_its_generation(settings: Settings, worker: WorkerProcess) -> None:
    before = quiet(worker)
    dispatcher = Dispatcher(settings)
    try:
        stream = dispatcher.stream(PROMPT, LLM, max_tokens=LONG, temperature=0)
        seen = 0
        for chunk in stream:
            seen += bool(chunk.delta)
            if seen == 3:
                break
        stream.close()  # type: ignore[attr-defined]
    finally:
        dispatcher.close()
    after = settled(worker, lambda c: c.get("cancelled_caller_cancelled", 0)
                    > before.get("cancelled_caller_cancelled", 0))
    assert after.get(TOKENS, 0) - before.get(TOKENS, 0) <= seen + SLACK


def test_the_deadline_bounds_a_running_generation(facade: LiveFacade, worker: WorkerProcess) -> None:
    """`deadline_s` is the whole call's budget: the worker cuts the generation and answers with its text."""
    before = quiet(worker)
    started = time.monotonic()
    response = httpx.post(f"{facade.url}/inference", headers=bearer(), timeout=60,
                          json={"prompt": PROMPT, "model": LLM, "max_tokens": 400, "deadline_s": 1.0,
                                "temperature": 0})
    took = time.monotonic() - started
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["finish_reason"] == "length" and body["text"]
    assert 0 < body["usage"]["completion_tokens"] < 400
    assert took < 2.5, took
    after = settled(worker, lambda c: c.get("cancelled_deadline", 0) > before.get("cancelled_deadline", 0))
    assert after.get(TOKENS, 0) - before.get(TOKENS, 0) == body["usage"]["completion_tokens"]


def test_a_long_generation_outlives_the_idle_timer(settings: Settings, worker: WorkerProcess) -> None:
    """The worker tells a caller whose generation sends no text that it still runs: a generation longer
    than `generation_idle_s` is answered, not 504."""
    dispatcher = Dispatcher(settings.model_copy(update={"generation_idle_s": 2.0}))
    try:
        started = time.monotonic()
        result = dispatcher.generate(PROMPT, LLM, max_tokens=LONG, temperature=0)
        assert time.monotonic() - started > 2.0  # longer than the idle timer, or the test proves nothing
        assert result.completion_tokens and result.completion_tokens > 50
    finally:
        dispatcher.close()


def test_a_bulk_job_is_cancelled_by_id(isolated: Settings, settings: Settings, worker: WorkerProcess) -> None:
    """Queued: RQ's own `Job.cancel`. Started (a bulk generation in the worker's engine): stopped within a
    step, and RQ shows it canceled. Unknown or ended: a clear error."""
    idle = Dispatcher(isolated)  # no worker serves this prefix: the job stays queued
    try:
        queued = idle.submit_embed(["never embedded"], MODEL)
        assert idle.cancel_bulk(queued.id).get_status() == JobStatus.CANCELED
        with pytest.raises(NotFoundError):
            idle.cancel_bulk("no-such-job")
        with pytest.raises(InvalidInputError):
            idle.cancel_bulk(queued.id)
    finally:
        idle.close()
    before = quiet(worker)
    dispatcher = Dispatcher(settings)
    try:
        job = dispatcher.submit_generate(PROMPT, LLM, max_tokens=LONG, temperature=0)
        end = time.monotonic() + 30
        while job.get_status() != JobStatus.STARTED and time.monotonic() < end:
            time.sleep(0.05)
        dispatcher.cancel_bulk(job.id)
        while job.get_status() != JobStatus.CANCELED and time.monotonic() < end:
            time.sleep(0.05)
        assert job.get_status() == JobStatus.CANCELED
    finally:
        dispatcher.close()
    after = settled(worker, lambda c: c.get("cancelled_caller_cancelled", 0)
                    > before.get("cancelled_caller_cancelled", 0))
    assert after.get(TOKENS, 0) - before.get(TOKENS, 0) < LONG // 2
