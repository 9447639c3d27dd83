"""The NPU-shaped engines on CPU: fixed-shape embeddings equal the dynamic engine's, serial generation equals
`LLMPipeline` run directly, and the table picks them by device, registry or environment.

All on the real bundled models; only the device differs from an NPU (no NPU here).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openvino as ov
import openvino_genai as og
import pytest

from dispatcher.errors import CacheFullError, InvalidInputError, NPUUnavailableError
from dispatcher.models import ModelSpec, Registry
from dispatcher.settings import Settings
from worker import engines, pipelines, static
from worker.generation import ContinuousBatchingEngine, Generated, generation_config, prompt_ids
from worker.serial import SerialEngine, device_properties

EMBEDDING = "all-minilm-l6-v2"
GENERATION = "smollm2-135m-instruct"
EXACT = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}
"""The CPU plugin's defaults here (bf16 on AMX, activations quantized on the fly across the whole tensor, padding
included) move vectors by ~1e-3 with the padded length, in either engine; f32 without it is exact."""


@pytest.fixture(scope="module")
def exact_cpu() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        plain = pipelines.plugin_config
        for module in (pipelines, static):
            mp.setattr(module, "plugin_config", lambda *a, **k: plain(*a, **k) | EXACT)
        yield


@pytest.fixture(scope="module")
def embedding_spec(settings: Settings) -> ModelSpec:
    return Registry.load(settings).get(EMBEDDING).model_copy(update={"static_batch": 4, "length_buckets": [16, 64]})


@pytest.fixture(scope="module")
def fixed(exact_cpu: None, embedding_spec: ModelSpec) -> static.StaticEmbeddingEngine:
    return static.StaticEmbeddingEngine(embedding_spec, ["CPU"])


@pytest.fixture(scope="module")
def dynamic(exact_cpu: None, embedding_spec: ModelSpec) -> pipelines.TextEmbeddingEngine:
    return pipelines.TextEmbeddingEngine(embedding_spec, ["CPU"])


@pytest.fixture(scope="module")
def serial(settings: Settings) -> SerialEngine:
    engine = SerialEngine(Registry.load(settings).get(GENERATION), ["CPU"], default_max_tokens=16)
    engine.warm_up()
    return engine


TEXTS = {16: "a short text", 64: "a sentence of some words that runs a little longer " * 3,
         256: "many words in a long document " * 30}
"""A text per bucket of `embedding_spec` (16, 64 and max_input_tokens, 256), each longer than the bucket below."""


@pytest.mark.parametrize("n", [1, 3, 4, 9])
def test_fixed_shapes_equal_the_dynamic_path_for_every_bucket(fixed: static.StaticEmbeddingEngine,
                                                               dynamic: pipelines.TextEmbeddingEngine, n: int) -> None:
    """Batches of 1, a partial batch, exactly the batch size (4) and more than it, on each bucket."""
    assert fixed.buckets == [16, 64, 256] and fixed.batch == 4
    counts = dict(zip(TEXTS, dynamic.count_tokens(list(TEXTS.values())), strict=True))
    assert 8 < counts[64] <= 64 < counts[256] <= 256 and counts[16] <= 16, counts
    for bucket, text in TEXTS.items():
        texts = [f"{i} {text}" for i in range(n)]
        vectors = fixed.embed(texts)
        assert vectors.shape == (n, 384)
        assert np.abs(vectors - dynamic.embed(texts)).max() < 1e-5, bucket
    mixed = [TEXTS[16], TEXTS[256], TEXTS[64]] * 3
    assert np.abs(fixed.embed(mixed[:n]) - dynamic.embed(mixed[:n])).max() < 1e-5


def test_the_longest_bucket_is_the_model_limit_and_truncation_cuts_as_the_pipeline(
        fixed: static.StaticEmbeddingEngine, dynamic: pipelines.TextEmbeddingEngine, embedding_spec: ModelSpec) -> None:
    assert static.buckets(embedding_spec.model_copy(update={"length_buckets": [999, 32]})) == [32, 256]
    long = "word " * 400
    counts, truncated = fixed.check([long], truncate=True)
    assert counts[0] > 256 and truncated == [True]
    with pytest.raises(InvalidInputError, match="at most 256"):
        fixed.check([long], truncate=False)
    assert np.abs(fixed.embed([long]) - dynamic.embed([long])).max() < 1e-5  # the pipeline path cuts it


def _direct(spec: ModelSpec, engine: SerialEngine, prompt: str, max_tokens: int) -> list[int]:
    pipe = og.LLMPipeline(str(spec.path), "CPU", ATTENTION_BACKEND="SDPA")
    ids = prompt_ids(engine.chat, spec, prompt)
    return [int(t) for t in pipe.generate(ov.Tensor(np.array([ids], dtype=np.int64)),
                                          generation_config(max_tokens, 0, None)).tokens[0]]


def test_serial_generation_equals_llmpipeline_token_for_token(serial: SerialEngine) -> None:
    prompt = "Count from one to ten."
    streamed: list[str] = []
    done: list[Generated | Exception] = []
    serial.submit(prompt, 24, 0.0, done.append, streamed.append)
    while serial.running:
        serial.step()
    result = done[0]
    assert isinstance(result, Generated)
    expected = _direct(serial.spec, serial, prompt, 24)
    assert result.text == serial.tokenizer.decode(expected) and result.completion_tokens == len(expected)
    assert "".join(streamed) == result.text and len(streamed) > 3  # streamed as it came, not at the end
    assert result.prompt_tokens == serial.check(prompt)
    assert result.finish_reason == ("length" if result.completion_tokens == 24 else "stop")
    assert 0 < result.ttft_ms < result.duration_ms


def test_serial_stop_strings_and_one_generation_at_a_time(serial: SerialEngine) -> None:
    prompt = "Count from one to ten."
    full = serial.generate(prompt, 24, 0)
    stop = full.text.split()[2]
    done: list[Generated | Exception] = []
    streamed: list[str] = []
    for _ in range(3):
        serial.submit(prompt, 24, None, done.append, streamed.append, stop=[stop])
    assert serial.running == 3 and len(serial.waiting) == 2 and serial.free_slots == 0
    most = 0
    while serial.running:
        most = max(most, int(serial.current is not None))
        serial.step()
    assert most == 1 and serial.free_slots == 1
    for result in done:
        assert isinstance(result, Generated) and result.finish_reason == "stop"
        assert stop not in result.text and full.text.startswith(result.text)
    assert "".join(streamed) == "".join(r.text for r in done if isinstance(r, Generated))


def test_serial_refuses_what_never_fits_and_drops_waiters_past_their_deadline(settings: Settings) -> None:
    spec = Registry.load(settings).get(GENERATION).model_copy(update={"max_input_tokens": 40})
    engine = SerialEngine(spec, ["CPU"], max_new_tokens=64, cache_mb=1)
    with pytest.raises(InvalidInputError) as long:
        engine.submit("word " * 60, 4, None, lambda _: None)
    assert long.value.code == "input_too_long" and long.value.extra["limit"] == 40
    with pytest.raises(CacheFullError) as full:
        engine.submit("Hi.", engine.cache.tokens, None, lambda _: None)
    assert full.value.status == 429 and not engine.running
    done: list[Generated | Exception] = []
    engine.submit("Hi.", 8, None, done.append)
    engine.submit("Hi.", 8, None, done.append, deadline=time.time() + 0.01)  # its caller gives up at once
    time.sleep(0.05)
    while engine.running:
        engine.step()
    # ended at the first step after its deadline, while the first generation still ran, not when that one ended
    assert isinstance(done[0], NPUUnavailableError) and isinstance(done[1], Generated)


def test_npu_properties_only_on_npu(settings: Settings) -> None:
    spec = Registry.load(settings).get(GENERATION).model_copy(
        update={"npu_generate_hint": "BEST_PERF", "npu_prefill_hint": "STATIC",
                "npu_properties": {"NPUW_LLM_PREFILL_CHUNK_SIZE": 256}})
    assert device_properties(spec, "NPU", 0, 300) == {
        "MAX_PROMPT_LEN": 2048, "MIN_RESPONSE_LEN": 300, "GENERATE_HINT": "BEST_PERF", "PREFILL_HINT": "STATIC",
        "NPUW_LLM_PREFILL_CHUNK_SIZE": 256}
    cpu = device_properties(spec, "CPU", 0, 300)
    assert "MAX_PROMPT_LEN" not in cpu and cpu["ATTENTION_BACKEND"] == "SDPA"


def test_the_serial_engine_compiles_through_the_cache_on_every_device(settings: Settings, tmp_path: Path) -> None:
    """An NPU recompiles its LLM at every start unless `CACHE_DIR` is set: the NPU's properties carry it too."""
    spec = Registry.load(settings).get(GENERATION)
    npu = device_properties(spec, "NPU", 0, 300, tmp_path)
    assert npu["CACHE_DIR"] == str(tmp_path / "NPU") and npu["MAX_PROMPT_LEN"] == 2048
    assert device_properties(spec, "CPU", 0, 300, tmp_path)["CACHE_DIR"] == str(tmp_path / "CPU")
    assert "CACHE_DIR" not in device_properties(spec, "NPU", 0, 300)


