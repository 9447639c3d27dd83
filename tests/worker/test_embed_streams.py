"""The one-pass embedding model on several streams (NPU_EMBED_STREAMS): a batch split between them gives the
vectors one inference gives, in order; 1 stream is the LATENCY configuration of before."""

from __future__ import annotations

import numpy as np
import pytest

from dispatcher.models import Registry
from dispatcher.settings import Settings, WorkerSettings
from worker.engines import build
from worker.pipelines import TextEmbeddingEngine, embed_streams, split


def test_split_is_contiguous_and_even() -> None:
    assert split(1, 2) == [1]
    assert split(2, 2) == [1, 1]
    assert split(3, 2) == [2, 1]
    assert split(17, 2) == [9, 8]
    assert split(32, 2) == [16, 16]
    assert split(7, 3) == [3, 2, 2]
    assert split(5, 1) == [5]


def test_default_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert embed_streams() == 2
    assert embed_streams(threads=1) == 1  # threads capped: several workers share the cores, as before
    assert embed_streams(1) == 1 and embed_streams(3, threads=1) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert embed_streams() == 1


@pytest.fixture(scope="module")
def engines(settings: Settings) -> tuple[TextEmbeddingEngine, TextEmbeddingEngine]:
    spec = Registry.load(settings).get("all-minilm-l6-v2")
    return TextEmbeddingEngine(spec, ["CPU"], streams=1), TextEmbeddingEngine(spec, ["CPU"], streams=2)


@pytest.mark.parametrize("size", [1, 2, 3, 17, 32])
def test_split_batches_give_the_vectors_of_one_inference(
        engines: tuple[TextEmbeddingEngine, TextEmbeddingEngine], size: int) -> None:
    one, two = engines
    assert one.streams == 1 and two.streams == 2
    # mixed lengths, so the slices are trimmed to different widths
    words = ["a", "man", "is", "playing", "a", "guitar", "on", "the", "stage", "tonight", "while", "the",
             "crowd", "sings", "along"]
    texts = [" ".join(words[:1 + (7 * i) % len(words)]) + f" {i}" for i in range(size)]
    single, parallel = one.embed(texts), two.embed(texts)
    assert parallel.shape == single.shape == (size, 384) and parallel.dtype == np.float32
    assert np.abs(parallel - single).max() < 1e-5
    for row, text in enumerate(texts):  # in order: each row is its own text's vector
        assert np.abs(two.embed([text])[0] - single[row]).max() < 1e-5
    # after a count of a larger batch (as the worker does), a subset reuses its rows
    two.count_tokens(texts + ["never embedded"])
    assert np.abs(two.embed(texts[::-1]) - single[::-1]).max() < 1e-5


def test_one_stream_is_the_latency_configuration(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPU_EMBED_STREAMS", "1")
    s = WorkerSettings(redis_url=settings.redis_url, key_prefix=settings.key_prefix)
    assert s.embed_streams == 1
    engine = build(Registry.load(settings).get("all-minilm-l6-v2"), s)
    assert isinstance(engine, TextEmbeddingEngine) and engine._model is not None
    assert engine.streams == 1
    assert str(engine._model.get_property("PERFORMANCE_HINT")) == "LATENCY"
    assert int(engine._model.get_property("NUM_STREAMS")) == 1
    # every thread on the one inference, as before the setting existed
    threads = int(engine._model.get_property("INFERENCE_NUM_THREADS"))
    monkeypatch.delenv("NPU_EMBED_STREAMS")
    auto = WorkerSettings(redis_url=settings.redis_url, key_prefix=settings.key_prefix)
    assert auto.embed_streams is None
    default = build(Registry.load(settings).get("all-minilm-l6-v2"), auto)
    assert isinstance(default, TextEmbeddingEngine) and default._model is not None
    expected = embed_streams()
    assert default.streams == expected
    assert int(default._model.get_property("NUM_STREAMS")) == expected
    if expected > 1:
        assert str(default._model.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
        assert int(default._model.get_property("INFERENCE_NUM_THREADS")) == expected <= threads
