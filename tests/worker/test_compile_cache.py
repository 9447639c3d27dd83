"""The compiled-model cache (NPU_CACHE_DIR), the device report and the NPU-readiness check, on real OpenVINO."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openvino as ov
import pytest

from dispatcher.models import ModelSpec, Registry
from dispatcher.protocol import Heartbeat, Placement
from dispatcher.settings import Settings
from tests.conftest import ROOT
from worker import engines
from worker.devices import refusals
from worker.precision import detected, npu_recipe, npu_warning


def blobs(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*.blob")}


def test_cache_setting_defaults_under_the_state_dir_moves_and_turns_off(tmp_path: Path) -> None:
    assert Settings(state_dir=tmp_path).compile_cache == tmp_path / "cache"
    assert Settings(state_dir=tmp_path, cache_dir=str(tmp_path / "elsewhere")).compile_cache == tmp_path / "elsewhere"
    assert Settings(state_dir=tmp_path, cache_dir="off").compile_cache is None
    assert Settings(state_dir=tmp_path, cache_dir="").compile_cache is None


def test_every_model_compiles_into_the_cache_and_a_second_load_takes_it(settings: Settings, tmp_path: Path) -> None:
    """Both bundled models through `engines.build` (what a worker runs): blobs appear under <cache>/CPU; a
    second build of the embedding model adds none and rewrites none (OpenVINO rewrites a blob it could not use).
    The generation model's blob is written, but on CPU continuous batching rewrites it at every load
    (docs/operating.md: measured, a cache miss each time), so only its presence is asserted."""
    cached = settings.model_copy(update={"cache_dir": str(tmp_path / "cache"), "devices": "CPU"})
    registry = Registry.load(settings)
    engines.build(registry.get("all-minilm-l6-v2"), cached)
    embedding = blobs(tmp_path / "cache")
    assert len(embedding) == 3 and all(name.startswith("CPU/") for name in embedding)  # pipeline, tokenizer, one pass
    engines.build(registry.get("all-minilm-l6-v2"), cached)
    assert blobs(tmp_path / "cache") == embedding
    engines.build(registry.get("smollm2-135m-instruct"), cached)
    assert len(blobs(tmp_path / "cache")) == 4


def test_no_cache_when_turned_off(settings: Settings, tmp_path: Path) -> None:
    off = settings.model_copy(update={"cache_dir": "off", "state_dir": tmp_path, "devices": "CPU"})
    engines.build(Registry.load(settings).get("all-minilm-l6-v2"), off)
    assert not list(tmp_path.rglob("*.blob"))


def test_refusals_of_earlier_devices_are_kept(settings: Settings) -> None:
    missing = [d for d in ("NPU", "GPU") if d not in ov.Core().available_devices]
    if not missing:
        pytest.skip("this machine has both NPU and GPU")
    spec = Registry.load(settings).get("all-minilm-l6-v2")
    engine = engines.build(spec, settings.model_copy(update={"devices": ",".join(missing + ["CPU"])}))
    assert engine.device == "CPU"
    refused = refusals(spec.name)
    assert list(refused) == missing and all(refused.values())
    assert not any("/" in why.split('"')[1] for why in refused.values() if '"' in why)  # no install paths
    assert engines.engine_name(engine) == "text-embedding"


def test_npu_readiness_warns_once_per_load_for_weights_the_npu_guide_does_not_ask_for(tmp_path: Path) -> None:
    def spec(task: str, precision: str | None) -> ModelSpec:
        return ModelSpec(name="m", task=task, path=tmp_path, precision=precision)  # type: ignore[arg-type]

    assert npu_warning(spec("generation", "int4-asym"), "NPU") is not None
    assert "symmetric int4" in (npu_warning(spec("generation", "int8-sym"), "NPU") or "")
    assert "--for npu" in (npu_warning(spec("generation", None), "NPU") or "")
    assert npu_warning(spec("generation", "int4-sym-g128"), "NPU") is None
    assert npu_warning(spec("generation", "int4-sym-cw"), "NPU.0") is None
    assert npu_warning(spec("generation", "int4-asym"), "CPU") is None  # only an NPU load is checked
    assert npu_warning(spec("embedding", "fp16"), "NPU") is None
    assert npu_warning(spec("embedding", "int4-sym"), "NPU") is not None


def test_npu_recipe_follows_the_genai_npu_guide() -> None:
    small = {"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536, "vocab_size": 49152}
    large = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008, "vocab_size": 32000}
    assert npu_recipe("text-generation", small).precision == "int4-sym-g128"
    assert (npu_recipe("text-generation", small).bits, npu_recipe("text-generation", small).sym) == (4, True)
    assert npu_recipe("text-generation", large).group_size == -1
    assert npu_recipe("feature-extraction", small).precision == "fp16"


def test_bundled_precisions_are_what_their_weights_hold(settings: Settings) -> None:
    registry = Registry.load(settings)
    for name in registry.names:
        assert registry.get(name).precision == detected(registry.get(name).path), name


def test_devices_on_a_cpu_only_machine(settings: Settings, tmp_path: Path) -> None:
    """`npu-worker devices --json`: without an NPU it says so, lists the CPU by its full name, and every bundled
    model on CPU with the NPU's and GPU's refusals."""
    if any(d.startswith(("NPU", "GPU")) for d in ov.Core().available_devices):
        pytest.skip("this machine has an accelerator")
    env = {"NPU_STATE_DIR": str(settings.state_dir), "NPU_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "npu_worker", "devices", "--json"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["no_npu"].startswith("no NPU found:") and report["no_npu"].endswith("models run on CPU")
    cpu = next(d for d in report["devices"] if d["device"] == "CPU")
    assert cpu["full_name"] == ov.Core().get_property("CPU", "FULL_DEVICE_NAME") and cpu["memory_bytes"] is None
    models = {m["model"]: m for m in report["models"]}
    assert set(models) == set(Registry.load(settings).names)
    for m in models.values():
        assert m["device"] == "CPU" and list(m["refused"]) == ["NPU", "GPU"], m
    assert models["smollm2-135m-instruct"]["engine"] == "continuous-batching"
    assert list((tmp_path / "cache" / "CPU").glob("*.blob"))  # the dry compile went through the cache
    text = subprocess.run([sys.executable, "-m", "npu_worker", "devices", "--no-compile"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert "no NPU found" in text.stdout and cpu["full_name"] in text.stdout


def test_older_heartbeats_parse_and_new_ones_carry_placements() -> None:
    old = {"worker_id": "w", "node_id": "n", "pid": 1, "started": 0.0, "at": 0.0, "models": {"m": "cpu"},
           "devices": {"m": "CPU"}, "max_concurrent": 1, "memory_gb": 1.0, "queue_depth": 0, "queue_depths": {},
           "running": 0, "utilization": 0.0, "busy_fraction": 0.0, "counters": {}}
    assert Heartbeat.model_validate(old).placements is None
    new = Heartbeat.model_validate(old | {"placements": {"m": {"device": "CPU", "engine": "serial",
                                                                "refused": {"NPU": "no device"}}}})
    assert new.placements == {"m": Placement(device="CPU", engine="serial", refused={"NPU": "no device"})}


def test_refusals_of_a_chain_tried_in_runs_are_reported_together() -> None:
    """An engine table may try NPU with one engine and then GPU,CPU with another: the device the model lands on
    is reported with every earlier refusal, the first run's too."""
    from worker.devices import first_that_compiles

    def build(device: str) -> str:
        if device != "CPU":
            raise RuntimeError(f"src/plugin.cpp:1:\n{device} is not here")
        return "built"

    with pytest.raises(RuntimeError):
        first_that_compiles(build, ["NPU"], "runs-model")
    assert first_that_compiles(build, ["GPU", "CPU"], "runs-model") == ("built", "CPU")
    assert refusals("runs-model") == {"NPU": "NPU is not here", "GPU": "GPU is not here"}
    assert first_that_compiles(build, ["CPU"], "runs-model") == ("built", "CPU")
    assert refusals("runs-model") == {}  # a later load reports its own chain only


def test_compile_for_warms_the_cache_and_needs_it(settings: Settings, tmp_path: Path) -> None:
    from worker.prepare import compile_for

    cached = settings.model_copy(update={"cache_dir": str(tmp_path / "cache")})
    assert compile_for(cached, ["all-minilm-l6-v2"], "NPU,CPU") == {"all-minilm-l6-v2": "CPU"}
    assert len(list((tmp_path / "cache" / "CPU").glob("*.blob"))) == 3
    with pytest.raises(ValueError, match="cache is off"):
        compile_for(settings.model_copy(update={"cache_dir": "off"}), ["all-minilm-l6-v2"], "CPU")
