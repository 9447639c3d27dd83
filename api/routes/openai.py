"""OpenAI-compatible endpoints (`/v1/embeddings`, `/v1/chat/completions`, `/v1/models`), so the
official `openai` client and tools built on it work unchanged against local workers.

Errors on these routes use OpenAI's shape (`{"error": {"message", "type", "code"}}`); see `api/app.py`.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from dispatcher import apps
from dispatcher.errors import InvalidInputError
from dispatcher.limits import MAX_STOP, MAX_STOP_CHARS, ChatRole
from dispatcher.models import ModelSpec
from dispatcher.results import EmbedResult, GenerateResult, StreamChunk

from .. import metrics
from ..auth import RESPONSES, AuthenticatedRoute, require_inference, require_models
from ..deps import AsyncDispatcherDep
from ..disconnect import ClientGone, gone, while_connected
from ..responses import ORJSONResponse
from ..schemas import Deadline, JsonInt, OpenAIErrorResponse, Stop
from .inference import stream_result

# The openai client sends `Authorization: Bearer <api_key>`: an app key (NPU_API_KEYS), or an admin token.
router = APIRouter(route_class=AuthenticatedRoute, prefix="/v1", tags=["openai"], responses=RESPONSES)
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": OpenAIErrorResponse} for code in (400, 404, 413, 429, 503)}
STARTED = int(time.time())


# Strict, like the facade's own bodies: `"stream": "yes"` or `"max_tokens": "3"` is refused, not coerced,
# and an option this API does not implement (top_p, tools, ...) is refused by name rather than
# silently ignored. `user` is accepted: OpenAI's end-user id, metadata that changes no answer.
STRICT = ConfigDict(extra="forbid", strict=True)


ServiceTier = Annotated[Literal["auto", "default", "flex", "priority"] | None, Field(
    None, description="`flex`: served after the app's other work; `auto`, `default` (and `priority`, which "
    "cannot go above an app's share): as usual.")]


def tier(service_tier: str | None) -> None:
    """OpenAI's service tier as the priority of this request's jobs inside its app."""
    apps.priority.set("low" if service_tier == "flex" else "normal")


class OpenAIEmbeddingsRequest(BaseModel):
    model_config = STRICT
    input: str | list[str] = Field(description="A text or a list of texts (token arrays are not accepted).")
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: JsonInt | None = Field(None, description="Must equal the model's dimension if given.")
    user: str | None = Field(None, description="OpenAI's end-user id: accepted, changes nothing.")
    service_tier: ServiceTier = None
    deadline_s: Deadline = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"] = Field(description="Only text parts: these models read no images or audio.")
    text: str


class ChatMessage(BaseModel):
    model_config = STRICT
    role: ChatRole
    content: str | Annotated[list[TextPart], Field(min_length=1)] = Field(
        description="A string, or a list of text parts (joined by newlines).")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = Field(False, description="Send one more chunk before `[DONE]`, with empty `choices` "
                                "and the request's `usage`; every other chunk has `usage: null`.")


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
    stream_options: StreamOptions | None = None
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOP)] | None = Field(
        None, description=f"Up to {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters; the text ends "
        "before the first.")
    n: JsonInt = Field(1, ge=1, le=1, description="Only one choice per request.")
    user: str | None = Field(None, description="OpenAI's end-user id: accepted, changes nothing.")
    service_tier: ServiceTier = None

    def stops(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop or None


@router.post("/embeddings", dependencies=[Depends(require_inference)], responses=ERRORS)
async def embeddings(body: OpenAIEmbeddingsRequest, request: Request, dispatcher: AsyncDispatcherDep) -> Any:
    tier(body.service_tier)
    texts = [body.input] if isinstance(body.input, str) else body.input
    started = time.perf_counter()
    try:
        result = await while_connected(request, lambda: dispatcher.embed(texts, body.model, deadline_s=body.deadline_s))
    except ClientGone:
        return gone()
    metrics.observe("/v1/embeddings", result, time.perf_counter() - started)
    return ORJSONResponse(embedding_body(body, result), headers={"X-NPU-Source": result.source})


def embedding_body(body: OpenAIEmbeddingsRequest, result: EmbedResult) -> dict[str, Any]:
    """The `/v1/embeddings` answer to `body` (also a batch line's response body)."""
    dim = int(result.vectors.shape[1])
    if body.dimensions is not None and body.dimensions != dim:
        raise InvalidInputError(f"{body.model} returns {dim} dimensions; it cannot return {body.dimensions}",
                                param="dimensions")
    if body.encoding_format == "base64":
        data: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in result.vectors]
    else:
        data = list(result.vectors)
    tokens = sum(result.token_counts) if result.token_counts else 0
    return {"object": "list", "model": result.model,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(data)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


@router.post("/chat/completions", dependencies=[Depends(require_inference)], responses={
    **ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "JSON, or events when `stream` is true"}})
