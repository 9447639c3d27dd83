"""`POST /inference` (seed contract): a prompt in, generated text out; `"stream": true` for server-sent events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError

from dispatcher import apps
from dispatcher.errors import ErrorCode, NPUError
from dispatcher.results import GenerateResult, StreamChunk

from .. import metrics
from ..auth import RESPONSES, AuthenticatedRoute, require_inference
from ..deps import AsyncDispatcherDep
from ..disconnect import ClientGone, gone, while_connected
from ..responses import ORJSONResponse
from ..schemas import InferenceRequest, InferenceResponse
from .embeddings import ERRORS

router = APIRouter(route_class=AuthenticatedRoute, tags=["inference"], dependencies=[Depends(require_inference)],
                   responses=RESPONSES)


async def _events(first: StreamChunk, rest: AsyncIterator[StreamChunk], started: float) -> AsyncIterator[bytes]:
    """Events of a started stream. A failure after the 200 went out (the worker died mid-text, Redis
    vanished) ends the stream with an error event rather than a cut connection."""
    chunk: StreamChunk | None = first
    try:
        while chunk is not None:
            if chunk.done and chunk.result:
                r = chunk.result
                metrics.observe("/inference", r, time.perf_counter() - started)
                yield b"data: " + orjson.dumps({"done": True, **r.to_body()}) + b"\n\n"
            elif chunk.delta:
                yield b"data: " + orjson.dumps({"delta": chunk.delta}) + b"\n\n"
            chunk = await anext(rest, None)
    except NPUError as exc:
        yield b"data: " + orjson.dumps({"done": True, "status": exc.status, **exc.to_dict()}) + b"\n\n"
    except RedisError:
        yield b"data: " + orjson.dumps({"done": True, "status": 503, "error": ErrorCode.REDIS_UNAVAILABLE,
                                        "message": "the job store became unreachable"}) + b"\n\n"


async def stream_result(chunks: AsyncIterator[StreamChunk]) -> GenerateResult:
    """A generation's whole result, from the stream of a call with `deltas=False`."""
    async for chunk in chunks:
        if chunk.result is not None:
            return chunk.result
    raise AssertionError("a stream always ends with a done chunk")


@router.post("/inference", response_model=InferenceResponse, responses={
    **ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "JSON, or events when streaming"}})
async def inference(body: InferenceRequest, request: Request, dispatcher: AsyncDispatcherDep) -> Any:
    apps.priority.set(body.priority)  # inside its app: "low" after its other work
    started = time.perf_counter()
    chunks = dispatcher.stream(body.prompt, body.model, max_tokens=body.max_tokens, temperature=body.temperature,
                               deadline_s=body.deadline_s, allow_cloud=body.allow_cloud, deltas=body.stream,
                               stop=body.stop)
    if not body.stream:
        try:
            r = await while_connected(request, lambda: stream_result(chunks))
        except ClientGone:
            return gone()
        metrics.observe("/inference", r, time.perf_counter() - started)
        return ORJSONResponse(r.to_body())
    # The first chunk is awaited here, so a refused request is a plain JSON error with its status code.
    try:
        first = await while_connected(request, lambda: anext(chunks))
    except ClientGone:
        return gone()
    return StreamingResponse(_events(first, chunks, started), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
