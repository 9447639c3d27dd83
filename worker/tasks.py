"""The bulk lane's RQ functions, and the result shapes both lanes share.

Backends enqueue these by name (`dispatcher.protocol.EMBED_TASK`), so they need no OpenVINO. The
npu-worker process recognises them and runs many jobs in one inference; a plain `rq worker` with
the msgpack serializer can also run them, one at a time, loading the model on first use.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from dispatcher.models import Registry
from dispatcher.protocol import Prompt
from dispatcher.results import EmbedResult, GenerateResult
from dispatcher.settings import WorkerSettings

from . import engines
from .devices import device_type
from .generation import Generated


def embed_result(engine: engines.EmbeddingEngine, vectors: np.ndarray, counts: list[int], truncated: list[bool],
                 node_id: str) -> dict[str, Any]:
    """The body `/embeddings` answers with (`EmbedResult.to_body`), vectors as lists for msgpack."""
    return EmbedResult(vectors, engine.spec.name, "npu", device_type(engine.device), node_id, counts,
                       truncated).to_body(lists=True)


def generate_result(engine: engines.GenerationEngine, result: Generated, node_id: str) -> dict[str, Any]:
    """The body `/inference` answers with (`GenerateResult.to_body`)."""
    return GenerateResult(result.text, engine.spec.name, "npu", device_type(engine.device), node_id,
                          result.prompt_tokens, result.completion_tokens,
                          {"inference_ms": round(result.duration_ms, 3), "ttft_ms": round(result.ttft_ms, 3)},
                          finish_reason=result.finish_reason).to_body()


@cache
def _settings() -> WorkerSettings:
    """A plain `rq worker` calls these functions by name, with nothing to hand them: its settings are read
    from its environment once, here (the npu-worker process never calls them)."""
    return WorkerSettings()


@cache
def _engine(model: str) -> engines.Engine:
    s = _settings()
    return engines.build(Registry.load(s).get(model), s)


def embed(texts: list[str], model: str, truncate: bool = False) -> dict[str, Any]:
    engine = _engine(model)
    if engine.task != "embedding":
        raise ValueError(f"{model} is not an embedding model")
    counts, truncated = engine.check(texts, truncate, max_total=_settings().max_request_tokens)
    return embed_result(engine, engine.embed(texts), counts, truncated, _settings().node_id)


def generate(prompt: Prompt, model: str, max_tokens: int | None = None,
             temperature: float | None = None) -> dict[str, Any]:
    engine = _engine(model)
    if engine.task != "generation":
        raise ValueError(f"{model} is not a generation model")
    return generate_result(engine, engine.generate(prompt, max_tokens, temperature), _settings().node_id)
