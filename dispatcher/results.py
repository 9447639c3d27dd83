"""What an embedding or a generation returns, in one shape per task wherever it is read.

A dispatcher call returns these objects, whether a worker or the cloud answered; `to_body()` is the
JSON body of the facade's `/embeddings` and `/inference` and also what a bulk-lane RQ job stores as its
result, so a backend reads a bulk result with `EmbedResult.from_body(job.return_value())`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

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

    def to_body(self, lists: bool = False) -> dict[str, Any]:
        """`lists`: vectors as nested lists (msgpack, for RQ), else the array itself (orjson writes it)."""
        tokens = sum(self.token_counts) if self.token_counts else None
        return {"embeddings": self.vectors.tolist() if lists else self.vectors, "model": self.model,
                "dim": int(self.vectors.shape[1]), "source": self.source, "device": self.device,
                "node_id": self.node_id, "token_counts": self.token_counts, "truncated": self.truncated,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "fallback_reason": self.fallback_reason, "timings": self.timings}

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> EmbedResult:
        return cls(np.asarray(body["embeddings"], dtype=np.float32), body["model"], body["source"],
                   body.get("device"), body.get("node_id"), body.get("token_counts"), body.get("truncated"),
                   body.get("timings") or {}, body.get("fallback_reason"))


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

    def to_body(self) -> dict[str, Any]:
        p, c = self.prompt_tokens, self.completion_tokens
        return {"text": self.text, "model": self.model, "source": self.source, "device": self.device,
                "node_id": self.node_id,
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": (p or 0) + (c or 0) or None},
                "finish_reason": self.finish_reason, "fallback_reason": self.fallback_reason, "timings": self.timings}

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> GenerateResult:
        usage = body.get("usage") or {}
        return cls(body["text"], body["model"], body["source"], body.get("device"), body.get("node_id"),
                   usage.get("prompt_tokens"), usage.get("completion_tokens"), body.get("timings") or {},
                   body.get("fallback_reason"), body.get("finish_reason"))


@dataclass
class StreamChunk:
    """A piece of generated text; the last one has `done=True` and the whole `result`."""

    delta: str
    done: bool = False
    result: GenerateResult | None = None
