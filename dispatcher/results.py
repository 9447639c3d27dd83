"""What a dispatcher call returns: the same shapes whether a worker or the cloud answered."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass
class EmbedResult:
    vectors: np.ndarray
    """float32 array, one row per text, in request order."""
    model: str
    source: Literal["npu", "cloud"]
    device: str | None = None
    node_id: str | None = None
    token_counts: list[int] | None = None
    truncated: list[bool] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    fallback_reason: str | None = None


@dataclass
class GenerateResult:
    text: str
    model: str
    source: Literal["npu", "cloud"]
    device: str | None = None
    node_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    fallback_reason: str | None = None
    finish_reason: str | None = None


@dataclass
class StreamChunk:
    """A piece of generated text; the last one has `done=True` and the whole `result`."""

    delta: str
    done: bool = False
    result: GenerateResult | None = None
