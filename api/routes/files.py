"""OpenAI's Files API (`/v1/files`), for batch input and output: upload, list, retrieve, content, delete.

The bytes live in Redis (`api/batches/records.py`) so every facade of a fleet serves them. An upload is
checked whole before it is kept: size (413), line count (400), line size (413), one JSON object per line
(400 with the line's number); whether each line is a valid request is the batch's check.
"""

from __future__ import annotations

import asyncio
import hashlib
from email import policy
from email.parser import BytesParser
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from dispatcher.errors import ErrorCode, InputTooLargeError, InvalidInputError
from dispatcher.settings import FacadeSettings

from ..auth import RESPONSES, AuthenticatedRoute, Principal, require_inference
from ..batches.records import file_meta, page, public_file, put_file
from ..deps import AsyncDispatcherDep, SettingsDep
from ..schemas import OpenAIErrorResponse

router = APIRouter(route_class=AuthenticatedRoute, prefix="/v1", tags=["batches"], responses=RESPONSES)
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": OpenAIErrorResponse} for code in (400, 404, 413)}


def owner_of(request: Request, principal: Principal) -> str:
    """Who owns what this caller creates: an app by its key's digest (app keys are all role `app`), a
    service by its id; the admin as `admin`."""
    if principal.role == "app":
        token = request.headers["authorization"].partition(" ")[2].strip()
        return "app:" + hashlib.sha256(token.encode()).hexdigest()[:24]
    return f"{principal.role}:{principal.name}"


async def caller(request: Request,
                 principal: Annotated[Principal, Depends(require_inference)]) -> tuple[str, str | None]:
    """(owner of new records, owner whose records this caller may read: None for the admin, who sees all)."""
    owner = owner_of(request, principal)
    return owner, None if principal.role == "admin" else owner


Caller = Annotated[tuple[str, str | None], Depends(caller)]


def check_batch_file(data: bytes, settings: FacadeSettings) -> None:
    if len(data) > settings.batch_file_max_bytes:
        raise InputTooLargeError(f"The file is {len(data)} bytes; the limit is {settings.batch_file_max_bytes}.",
                                 code=ErrorCode.INPUT_TOO_LARGE, limit=settings.batch_file_max_bytes, param="file")
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if lines > settings.batch_max_lines:
        raise InvalidInputError(f"The file has {lines} lines; the limit is {settings.batch_max_lines}.",
                                limit=settings.batch_max_lines, param="file")
    for number, line in enumerate(data.split(b"\n"), start=1):
        if len(line) > settings.batch_line_max_bytes:
            raise InputTooLargeError(f"Line {number} is {len(line)} bytes; the limit is "
                                     f"{settings.batch_line_max_bytes}.", code=ErrorCode.INPUT_TOO_LARGE,
                                     limit=settings.batch_line_max_bytes, line=number, param="file")
        if not line.strip():
            continue
        try:
            parsed = orjson.loads(line)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidInputError(f"Line {number} is not a JSON object: a batch file is JSONL, one request "
                                    "object per line.", line=number, param="file")


def _form(kind: str, body: bytes) -> tuple[dict[str, str], tuple[str, bytes] | None]:
    """multipart/form-data by the standard library's MIME parser: its fields, and its `file` part."""
    if not kind.lower().startswith("multipart/form-data"):
        raise InvalidInputError("Send the file as multipart/form-data, with fields `file` and `purpose`.")
    head = b"Content-Type: " + kind.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    upload = None
    for part in message.iter_parts() if message.is_multipart() else ():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        if name == "file":
            upload = (part.get_filename() or "file.jsonl", payload)
        else:
            fields[name] = payload.decode("utf-8", "replace")
    return fields, upload


@router.post("/files", responses=ERRORS)
async def create_file(request: Request, who: Caller, dispatcher: AsyncDispatcherDep,
                      settings: SettingsDep) -> dict[str, Any]:
    # Parsing and checking a file of up to NPU_BATCH_FILE_MAX_BYTES takes a while: not on the event loop.
    fields, upload = await asyncio.to_thread(_form, request.headers.get("content-type", ""), await request.body())
    if fields.get("purpose") != "batch":
        raise InvalidInputError("purpose must be 'batch': this service keeps files for the Batch API only.",
                                param="purpose")
    if upload is None:
        raise InvalidInputError("Missing required parameter: 'file'.", param="file")
    filename, data = upload
    await asyncio.to_thread(check_batch_file, data, settings)
    pipe = dispatcher.redis.pipeline(transaction=True)
    meta = put_file(pipe, dispatcher.keys, owner=who[0], filename=filename, purpose="batch", data=data,
                    ttl_s=settings.batch_file_ttl_s)
    await pipe.execute()
    return public_file(meta)


@router.get("/files", responses=ERRORS)
async def list_files(who: Caller, dispatcher: AsyncDispatcherDep, purpose: str | None = None, after: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=10000)] = 10000) -> dict[str, Any]:
    keys = dispatcher.keys
    listed = await page(dispatcher.redis, keys.files, lambda i: (keys.file(i), "meta"), who[1], after, limit,
                        (lambda m: m["purpose"] == purpose) if purpose else None)
    listed["data"] = [public_file(m) for m in listed["data"]]
    return listed


@router.get("/files/{file_id}", responses=ERRORS)
async def retrieve_file(file_id: str, who: Caller, dispatcher: AsyncDispatcherDep) -> dict[str, Any]:
    return public_file(await file_meta(dispatcher.redis, dispatcher.keys, file_id, who[1]))


@router.get("/files/{file_id}/content", responses=ERRORS)
async def file_content(file_id: str, who: Caller, dispatcher: AsyncDispatcherDep) -> Response:
    await file_meta(dispatcher.redis, dispatcher.keys, file_id, who[1])
    data = await dispatcher.redis.hget(dispatcher.keys.file(file_id), "data")
    return Response(data or b"", media_type="application/octet-stream")


@router.delete("/files/{file_id}", responses=ERRORS)
async def delete_file(file_id: str, who: Caller, dispatcher: AsyncDispatcherDep) -> dict[str, Any]:
    await file_meta(dispatcher.redis, dispatcher.keys, file_id, who[1])
    pipe = dispatcher.redis.pipeline(transaction=True)
    pipe.delete(dispatcher.keys.file(file_id))
    pipe.zrem(dispatcher.keys.files, file_id)
    await pipe.execute()
    return {"id": file_id, "object": "file", "deleted": True}
