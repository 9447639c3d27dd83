"""OpenAI's Batch API (`/v1/batches`): create, retrieve, list, cancel; and the operator's view of the
running batches (`GET /api/batches`).

Create checks the whole input file first (`api/batches/lines.py`): a bad line fails the batch at
`validating` with its line number in `errors`, and nothing is enqueued. A valid batch is stored as groups
of lines and left to the facades' drivers (`api/batches/driver.py`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal, cast

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from dispatcher.errors import ConflictError, InvalidInputError

from ..auth import RESPONSES, AuthenticatedRoute, require_read
from ..batches.lines import plan
from ..batches.records import TERMINAL, batch_fields, batch_object, file_meta, new_id, page
from ..deps import AsyncDispatcherDep, SettingsDep
from ..schemas import OpenAIErrorResponse
from .files import Caller

router = APIRouter(route_class=AuthenticatedRoute, prefix="/v1", tags=["batches"], responses=RESPONSES)
operator = APIRouter(route_class=AuthenticatedRoute, tags=["batches"], responses=RESPONSES)
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": OpenAIErrorResponse} for code in (400, 404, 409)}


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    input_file_id: str
    endpoint: Literal["/v1/embeddings", "/v1/chat/completions"]
    completion_window: Literal["24h"] = Field(description="Only 24h, as OpenAI.")
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None


@router.post("/batches", responses=ERRORS)
async def create_batch(request: Request, body: BatchRequest, who: Caller, dispatcher: AsyncDispatcherDep,
                       settings: SettingsDep) -> dict[str, Any]:
    r, keys = dispatcher.redis, dispatcher.keys
    meta = await file_meta(r, keys, body.input_file_id, who[1])
    if meta["purpose"] != "batch":
        raise InvalidInputError(f"File {body.input_file_id} has purpose {meta['purpose']!r}, not 'batch'.",
                                param="input_file_id")
    data = cast(bytes | None, await r.hget(keys.file(body.input_file_id), "data")) or b""
    checked = await asyncio.to_thread(plan, data, body.endpoint, dispatcher)
    now = int(time.time())
    obj: dict[str, Any] = {
        "id": new_id("batch"), "object": "batch", "endpoint": body.endpoint, "errors": None,
        "input_file_id": body.input_file_id, "completion_window": body.completion_window,
        "status": "in_progress", "output_file_id": None, "error_file_id": None, "created_at": now,
        "in_progress_at": now, "expires_at": now + 24 * 3600, "finalizing_at": None, "completed_at": None,
        "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
        "request_counts": {"total": checked.lines, "completed": 0, "failed": 0},
        "metadata": body.metadata, "owner": who[0]}
    if checked.errors:  # failed at `validating`: nothing was enqueued
        obj.update(status="failed", in_progress_at=None, failed_at=now,
                   errors={"object": "list", "data": checked.errors})
    batch = keys.batch(obj["id"])
    pipe = r.pipeline(transaction=True)
    for start in range(0, len(checked.groups), 1000):
        pipe.rpush(keys.batch(obj["id"], "groups"), *(orjson.dumps(g) for g in checked.groups[start:start + 1000]))
    pipe.hset(batch, mapping={"obj": orjson.dumps(obj), "groups": len(checked.groups), "next": 0,
                              "completed": 0, "failed": 0})
    pipe.zadd(keys.batches, {obj["id"]: now})
    if checked.errors:
        pipe.expire(batch, settings.batch_file_ttl_s)
    else:
        pipe.sadd(keys.batches_active, obj["id"])
    await pipe.execute()
    driver = getattr(request.app.state, "batch_driver", None)
    if driver is not None and not checked.errors:
        driver.wake()
    obj.pop("owner")
    return obj


@router.get("/batches/{batch_id}", responses=ERRORS)
async def retrieve_batch(batch_id: str, who: Caller, dispatcher: AsyncDispatcherDep) -> dict[str, Any]:
    return batch_object(await batch_fields(dispatcher.redis, dispatcher.keys, batch_id, who[1]))


@router.post("/batches/{batch_id}/cancel", responses=ERRORS)
async def cancel_batch(batch_id: str, who: Caller, dispatcher: AsyncDispatcherDep) -> dict[str, Any]:
    """The driver sees the request on its next step: it stops enqueueing, cancels the queued jobs, and
    ends the batch `cancelled` with the lines that were done."""
    r, keys = dispatcher.redis, dispatcher.keys
    fields = await batch_fields(r, keys, batch_id, who[1])
    status = orjson.loads(fields[b"obj"])["status"]
    if status in TERMINAL - {"cancelled"}:
        raise ConflictError(f"Cannot cancel a batch with status {status!r}.")
    if status not in TERMINAL:
        await r.hsetnx(keys.batch(batch_id), "cancel", int(time.time()))
    return batch_object(await batch_fields(r, keys, batch_id, who[1]))


@router.get("/batches", responses=ERRORS)
async def list_batches(who: Caller, dispatcher: AsyncDispatcherDep, after: str | None = None,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
    keys = dispatcher.keys
    listed = await page(dispatcher.redis, keys.batches, lambda i: (keys.batch(i), "obj"), who[1], after, limit)
    listed["data"] = [await retrieve_batch(b["id"], who, dispatcher) for b in listed["data"]]
    return listed


@operator.get("/api/batches", dependencies=[Depends(require_read)])
async def running_batches(dispatcher: AsyncDispatcherDep) -> dict[str, Any]:
    """The batches not yet finished, with progress: for the operator page."""
    r, keys = dispatcher.redis, dispatcher.keys
    running = []
    for raw in sorted(cast(set[bytes], await r.smembers(keys.batches_active))):
        fields = cast(dict[bytes, bytes], await r.hgetall(keys.batch(raw.decode())))
        if fields:
            obj = batch_object(fields)
            counts = obj["request_counts"]
            running.append({k: obj[k] for k in ("id", "endpoint", "status", "created_at", "expires_at",
                                                 "request_counts")}
                           | {"done": (counts["completed"] + counts["failed"]) / max(1, counts["total"])})
    return {"batches": running}
