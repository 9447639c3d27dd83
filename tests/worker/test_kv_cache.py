"""The generation KV cache: sized from the model, bounded by admission, refused clearly, reported in the heartbeat.

All with the real SmolLM2 model on the real engine; a tiny cache (NPU_KV_CACHE_MB=1: two blocks, 64 tokens)
makes refusal and waiting happen with short prompts.
"""

from __future__ import annotations

import math
import time

import pytest

from dispatcher.client import Dispatcher
from dispatcher.errors import CacheFullError, NPUError
from dispatcher.models import Registry
from dispatcher.settings import Settings
from tests.conftest import WorkerProcess
from worker import kvcache
from worker.generation import ContinuousBatchingEngine, Generated

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tiny(settings: Settings) -> ContinuousBatchingEngine:
    """A generator with a 1 MB cache: two blocks of 32 tokens."""
    return ContinuousBatchingEngine(Registry.load(settings).get(MODEL), ["CPU"], max_sequences=4, cache_mb=1)


def test_default_is_computed_from_the_model_shape_and_the_admitted_work(settings: Settings) -> None:
    spec = Registry.load(settings).get(MODEL)
    shape = kvcache.ModelShape.read(spec.path)
    assert shape == kvcache.ModelShape(layers=30, kv_heads=3, head_dim=64)  # SmolLM2-135M's config
    computed = kvcache.plan(shape, "u8", 8, spec.max_input_tokens + 1024, None)
    assert computed.source == "computed" and computed.blocks == 8 * math.ceil((2048 + 1024) / 32)
    assert computed.tokens >= 8 * (2048 + 1024)
    # f16 costs twice the elements of u8 (u8 also keeps scales): the element type is read, not assumed.
    assert kvcache.plan(shape, "f16", 8, 3072, None).estimated_bytes > computed.estimated_bytes
    assert kvcache.plan(shape, "u8", 8, 3072, 64).source == "setting"
    assert kvcache.plan(shape, "u8", 8, 3072, 64).estimated_bytes <= 64 * 2**20
    # The registry's per-model size wins over NPU_KV_CACHE_MB.
    sized = ContinuousBatchingEngine(spec.model_copy(update={"kv_cache_mb": 2}), ["CPU"], max_sequences=2, cache_mb=64)
    assert sized.cache.source == "setting" and sized.cache.estimated_bytes <= 2 * 2**20
    assert sized.cache_state().configured_bytes == sized.cache.estimated_bytes


def test_a_generation_larger_than_the_cache_is_refused_with_429(tiny: ContinuousBatchingEngine) -> None:
    prompt = "Say hi."
    tokens = tiny.check(prompt)
    assert tokens < tiny.cache.tokens
    with pytest.raises(CacheFullError) as refused:
        tiny.submit(prompt, tiny.cache.tokens, None, on_done=lambda _: None)
    assert refused.value.status == 429 and refused.value.code == "kv_cache_full"
    assert refused.value.extra["limit"] == tiny.cache.tokens
    assert not tiny.running and tiny.reserved_blocks == 0
    # The engine is unharmed: a generation that fits runs to its end.
    result = tiny.generate(prompt, tiny.cache.tokens - tokens)
    assert result.completion_tokens >= 1


def test_generations_wait_for_cache_and_then_all_finish(tiny: ContinuousBatchingEngine) -> None:
    """Each needs the whole cache: the second waits in the worker until the first ends, never crowding the engine."""
    prompt = "Name a colour."
    max_tokens = tiny.cache.tokens - tiny.check(prompt)
    done: list[Generated | Exception] = []
    for _ in range(2):
        tiny.submit(prompt, max_tokens, None, on_done=done.append)
    assert len(tiny.active) == 1 and len(tiny.waiting) == 1 and tiny.free_slots == 2
    most_active = 0
    while tiny.running:
        tiny.step()
        most_active = max(most_active, len(tiny.active))
        assert tiny.reserved_blocks <= tiny.cache.blocks
    assert most_active == 1
    assert len(done) == 2 and all(isinstance(r, Generated) and r.completion_tokens for r in done)
    state = tiny.cache_state()
    assert 0 < state.allocated_bytes <= state.configured_bytes, state


