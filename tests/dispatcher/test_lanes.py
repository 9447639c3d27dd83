"""Both lanes end to end: dispatcher -> Redis -> a real worker process -> OpenVINO, and the fallbacks."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis
from rq import Queue
from rq.job import Job as RQJob
from rq.job import JobStatus

from dispatcher import AsyncDispatcher, Dispatcher, JobFailedError
from dispatcher.protocol import EMBED_TASK, GENERATE_TASK, Keys, MsgpackSerializer, pack
from dispatcher.settings import Settings
from tests.conftest import WorkerProcess

MODEL = "all-minilm-l6-v2"
LLM = "smollm2-135m-instruct"


@pytest.fixture
def client(settings: Settings, worker: WorkerProcess) -> Dispatcher:
    return Dispatcher(settings)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embeddings_are_real(client: Dispatcher) -> None:
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    result = client.embed(texts, MODEL)
    v = result.vectors
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.3  # a paraphrase is far closer than an unrelated sentence
    assert result.source == "npu" and result.device == "cpu" and result.node_id
    assert result.token_counts and all(n > 2 for n in result.token_counts)
    again = client.embed(texts, MODEL).vectors
    assert np.allclose(v, again, atol=1e-5)  # deterministic


def test_async_form_gives_the_same_vectors(client: Dispatcher, settings: Settings) -> None:
    async def run() -> np.ndarray:
        d = AsyncDispatcher(settings)
        try:
            return (await d.embed(["hello world"], MODEL)).vectors
        finally:
            await d.aclose()

    assert np.allclose(asyncio.run(run()), client.embed(["hello world"], MODEL).vectors, atol=1e-5)


def test_concurrent_callers_are_batched_and_each_gets_its_own_vectors(client: Dispatcher,
                                                                       worker: WorkerProcess) -> None:
    texts = [f"sentence number {i} about topic {i % 5}" for i in range(48)]
    alone = {t: client.embed([t], MODEL).vectors[0] for t in texts}
    before = worker.beat().counters
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda t: (t, client.embed([t], MODEL).vectors[0]), texts * 2))
    for text, vector in together:
        assert np.allclose(vector, alone[text], atol=2e-3), text
    time.sleep(2.5)  # next heartbeat carries the counters
    after = worker.beat().counters
    texts_run = after["texts"] - before.get("texts", 0)
    batches = after["batches"] - before.get("batches", 0)
    assert texts_run >= 96 and batches < texts_run  # at least some inferences served several callers


def test_async_callers_share_one_inbox_and_each_gets_its_own_reply(client: Dispatcher, settings: Settings) -> None:
    """64 waiting async callers hold no Redis connection each: one reader serves them all, by job id."""
    texts = [f"inbox sentence {i} on subject {i % 7}" for i in range(64)]
    alone = client.embed(texts, MODEL).vectors

    async def run() -> tuple[list[np.ndarray], int, int]:
        d = AsyncDispatcher(settings)
        try:
            results = await asyncio.gather(*[d.embed([t], MODEL) for t in texts])
            # A reply nobody waits for (its caller gave up) is dropped, not handed to another caller.
            await d.redis.rpush(d.inbox.key, pack({"job": "gone", "ok": True}))
            again = await d.embed([texts[0]], MODEL)
            connections = len(d.redis.connection_pool._available_connections) + len(
                d.redis.connection_pool._in_use_connections)
            return [r.vectors[0] for r in results] + [again.vectors[0]], connections, len(d.inbox._waiters)
        finally:
            await d.aclose()

    vectors, connections, waiting = asyncio.run(run())
    assert np.allclose(np.asarray(vectors[:64]), alone, atol=2e-3) and np.allclose(vectors[64], alone[0], atol=2e-3)
    assert connections <= 8, connections  # was one per waiting caller (64) with a reply key each
    assert waiting == 0


def test_generation_returns_text(client: Dispatcher) -> None:
    result = client.generate("What is the capital of France?", LLM, max_tokens=16)
    assert result.source == "npu" and "Paris" in result.text
    assert result.completion_tokens and 0 < result.completion_tokens <= 16


def test_too_long_input_is_refused_by_the_worker_unless_truncation_is_asked(client: Dispatcher) -> None:
    long_text = "word " * 400
    with pytest.raises(JobFailedError) as err:
        client.embed(["fine", long_text], MODEL)
    assert err.value.status == 422 and err.value.code == "input_too_long" and err.value.extra["index"] == 1
    result = client.embed(["fine", long_text], MODEL, truncate=True)
    assert result.truncated == [False, True] and result.vectors.shape == (2, 384)


def test_bulk_job_through_plain_rq(settings: Settings, worker: WorkerProcess) -> None:
    """A backend that knows only RQ: enqueue by function name with the msgpack serializer, read the result."""
    r = settings.redis()
    queue = Queue(Keys(settings.key_prefix).queue(MODEL), connection=r, serializer=MsgpackSerializer)
    job = queue.enqueue(EMBED_TASK, kwargs={"texts": ["first document", "second document"], "model": MODEL},
                        result_ttl=300)
    bad = queue.enqueue(EMBED_TASK, kwargs={"texts": ["word " * 400], "model": MODEL}, result_ttl=300)
    gen = Queue(Keys(settings.key_prefix).queue(LLM), connection=r, serializer=MsgpackSerializer).enqueue(
        GENERATE_TASK, kwargs={"prompt": "Name a colour.", "model": LLM, "max_tokens": 8}, result_ttl=300)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(
            j.get_status() in (JobStatus.FINISHED, JobStatus.FAILED) for j in (job, bad, gen)):
        time.sleep(0.1)
    assert job.get_status() == JobStatus.FINISHED
    value = job.latest_result().return_value
    vectors = np.asarray(value["embeddings"])
    assert vectors.shape == (2, 384) and value["source"] == "npu" and value["device"] == "cpu"
    expected = Dispatcher(settings).embed(["first document"], MODEL).vectors[0]
    assert np.allclose(vectors[0], expected, atol=2e-3)  # same model, same answer on both lanes
    assert job.id in queue.finished_job_registry.get_job_ids()
    # A job that cannot run fails visibly, in RQ's own failed registry, with the reason.
    assert bad.get_status() == JobStatus.FAILED
    assert "input_too_long" in (bad.latest_result().exc_string or "") or "tokens" in bad.latest_result().exc_string
    assert bad.id in queue.failed_job_registry.get_job_ids()
    assert gen.get_status() == JobStatus.FINISHED and gen.latest_result().return_value["text"]


def test_submit_helpers_return_rq_jobs(client: Dispatcher) -> None:
    job = client.submit_embed(["via the dispatcher"], MODEL, result_ttl=300)
    deadline = time.monotonic() + 30
    while job.get_status() != JobStatus.FINISHED and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(job.latest_result().return_value["embeddings"][0]) == 384


def test_async_submit_helpers_return_rq_jobs_as_the_sync_ones_do(settings: Settings, worker: WorkerProcess) -> None:
    """Same signatures and the same `rq.job.Job`, whose connection keeps working after the dispatcher closed."""
    async def submit() -> tuple[RQJob, RQJob]:
        d = AsyncDispatcher(settings)
        try:
            return (await d.submit_embed(["via the async dispatcher"], MODEL, result_ttl=300),
                    await d.submit_generate("Name a colour.", LLM, max_tokens=4, result_ttl=300))
        finally:
            await d.aclose()

    embedded, generated = asyncio.run(submit())
    node = worker.wait_live().node_id
    assert embedded.origin == Keys(settings.key_prefix).queue(MODEL, node)  # routed as the sync one routes
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(
            j.get_status() in (JobStatus.FINISHED, JobStatus.FAILED) for j in (embedded, generated)):
        time.sleep(0.1)
    assert len(embedded.latest_result().return_value["embeddings"][0]) == 384
    assert generated.get_status() == JobStatus.FINISHED and generated.latest_result().return_value["text"]


def test_stream_yields_deltas_that_add_up(client: Dispatcher) -> None:
    chunks = list(client.stream("Count from one to ten.", LLM, max_tokens=24))
    assert chunks[-1].done and chunks[-1].result and chunks[-1].result.source == "npu"
    text = "".join(c.delta for c in chunks[:-1])
    assert len(chunks) > 4 and text == chunks[-1].result.text


def test_concurrent_generations_are_batched_by_the_worker(settings: Settings, worker: WorkerProcess) -> None:
    """Four callers at once run together in the worker's engine (continuous batching), not in turn."""
    async def four() -> list:
        d = AsyncDispatcher(settings)
        try:
            return await asyncio.gather(*[d.generate(f"Write a short poem about the sea, number {i}.", LLM,
                                                      max_tokens=48) for i in range(4)])
        finally:
            await d.aclose()

    results = asyncio.run(four())
    assert all(r.source == "npu" and r.text for r in results)
    time.sleep(2.5)  # the next heartbeat carries the counters
    assert worker.beat().counters["peak_generations"] >= 3