def test_the_engine_follows_the_device_then_the_registry_then_the_environment(settings: Settings) -> None:
    registry = Registry.load(settings)
    generation, embedding = registry.get(GENERATION), registry.get(EMBEDDING)
    assert engines.by_device(generation, ["NPU", "GPU", "CPU"]) == [("serial", ["NPU"]),
                                                                    ("continuous-batching", ["GPU", "CPU"])]
    assert engines.by_device(embedding, ["NPU", "CPU"]) == [("text-embedding", ["NPU", "CPU"])]
    asks = embedding.model_copy(update={"static_batch": 8})
    assert engines.by_device(asks, ["NPU.0", "CPU"]) == [("static-embedding", ["NPU.0"]), ("text-embedding", ["CPU"])]
    # No NPU here: the serial engine's device refuses, and the next device gets continuous batching.
    npu_first = settings.model_copy(update={"devices": "NPU,CPU"})
    assert isinstance(engines.build(generation, npu_first), ContinuousBatchingEngine)
    assert engines.forced(generation.model_copy(update={"engine": "serial"}), settings) == "serial"
    env = settings.model_copy(update={"generation_engine": "continuous-batching", "embed_engine": "static-embedding"})
    assert engines.forced(generation.model_copy(update={"engine": "serial"}), env) == "continuous-batching"
    assert engines.forced(embedding, env) == "static-embedding"
    with pytest.raises(ValueError, match="no engine 'fast'"):
        engines.build(generation.model_copy(update={"engine": "fast"}), settings)