def test_worker_refuses_over_the_cache_with_429_and_keeps_serving(isolated: Settings) -> None:
    """A real worker with NPU_KV_CACHE_MB=1: the caller gets 429 kv_cache_full, the worker stays up and serves,
    and its heartbeat carries its RSS and the model's cache."""
    proc = WorkerProcess(isolated, [MODEL], NPU_KV_CACHE_MB="1")
    try:
        beat = proc.wait_live()
        assert beat.rss_bytes and beat.rss_bytes > 50 * 2**20
        assert beat.kv_cache and beat.kv_cache[MODEL].configured_bytes <= 2**20
        dispatcher = Dispatcher(isolated)
        with pytest.raises(NPUError) as refused:
            dispatcher.generate("Tell me a story.", MODEL, max_tokens=500, deadline_s=20)
        assert refused.value.status == 429 and refused.value.code == "kv_cache_full", refused.value
        assert dispatcher.generate("Say hi.", MODEL, max_tokens=8, deadline_s=20).text
        assert proc.proc.poll() is None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the loop updates the figures after a step; the beat follows
            beat = proc.beat() or beat
            if beat.kv_cache and beat.kv_cache[MODEL].allocated_bytes:
                break
            time.sleep(0.2)
        assert beat.kv_cache is not None
        assert 0 < beat.kv_cache[MODEL].allocated_bytes <= beat.kv_cache[MODEL].configured_bytes
    finally:
        proc.stop()


def test_embedding_inferences_stay_within_the_padded_token_budget() -> None:
    """The largest shape an embedding worker runs is bounded (its warm-up reaches it), whatever the batch."""
    from worker.inference import PADDED_TOKENS, chunks

    assert chunks([14] * 32, 32, 256) == [32]  # short texts still go 32 at a time
    assert chunks([256] * 32, 32, 256) == [8, 8, 8, 8]
    assert chunks([900, 5, 5], 32, 256) == [3]  # counted as the pipeline cuts them (max_input_tokens)
    assert chunks([5] * 40, 32, 256) == [32, 8]
    assert chunks([], 32, 256) == []
    for counts in ([3, 200, 7, 256, 1, 64] * 9, [100] * 50):
        sizes, row = chunks(counts, 32, 256), 0
        assert sum(sizes) == len(counts)
        for size in sizes:
            assert size * max(min(n, 256) for n in counts[row:row + size]) <= PADDED_TOKENS
            row += size


def test_a_cancelled_generation_ends_within_a_step_and_frees_its_cache(tiny: ContinuousBatchingEngine) -> None:
    """`cancel`: one in the engine ends at the next step with its text so far, its reserved cache given back
    and the waiting one admitted in its place; one still waiting ends at once."""
    prompt = "Write a long story about the sea."
    max_tokens = tiny.cache.tokens - tiny.check(prompt)
    done: dict[str, Generated | Exception] = {}
    for job in ("running", "waiting", "next"):
        tiny.submit(prompt, max_tokens, None, on_done=lambda r, job=job: done.__setitem__(job, r), job_id=job)
    for _ in range(3):
        tiny.step()
    assert tiny.cancel("waiting", "client_gone") and tiny.cancel("running", "deadline")
    waiting = done["waiting"]
    assert isinstance(waiting, Generated) and waiting.finish_reason == "cancelled" and waiting.completion_tokens == 0
    tiny.step()
    cut = done["running"]
    assert isinstance(cut, Generated) and cut.finish_reason == "length" and 3 <= cut.completion_tokens <= 5
    assert [r.job_id for r in tiny.active.values()] == ["next"]  # the freed cache admitted the next one
    assert not tiny.cancel("running", "client_gone")  # ended: nothing to cancel
    assert tiny.cancel("next", "client_gone")
    tiny.step()
    assert not tiny.running and tiny.reserved_blocks == 0 and done["next"].finish_reason == "cancelled"  # type: ignore[union-attr]
