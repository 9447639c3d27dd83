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
from dispatcher.settings import Settings, get_settings

from .devices import device_type, parse_chain
from .generation import Generated, Generator
from .pipelines import Embedder


def embed_result(pipeline: Embedder, vectors: np.ndarray, counts: list[int], truncated: list[bool],
                 node_id: str) -> dict[str, Any]:
    """The body `/embeddings` answers with (`EmbedResult.to_body`), vectors as lists for msgpack."""
    return EmbedResult(vectors, pipeline.spec.name, "npu", device_type(pipeline.device), node_id, counts,
                       truncated).to_body(lists=True)


def generate_result(pipeline: Generator, result: Generated, node_id: str) -> dict[str, Any]:
    """The body `/inference` answers with (`GenerateResult.to_body`)."""
    return GenerateResult(result.text, pipeline.spec.name, "npu", device_type(pipeline.device), node_id,
                          result.prompt_tokens, result.completion_tokens,
                          {"inference_ms": round(result.duration_ms, 3), "ttft_ms": round(result.ttft_ms, 3)},
                          finish_reason=result.finish_reason).to_body()


def default_max_tokens(s: Settings) -> int:
    """max_tokens of a generation job that does not say: the dispatcher's default, so both lanes agree."""
    return min(s.default_new_tokens, s.max_new_tokens)


@cache
def _pipeline(model: str) -> Embedder | Generator:
    s = get_settings()
    spec, chain = Registry.load(s).get(model), parse_chain(s.devices)
    if spec.task == "embedding":
        return Embedder(spec, chain, s.inference_threads, s.embed_one_pass)
    return Generator(spec, chain, s.max_generations, s.inference_threads, default_max_tokens(s), s.max_new_tokens,
                     s.kv_cache_mb)


def embed(texts: list[str], model: str, truncate: bool = False) -> dict[str, Any]:
    pipeline = _pipeline(model)
    assert isinstance(pipeline, Embedder), f"{model} is not an embedding model"
    counts, truncated = pipeline.check(texts, truncate, max_total=get_settings().max_request_tokens)
    return embed_result(pipeline, pipeline.embed(texts), counts, truncated, get_settings().node_id)


def generate(prompt: Prompt, model: str, max_tokens: int | None = None,
             temperature: float | None = None) -> dict[str, Any]:
    pipeline = _pipeline(model)
    assert isinstance(pipeline, Generator), f"{model} is not a generation model"
    return generate_result(pipeline, pipeline.generate(prompt, max_tokens, temperature), get_settings().node_id)
