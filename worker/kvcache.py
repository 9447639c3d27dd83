"""The generation engine's KV cache: sized from the model's shape and the work it admits, and accounted per request.

The engine (`ContinuousBatchingPipeline`) takes the cache in blocks of `BLOCK_TOKENS` tokens and grows it on
demand up to what it is given, so a fixed size made a small model's worker drift towards that size of RSS
whatever the traffic needed. Here the default is what the worker can actually be asked to hold at once:
`max_sequences` generations of `max_input_tokens + max_new_tokens` tokens each. An operator may set a
size instead (`NPU_KV_CACHE_MB`, or `kv_cache_mb` per model in the registry).

Every admitted request reserves its worst case (prompt + max_tokens, rounded up to blocks) before it
enters the engine, so the engine never runs out of blocks mid-generation (which it handles by evicting
and recomputing sequences, or by ignoring a request). A request that could never fit is refused (429);
one that does not fit next to the running ones waits in the worker until they end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import openvino as ov

BLOCK_TOKENS = 32
"""Tokens per KV-cache block of OpenVINO's CPU plugin (a sequence takes its second block at its 33rd token)."""
ELEMENT_BYTES = {"u8": 1, "i8": 1, "u4": 1, "f16": 2, "bf16": 2, "f32": 4}
"""Bytes per cached element by KV_CACHE_PRECISION. u4 is counted as a byte: a safe over-estimate."""
QUANT_BYTES = 8
"""A quantized (u8/i8/u4) cache also keeps a scale and a zero point (f32 each): for values per head and token,
for keys (quantized by channel) per head, channel and block; with these the estimate matches the engine's
own figure."""


@dataclass(frozen=True)
class ModelShape:
    """What one token costs in the KV cache: per layer, a key and a value of `kv_heads x head_dim`."""

    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def read(cls, model_dir: Path) -> ModelShape:
        """From the stateful OpenVINO model's KV variables (`past_key_values.<layer>.key|value`,
        shaped [batch, kv_heads, tokens, head_dim]); no config.json is needed (GGUF-built models have none)."""
        model = ov.Core().read_model(model_dir / "openvino_model.xml")
        shapes = [v.get_info().data_shape for v in model.get_variables()
                  if v.get_info().variable_id.startswith("past_key_values.")]
        if not shapes:
            raise ValueError(f"{model_dir}: no past_key_values variables; not a stateful generation model")
        shape = shapes[0]
        if shape.rank.get_length() != 4 or not (shape[1].is_static and shape[3].is_static):
            raise ValueError(f"{model_dir}: unexpected KV variable shape {shape}")
        return cls(layers=len(shapes) // 2, kv_heads=shape[1].get_length(), head_dim=shape[3].get_length())

    def bytes_per_token(self, precision: str) -> int:
        element = ELEMENT_BYTES.get(precision, 2)
        per_head = 2 * self.head_dim * element
        if element == 1:
            per_head += QUANT_BYTES + QUANT_BYTES * self.head_dim // BLOCK_TOKENS
        return self.layers * self.kv_heads * per_head


def cache_precision(device: str) -> str:
    """The device's KV-cache element type (the CPU plugin's default is u8); f16 when it does not say."""
    try:
        precision = ov.Core().get_property(device.split(":")[0].split(",")[0], "KV_CACHE_PRECISION")
        return str(precision.to_string() if isinstance(precision, ov.Type) else precision).lower()
    except Exception:  # a device without the property (or absent): assume half precision
        return "f16"


@dataclass(frozen=True)
class CachePlan:
    """How many blocks the engine gets, and why."""

    blocks: int
    bytes_per_token: int
    source: str
    """"computed" (from the work admitted) or "setting" (NPU_KV_CACHE_MB / the registry's kv_cache_mb)."""

    @property
    def tokens(self) -> int:
        return self.blocks * BLOCK_TOKENS

    @property
    def estimated_bytes(self) -> int:
        return self.tokens * self.bytes_per_token


def plan(shape: ModelShape, precision: str, max_sequences: int, max_context: int,
         cache_mb: int | None) -> CachePlan:
    """`cache_mb` if given, else room for `max_sequences` sequences of `max_context` tokens each."""
    per_token = shape.bytes_per_token(precision)
    if cache_mb:
        return CachePlan(max(1, cache_mb * 2**20 // (per_token * BLOCK_TOKENS)), per_token, "setting")
    return CachePlan(max_sequences * blocks_for(max_context), per_token, "computed")


def blocks_for(tokens: int) -> int:
    return max(1, math.ceil(tokens / BLOCK_TOKENS))
