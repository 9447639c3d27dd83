"""OpenAI-compatible endpoints (`/v1/embeddings`, `/v1/chat/completions`, `/v1/models`), so the
official `openai` client and tools built on it work unchanged against local workers.

Errors on these routes use OpenAI's shape (`{"error": {"message", "type", "code"}}`); see `api/app.py`.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from dispatcher.errors import InvalidInputError
from dispatcher.limits import Role
from dispatcher.results import StreamChunk

from .. import metrics
from ..auth import RESPONSES, AuthenticatedRoute, require_inference, require_models
from ..deps import Dispatcher
from ..responses import ORJSONResponse
from ..schemas import Deadline, JsonInt, OpenAIErrorResponse

# The openai client sends `Authorization: Bearer <api_key>`: an app key (NPU_API_KEYS), or an admin token.
router = APIRouter(route_class=AuthenticatedRoute, prefix="/v1", tags=["openai"], responses=RESPONSES)
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": OpenAIErrorResponse} for code in (404, 413, 422, 429, 503)}


# Strict, like the facade's own bodies: `"stream": "yes"` or `"max_tokens": "3"` is refused, not coerced,
# and an option this API does not implement (top_p, stop, tools, ...) is refused by name rather than
# silently ignored. `user` is accepted: OpenAI's end-user id, metadata that changes no answer.
STRICT = ConfigDict(extra="forbid", strict=True)


class EmbeddingRequest(BaseModel):
    model_config = STRICT
    input: str | list[str] = Field(description="A text or a list of texts (token arrays are not accepted).")
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: JsonInt | None = Field(None, description="Must equal the model's dimension if given.")
    user: str | None = Field(None, description="OpenAI's end-user id: accepted, changes nothing.")
    deadline_s: Deadline = None


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Role
    content: str


class ChatRequest(BaseModel):
    model_config = STRICT
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: JsonInt | None = None
    max_completion_tokens: JsonInt | None = Field(None, description="OpenAI's current name for max_tokens; "
                                                  "wins over it when both are given.")
    temperature: float | None = None
    deadline_s: Deadline = Field(None, description="Ours (the openai client: `extra_body`): see `/inference`.")
    stream: bool = False
    n: JsonInt = Field(1, ge=1, le=1, description="Only one choice per request.")
    user: str | None = Field(None, description="OpenAI's end-user id: accepted, changes nothing.")


@router.post("/embeddings", dependencies=[Depends(require_inference)], responses=ERRORS)
async def embeddings(body: EmbeddingRequest, dispatcher: Dispatcher) -> Any:
    texts = [body.input] if isinstance(body.input, str) else body.input
    started = time.perf_counter()
    result = await dispatcher.embed(texts, body.model, deadline_s=body.deadline_s)
    metrics.observe("/v1/embeddings", result.model, result.source, time.perf_counter() - started, result.timings,
                    result.fallback_reason)
    dim = int(result.vectors.shape[1])
    if body.dimensions is not None and body.dimensions != dim:
        raise InvalidInputError(f"{body.model} returns {dim} dimensions; it cannot return {body.dimensions}")
    if body.encoding_format == "base64":
        data: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in result.vectors]
    else:
        data = list(result.vectors)
    tokens = sum(result.token_counts) if result.token_counts else 0
    return ORJSONResponse({
        "object": "list", "model": result.model,
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(data)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }, headers={"X-NPU-Source": result.source})


@router.post("/chat/completions", dependencies=[Depends(require_inference)], responses={
    **ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "JSON, or events when `stream` is true"}})
async def chat_completions(body: ChatRequest, dispatcher: Dispatcher) -> Any:
    messages = [m.model_dump() for m in body.messages]
    started = time.perf_counter()
    chunks = dispatcher.stream(messages, body.model, max_tokens=_max_tokens(body),
                               temperature=body.temperature, deadline_s=body.deadline_s, deltas=body.stream)
    first = await anext(chunks)  # awaited here: a refused request is a plain JSON error with its status
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if not body.stream:
        while not first.done:
            first = await anext(chunks)
        result = first.result
        assert result is not None
        metrics.observe("/v1/chat/completions", result.model, result.source, time.perf_counter() - started,
                        result.timings, result.fallback_reason)
        return ORJSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": result.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": _finish(result.finish_reason)}],
            "usage": _usage(result.prompt_tokens, result.completion_tokens),
        }, headers={"X-NPU-Source": result.source})
    model = body.model or dispatcher.registry.default("generation")  # an empty name means the default model
    return StreamingResponse(_sse(first, chunks, completion_id, created, model, started),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _sse(first: StreamChunk, rest: AsyncIterator[StreamChunk], completion_id: str, created: int,
               model: str, started: float) -> AsyncIterator[bytes]:
    def event(delta: dict[str, str], finish: str | None, usage: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                 "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage:
            chunk["usage"] = usage
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    yield event({"role": "assistant", "content": ""}, None)
    chunk: StreamChunk | None = first
    while chunk is not None:
        if chunk.done and chunk.result:
            r = chunk.result
            metrics.observe("/v1/chat/completions", r.model, r.source, time.perf_counter() - started, r.timings,
                            r.fallback_reason)
            yield event({}, _finish(r.finish_reason), _usage(r.prompt_tokens, r.completion_tokens))
        elif chunk.delta:
            yield event({"content": chunk.delta}, None)
        chunk = await anext(rest, None)
    yield b"data: [DONE]\n\n"


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _usage(prompt_tokens: int | None, completion_tokens: int | None) -> dict[str, int]:
    p, c = prompt_tokens or 0, completion_tokens or 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


@router.get("/models", dependencies=[Depends(require_models)])
async def list_models(dispatcher: Dispatcher) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "npu-worker"}
                                        for name in dispatcher.registry.names]}


def _max_tokens(body: ChatRequest) -> int | None:
    """`max_completion_tokens` (OpenAI's current name) wins over `max_tokens`; a 0 is refused, not ignored."""
    return body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
