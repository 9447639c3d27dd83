"""`POST /embeddings` (seed contract): texts in, one vector per text out."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request

from dispatcher import apps

from .. import metrics
from ..auth import RESPONSES, AuthenticatedRoute, require_inference
from ..deps import AsyncDispatcherDep
from ..disconnect import ClientGone, gone, while_connected
from ..responses import ORJSONResponse
from ..schemas import EmbeddingsRequest, EmbeddingsResponse, ErrorResponse

router = APIRouter(route_class=AuthenticatedRoute, tags=["inference"], dependencies=[Depends(require_inference)],
                   responses=RESPONSES)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (404, 413, 422, 429, 503)}


@router.post("/embeddings", response_model=EmbeddingsResponse, responses=ERRORS)
async def embeddings(body: EmbeddingsRequest, request: Request, dispatcher: AsyncDispatcherDep) -> Any:
    apps.priority.set(body.priority)  # inside its app: "low" after its other work
    started = time.perf_counter()
    try:
        result = await while_connected(request, lambda: dispatcher.embed(
            body.texts, body.model, deadline_s=body.deadline_s, allow_cloud=body.allow_cloud, truncate=body.truncate))
    except ClientGone:
        return gone()
    metrics.observe("/embeddings", result, time.perf_counter() - started)
    # A Response, so FastAPI skips re-validating 384 floats per text against the schema (that cost more
    # than the inference of a short text); orjson writes the numpy array directly.
    return ORJSONResponse(result.to_body())