def test_the_fill_window_counts_texts_so_a_full_job_never_waits(isolated: Settings) -> None:
    """After 32 one-text callers taught the worker to wait for batches of 32, one job of 32 texts is a full
    batch and goes at once; with a 2 s window, counting jobs instead would hold it for the whole window."""
    proc = WorkerProcess(isolated, models=[MODEL], NPU_BATCH_WINDOW_MS="2000")
    try:
        proc.wait_live()
        d = Dispatcher(isolated)
        with ThreadPoolExecutor(32) as pool:
            for _ in range(3):
                list(pool.map(lambda i: d.embed([f"caller {i}"], MODEL), range(32)))
        texts = [f"document number {i}" for i in range(32)]
        result = d.embed(texts, MODEL)
        assert result.vectors.shape == (32, 384)
        assert result.timings["queue_ms"] < 1000, result.timings
    finally:
        proc.stop()


def test_a_lone_job_costs_one_read_and_no_bulk_poll(isolated: Settings) -> None:
    """Sequential single-text requests: the worker takes each job in one XREADGROUP (the read after a job
    blocks at once: no empty read checks for more first), and an empty bulk lane is looked at once per
    `bulk_poll_ms`, not after every job. Counted from Redis's MONITOR, for this test's keys only."""
    proc = WorkerProcess(isolated, models=[MODEL], NPU_BULK_POLL_MS="5000")
    r = redis.Redis.from_url(isolated.redis_url)
    seen: list[str] = []
    end = f"{isolated.key_prefix}:end"
    try:
        proc.wait_live()
        d = Dispatcher(isolated)
        d.embed(["warm"], MODEL)
        time.sleep(0.5)
        monitor = r.monitor().__enter__()
        started = threading.Event()

        def watch() -> None:
            started.set()
            while True:
                command = monitor.next_command()["command"]
                if isolated.key_prefix in command:
                    seen.append(command)
                if end in command:
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started.wait()
        jobs = 30
        for i in range(jobs):
            d.embed([f"lone text {i}"], MODEL)
        r.echo(end)
        watcher.join(10)
        reads = [c for c in seen if c.startswith("XREADGROUP")]
        # RQ's dequeue moves a job from its queue with LMOVE (LPOP in older releases)
        bulk_polls = [c for c in seen if "rq:queue:" in c and c.split()[0] in ("LMOVE", "BLMOVE", "LPOP", "BLPOP")]
        # was 3 per job (a second read topped up a lone job), then 2 (an empty read before blocking again)
        assert len(reads) <= jobs + 6, len(reads)
        assert len(bulk_polls) <= 3, bulk_polls  # was one per job
    finally:
        proc.stop()
