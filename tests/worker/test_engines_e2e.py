"""The lanes' essentials, run once with the default engines and once with the NPU-shaped ones forced on CPU
(NPU_GENERATION_ENGINE=serial, NPU_EMBED_ENGINE=static-embedding): a caller sees the same behaviour from both.

A real worker process per engine set (both bundled models, an 8 MB KV cache: about 600 tokens, so refusal
needs no long prompt), the real dispatcher and Redis.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dispatcher import AsyncDispatcher, Dispatcher
from dispatcher.errors import NPUError
from dispatcher.models import Registry
from dispatcher.settings import Settings
from tests.conftest import WorkerProcess, _cleanup, live_beats
from worker.pipelines import TextEmbeddingEngine

EMBEDDING = "all-minilm-l6-v2"
GENERATION = "smollm2-135m-instruct"
ENGINES = {"default": {}, "npu-shaped": {"NPU_GENERATION_ENGINE": "serial", "NPU_EMBED_ENGINE": "static-embedding"}}


@pytest.fixture(scope="module", params=list(ENGINES))
def served(request: pytest.FixtureRequest, settings: Settings, redis_url: str) -> Iterator[tuple[str, Settings]]:
    prefix = f"{settings.key_prefix}e{uuid.uuid4().hex[:6]}"
    s = settings.model_copy(update={"key_prefix": prefix, "node_id": f"{prefix}-node"})
    proc = WorkerProcess(s, [EMBEDDING, GENERATION], NPU_KV_CACHE_MB="8", **ENGINES[request.param])
    try:
        proc.wait_live()
        yield request.param, s
    finally:
        proc.stop()
        _cleanup(redis_url, prefix)


def test_embeddings(served: tuple[str, Settings]) -> None:
    """Batches of 1, 5 and 11 mixed-length texts (the fixed-shape engine pads and splits by 8 rows)."""
    _, s = served
    texts = [f"text {i}: " + "words and more words " * (i * 7 % 23) for i in range(11)]
    reference = TextEmbeddingEngine(Registry.load(s).get(EMBEDDING), ["CPU"]).embed(texts)
    d = Dispatcher(s)
    for n in (1, 5, 11):
        result = d.embed(texts[:n], EMBEDDING, allow_cloud=False, deadline_s=20)
        assert result.source == "npu" and result.vectors.shape == (n, 384)
        assert result.token_counts and len(result.token_counts) == n
        # the CPU plugin's bf16 and on-the-fly quantization move vectors by ~1e-3 with the padded shape
        assert np.abs(result.vectors - reference[:n]).max() < 5e-3
        assert (np.sum(result.vectors * reference[:n], axis=1) > 0.9999).all()


def test_streaming_with_a_stop_string(served: tuple[str, Settings]) -> None:
    _, s = served
    d = Dispatcher(s)
    full = d.generate("Count from one to ten.", GENERATION, max_tokens=24, temperature=0, allow_cloud=False)
    stop = full.text.split()[3]
    chunks = list(d.stream("Count from one to ten.", GENERATION, max_tokens=24, temperature=0, stop=[stop],
                           allow_cloud=False))
    result = chunks[-1].result
    assert chunks[-1].done and result and result.source == "npu" and result.finish_reason == "stop"
    assert "".join(c.delta for c in chunks[:-1]) == result.text and len(chunks) > 3
    assert stop not in result.text and full.text.startswith(result.text)
    assert result.prompt_tokens == full.prompt_tokens and result.timings.get("ttft_ms")


def test_four_concurrent_generations_all_answer(served: tuple[str, Settings]) -> None:
    _, s = served

    async def four() -> list:
        d = AsyncDispatcher(s)
        try:
            return await asyncio.gather(*[d.generate(f"Name a colour, number {i}.", GENERATION, max_tokens=16,
                                                     allow_cloud=False, deadline_s=30) for i in range(4)])
        finally:
            await d.aclose()

    results = asyncio.run(four())
    assert all(r.source == "npu" and r.text and r.completion_tokens for r in results)


def test_a_generation_that_never_fits_the_cache_is_refused(served: tuple[str, Settings]) -> None:
    _, s = served
    with pytest.raises(NPUError) as refused:
        Dispatcher(s).generate("Tell me a story.", GENERATION, max_tokens=1000, allow_cloud=False, deadline_s=20)
    assert refused.value.status == 429 and refused.value.code == "kv_cache_full"


def test_a_caller_waiting_behind_a_generation_gets_its_deadline(served: tuple[str, Settings]) -> None:
    """While one long generation runs, a second caller with a 0.3 s budget: the serial engine cannot start it, and
    the caller hears so at its deadline, not when the first ends; continuous batching starts it at once."""
    engines, s = served
    running = threading.Event()

    def first() -> str:
        chunks = Dispatcher(s).stream("Count from 1 to 300, separated by commas.", GENERATION, max_tokens=200,
                                      temperature=0, allow_cloud=False, deadline_s=30)
        text = ""
        for chunk in chunks:
            running.set()
            text += chunk.delta
        return text

    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(first)
        assert running.wait(30)
        started = time.monotonic()
        try:
            second: object = Dispatcher(s).generate("Say hi.", GENERATION, max_tokens=4, allow_cloud=False,
                                                    deadline_s=0.3)
        except NPUError as exc:
            second = exc
        waited = time.monotonic() - started
        assert long.result()
    if engines == "npu-shaped":
        assert isinstance(second, NPUError) and second.code == "unavailable", second
        assert waited < 1.5
    else:
        assert getattr(second, "text", None), second


def _counters(s: Settings) -> dict[str, int]:
    beats = live_beats(s)
    assert len(beats) == 1, beats
    return beats[0].counters


def test_closing_a_stream_early_stops_its_generation(served: tuple[str, Settings]) -> None:
    """The caller stops reading after 3 chunks of 300 tokens: the engine stops within a step (continuous
    batching: `GenerationHandle.stop`; serial: its streamer answers CANCEL), counted by the worker itself."""
    _, s = served
    tokens = f"model:{GENERATION}:items"
    time.sleep(s.heartbeat_interval_s + 0.3)  # earlier tests' generations are in the counters by now
    before = _counters(s)
    d = Dispatcher(s)
    try:
        stream = d.stream("Write a very long story about a lighthouse keeper.", GENERATION, max_tokens=300,
                          temperature=0, allow_cloud=False)
        seen = 0
        for chunk in stream:
            seen += bool(chunk.delta)
            if seen == 3:
                break
        stream.close()  # type: ignore[attr-defined]
    finally:
        d.close()
    end = time.monotonic() + 20
    while _counters(s).get("cancelled_caller_cancelled", 0) <= before.get("cancelled_caller_cancelled", 0):
        assert time.monotonic() < end, _counters(s)
        time.sleep(0.2)
    time.sleep(s.heartbeat_interval_s + 0.3)  # its tokens are counted when the engine ends it
    assert _counters(s).get(tokens, 0) - before.get(tokens, 0) <= seen + 6


def test_the_heartbeat_reports_what_the_engine_really_runs_at_once(served: tuple[str, Settings]) -> None:
    engines, s = served
    placement = (live_beats(s)[0].placements or {})[GENERATION]
    assert placement.engine == ("serial" if engines == "npu-shaped" else "continuous-batching")
    assert placement.max_concurrent == (1 if engines == "npu-shaped" else s.max_generations)