async def chat_completions(body: ChatRequest, request: Request, dispatcher: AsyncDispatcherDep) -> Any:
    tier(body.service_tier)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    started = time.perf_counter()
    chunks = dispatcher.stream(messages, body.model, max_tokens=max_tokens(body), temperature=body.temperature,
                               deadline_s=body.deadline_s, deltas=body.stream, stop=body.stops())
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    try:
        if not body.stream:
            result = await while_connected(request, lambda: stream_result(chunks))
        else:  # the first chunk awaited here: a refused request is a plain JSON error with its status
            first = await while_connected(request, lambda: anext(chunks))
    except ClientGone:
        return gone()
    if not body.stream:
        metrics.observe("/v1/chat/completions", result, time.perf_counter() - started)
        return ORJSONResponse(chat_body(result, completion_id, created), headers={"X-NPU-Source": result.source})
    model = body.model or dispatcher.registry.default("generation")  # an empty name means the default model
    usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(_sse(first, chunks, completion_id, created, model, started, usage),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def chat_body(result: GenerateResult, completion_id: str, created: int) -> dict[str, Any]:
    """The non-streaming `/v1/chat/completions` answer (also a batch line's response body)."""
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": result.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": _finish(result.finish_reason)}],
            "usage": _usage(result.prompt_tokens, result.completion_tokens)}


async def _sse(first: StreamChunk, rest: AsyncIterator[StreamChunk], completion_id: str, created: int,
               model: str, started: float, include_usage: bool) -> AsyncIterator[bytes]:
    """OpenAI's chunks: with `stream_options.include_usage`, every chunk has `usage: null` and one more,
    with no choices, carries the usage; without it, no chunk has a `usage` field."""

    def event(delta: dict[str, str] | None, finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                 "model": model, "choices": [] if delta is None else
                                 [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if include_usage:
            chunk["usage"] = usage
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    yield event({"role": "assistant", "content": ""}, None)
    chunk: StreamChunk | None = first
    while chunk is not None:
        if chunk.done and chunk.result:
            r = chunk.result
            metrics.observe("/v1/chat/completions", r, time.perf_counter() - started)
            yield event({}, _finish(r.finish_reason))
            if include_usage:
                yield event(None, usage=_usage(r.prompt_tokens, r.completion_tokens))
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
async def list_models(dispatcher: AsyncDispatcherDep) -> dict[str, Any]:
    return {"object": "list", "data": [_model(dispatcher.registry.specs[name]) for name in dispatcher.registry.names]}


@router.get("/models/{model_id}", dependencies=[Depends(require_models)],
            responses={404: {"model": OpenAIErrorResponse}})
async def get_model(model_id: str, dispatcher: AsyncDispatcherDep) -> dict[str, Any]:
    return _model(dispatcher.registry.get(model_id))  # 404 model_not_found for an unknown one


def _model(spec: ModelSpec) -> dict[str, Any]:
    """`created`: when the model's files were prepared here (their directory's time), else this process's start."""
    try:
        created = int(Path(spec.path).stat().st_mtime) if spec.path else STARTED
    except OSError:
        created = STARTED
    return {"id": spec.name, "object": "model", "created": created, "owned_by": "npu-worker"}


def max_tokens(body: ChatRequest) -> int | None:
    """`max_completion_tokens` (OpenAI's current name) wins over `max_tokens`; a 0 is refused, not ignored."""
    return body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
