"""Weight precision: what an export for an NPU chooses, what a model directory holds, and whether an NPU
can run it.

GenAI's NPU guide ("OpenVINO GenAI on NPU"): LLMs for the NPU are exported with symmetric int4 weights,
ratio 1.0 (every eligible layer), group size 128 ("group quantization") for small models and channel-wise
(group size -1) for models above a few billion parameters. The NPU computes in fp16, so an embedding
model goes as fp16: it compiles with static shapes and keeps the float model's vectors (encoders of a few
hundred MB gain little from weight compression).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dispatcher.models import ModelSpec

CHANNEL_WISE_ABOVE = 4_000_000_000
"""Parameters above which an LLM for the NPU is compressed channel-wise rather than in groups of 128."""


@dataclass(frozen=True)
class Recipe:
    """Export options (optimum-intel's `--weight-format`, `--sym`, `--ratio`, `--group-size`) and the
    name the registry records for them."""

    precision: str
    bits: int | None = None
    sym: bool = False
    ratio: float = 1.0
    group_size: int | None = None
    dtype: str | None = None


def parameters(config: dict) -> int:
    """A decoder's parameter count from its config.json: embeddings plus ~12 h^2 per layer (attention and
    MLP), good to tell a 1B from a 7B model."""
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    inner = int(config.get("intermediate_size") or 4 * hidden)
    vocab = int(config.get("vocab_size") or 0)
    return vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * inner)


def npu_recipe(task: str, config: dict) -> Recipe:
    """What `npu-worker export --for npu` uses for a model of this task and config."""
    if task == "text-generation":
        if parameters(config) > CHANNEL_WISE_ABOVE:
            return Recipe("int4-sym-cw", bits=4, sym=True, ratio=1.0, group_size=-1)
        return Recipe("int4-sym-g128", bits=4, sym=True, ratio=1.0, group_size=128)
    return Recipe("fp16", dtype="fp16")


_WEIGHT_TYPES = ("i4", "u4", "i8", "u8", "f16", "bf16", "f32")


def detected(model_dir: Path) -> str:
    """The precision of an exported model's weights, read from its IR's constants (the most compressed
    type present wins: a model with int4 layers is an int4 model): `int4-sym`, `int4-asym`, `int8-sym`,
    `int8-asym`, `fp16` or `fp32`; `unknown` without an IR."""
    xml = model_dir / "openvino_model.xml"
    if not xml.is_file():
        return "unknown"
    types = Counter(re.findall(r'element_type="([a-z0-9]+)"', xml.read_text(errors="replace")))
    for kind, name in (("i4", "int4-sym"), ("u4", "int4-asym"), ("i8", "int8-sym"), ("u8", "int8-asym")):
        if types.get(kind):
            return name
    return "fp16" if types.get("f16") or types.get("bf16") else "fp32"


def read_config(source: str) -> dict:
    """The source's config.json (a local directory), else {} (a hub id: the exporter reads it itself)."""
    path = Path(source) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def npu_warning(spec: ModelSpec, device: str) -> str | None:
    """One line when `spec` is loaded on an NPU with weights GenAI's NPU guide does not expect, else None."""
    if not device.upper().startswith("NPU"):
        return None
    how = f"re-export it with `npu-worker export --for npu` (recorded precision: {spec.precision or 'none'})"
    if spec.precision is None:
        return f"{spec.name}: loaded on {device} with no recorded precision; if it fails or is slow, {how}"
    if spec.task == "generation" and not spec.precision.startswith("int4-sym"):
        return (f"{spec.name}: loaded on {device}, but GenAI's NPU pipeline expects symmetric int4 weights; "
                f"{how}")
    if spec.task == "embedding" and spec.precision.startswith("int4"):
        return f"{spec.name}: loaded on {device} with int4 weights, which the NPU does not run well; {how}"
    return None
