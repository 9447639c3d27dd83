"""Device chain and model preparation, on real OpenVINO."""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov
import pytest

from dispatcher.models import Registry
from dispatcher.settings import Settings
from worker.devices import device_type, parse_chain
from worker.generation import ContinuousBatchingEngine
from worker.pipelines import CPU_SHAPE_CACHE, EMBED_SHAPE_CACHE, TOKENIZER_CONFIG, TextEmbeddingEngine
from worker.prepare import MARKER, prepare


def test_device_types() -> None:
    assert [device_type(d) for d in ["NPU", "GPU.1", "CPU", "NVIDIA"]] == ["intel-npu", "intel-gpu", "cpu",
                                                                           "nvidia-gpu"]
    assert parse_chain(" npu, cpu ") == ["NPU", "CPU"]
    with pytest.raises(ValueError):
        parse_chain(" , ")


def test_chain_falls_through_to_a_device_that_works(settings: Settings) -> None:
    import openvino as ov

    spec = Registry.load(settings).get("all-minilm-l6-v2")
    embedder = TextEmbeddingEngine(spec, parse_chain("NPU,GPU,CPU"))
    # Whatever ran is a device this machine really has, reported as such.
    assert embedder.device in ov.Core().available_devices
    assert embedder.embed(["hello"]).shape == (1, 384)


def test_chain_without_a_working_device_says_why(settings: Settings) -> None:
    import openvino as ov

    missing = [d for d in ("NPU", "GPU") if d not in ov.Core().available_devices]
    if not missing:
        pytest.skip("this machine has both NPU and GPU")  # an accelerator machine: nothing is missing
    spec = Registry.load(settings).get("all-minilm-l6-v2")
    with pytest.raises(RuntimeError) as err:
        TextEmbeddingEngine(spec, missing)
    assert all(d in str(err.value) for d in missing)


def test_prepared_models_are_complete_and_preparation_is_idempotent(settings: Settings) -> None:
    registry = Registry.load(settings)
    for name in registry.names:
        spec = registry.get(name)
        assert (spec.path / MARKER).exists()
        assert (spec.path / "openvino_model.xml").exists() and (spec.path / "openvino_tokenizer.xml").exists()
        assert prepare(spec) is False  # already there: nothing rebuilt


def test_generation_runs_with_the_chat_template(settings: Settings) -> None:
    generator = ContinuousBatchingEngine(Registry.load(settings).get("smollm2-135m-instruct"), ["CPU"])
    result = generator.generate("What is the capital of France?", 16, None)
    assert "Paris" in result.text and result.finish_reason == "stop"
    assert result.prompt_tokens > 8 and 0 < result.completion_tokens <= 16
    assert generator.generate("Count from one to one hundred.", 5).finish_reason == "length"


def test_concurrent_generations_advance_together_and_stream(settings: Settings) -> None:
    """Continuous batching: four prompts in one engine all finish, each with its own text, and the deltas
    of a streamed one add up to its final text."""
    generator = ContinuousBatchingEngine(Registry.load(settings).get("smollm2-135m-instruct"), ["CPU"], max_sequences=4)
    prompts = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?", "Say hello."]
    alone = [generator.generate(p, 24).text for p in prompts]
    done: dict[int, object] = {}
    deltas: list[str] = []
    for i, prompt in enumerate(prompts):
        generator.submit(prompt, 24, None, on_done=lambda r, i=i: done.__setitem__(i, r),
                         on_delta=deltas.append if i == 0 else None)
    assert generator.free_slots == 0
    steps = 0
    while generator.active:
        generator.step()
        steps += 1
    # Each request got its own answer: greedy decoding agrees with the solo run at least at the start
    # (batched kernels round differently, so long continuations of a 4-bit model may drift).
    for i in range(4):
        assert done[i].text[:12] == alone[i][:12], (done[i].text, alone[i])
    assert "".join(deltas) == done[0].text and len(deltas) > 1
    assert steps <= 25  # together, not one after another (that would take ~4 x 24 steps)


def test_token_limit_is_enforced_unless_truncation_is_asked(settings: Settings) -> None:
    embedder = TextEmbeddingEngine(Registry.load(settings).get("all-minilm-l6-v2"), ["CPU"])
    long_text = "word " * 400
    from dispatcher.errors import InvalidInputError

    with pytest.raises(InvalidInputError) as err:
        embedder.check(["short", long_text], truncate=False)
    assert err.value.code == "input_too_long" and err.value.extra["index"] == 1
    counts, truncated = embedder.check(["short", long_text], truncate=True)
    assert truncated == [False, True] and counts[1] > 256
    vectors = embedder.embed(["short", long_text])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_one_pass_and_pipeline_paths_give_the_same_vectors(settings: Settings) -> None:
    """Tokenizing once (count + inference) is an optimisation, not another model: same vectors as the
    TextEmbeddingPipeline path for a batch of mixed lengths, for a batch taken out of a larger counted
    one (rows reused, padding trimmed), and over-long input still goes through the pipeline, cut."""
    spec = Registry.load(settings).get("all-minilm-l6-v2")
    one, pipe = TextEmbeddingEngine(spec, ["CPU"], one_pass=True), TextEmbeddingEngine(spec, ["CPU"], one_pass=False)
    assert one.one_pass and not pipe.one_pass
    texts = ["a", "A man is playing a guitar on the stage tonight.", "short one", "x " * 100]
    assert np.abs(one.embed(texts) - pipe.embed(texts)).max() < 1e-5
    one.count_tokens(texts + ["never embedded"])
    subset = [texts[2], texts[0]]
    assert np.abs(one.embed(subset) - pipe.embed(subset)).max() < 1e-5
    long_text = "word " * 400
    one.count_tokens(["short", long_text])
    assert np.abs(one.embed(["short", long_text]) - pipe.embed(["short", long_text])).max() < 1e-5


def test_the_embedding_model_keeps_the_small_shape_cache(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """worker/pipelines.py EMBED_SHAPE_CACHE: with the generation model's 256 entries, varied embedding
    batches held ~110 MB more and kept growing."""
    seen: list[dict[str, Any]] = []
    real = ov.Core.compile_model

    def recording(self: ov.Core, model: Any, device: str = "CPU", config: dict[str, Any] | None = None) -> Any:
        seen.append(dict(config or {}))
        return real(self, model, device, config or {})

    monkeypatch.setattr(ov.Core, "compile_model", recording)
    embedder = TextEmbeddingEngine(Registry.load(settings).get("all-minilm-l6-v2"), ["CPU"], one_pass=True)
    assert embedder.one_pass
    assert TOKENIZER_CONFIG in seen  # the token counter, on one thread
    assert [c.get("CPU_RUNTIME_CACHE_CAPACITY") for c in seen if c and c != TOKENIZER_CONFIG] == [EMBED_SHAPE_CACHE]
    assert EMBED_SHAPE_CACHE < CPU_SHAPE_CACHE
