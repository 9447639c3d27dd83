"""Small embedding batches are tokenized by the model's tokenizer.json (Hugging Face `tokenizers`), larger ones
by its OpenVINO tokenizer: the two must give the model the same input, or the fast one is not used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dispatcher.models import Registry
from dispatcher.settings import Settings
from worker.pipelines import FAST_TOKENIZER_TEXTS, FastTokenizer, TextEmbeddingEngine

SENTENCES = Path(__file__).parents[2] / "scripts" / "data" / "sentences.txt"
ODD = ["", " ", "a\tb\nc", "naïve café — 東京 🤖 \u200b", "Ünïcödé ÅÇ don't", "word " * 700, "A" * 3000]


@pytest.fixture(scope="module")
def engine() -> TextEmbeddingEngine:
    return TextEmbeddingEngine(Registry.load(Settings()).get("all-minilm-l6-v2"), ["CPU"])


def test_both_tokenizers_give_the_same_arrays(engine: TextEmbeddingEngine) -> None:
    """Every corpus sentence and odd input (empty, whitespace, accents, CJK, emoji, over-long), alone and in
    a batch: the same ids, mask and type ids, padded the same way."""
    fast = engine._fast
    assert fast is not None
    texts = SENTENCES.read_text().splitlines() + ODD
    for text in texts:
        ours, theirs = fast([text]), engine._ov_tokens([text])
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            assert ours[name].tolist() == theirs[name].tolist(), (name, text[:40])
    batch = [texts[0], ODD[5], ODD[3], texts[7]]
    ours, theirs = fast(batch), engine._ov_tokens(batch)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert np.array_equal(ours[name], theirs[name]), name


def test_small_batches_go_through_the_fast_tokenizer_and_embed_alike(engine: TextEmbeddingEngine,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to FAST_TOKENIZER_TEXTS texts the OpenVINO tokenizer is not called; the counts and vectors are those of
    the OpenVINO tokenizer's path."""
    texts = SENTENCES.read_text().splitlines()[:FAST_TOKENIZER_TEXTS]
    slow_counts = [int(n) for n in engine._ov_tokens(texts)["attention_mask"].sum(axis=1)]
    slow_vectors = TextEmbeddingEngine(engine.spec, ["CPU"], one_pass=False).embed(texts)
    calls: list[int] = []
    real = engine._ov_tokens
    monkeypatch.setattr(engine, "_ov_tokens", lambda t: calls.append(len(t)) or real(t))
    assert engine.count_tokens(texts) == slow_counts
    assert np.abs(engine.embed(texts) - slow_vectors).max() < 1e-5
    assert calls == []
    engine.count_tokens(texts + ["one more"])  # past the cap: the OpenVINO tokenizer
    assert calls == [FAST_TOKENIZER_TEXTS + 1]


def test_a_tokenizer_json_that_disagrees_is_not_used(engine: TextEmbeddingEngine, tmp_path: Path) -> None:
    """A model directory whose tokenizer.json is not what its OpenVINO tokenizer was made from (two vocabulary
    ids swapped here) keeps the OpenVINO tokenizer for every batch."""
    data = json.loads((engine.spec.path / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["hello"], vocab["world"] = vocab["world"], vocab["hello"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    assert FastTokenizer.load(tmp_path, engine._ov_tokens) is None
    assert FastTokenizer.load(engine.spec.path, engine._ov_tokens) is not None
    assert FastTokenizer.load(tmp_path / "missing", engine._ov_tokens) is None
