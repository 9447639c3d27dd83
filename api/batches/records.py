"""Files and batches as Redis keeps them, in OpenAI's object shapes.

A file is one hash (`meta` JSON, `data` bytes) under the deployment's prefix, expiring after
NPU_BATCH_FILE_TTL_S: every facade of a fleet reads it, and nothing outlives its expiry. A batch is a
hash with its object (`obj`, written only by the driver that holds its lease), its counters and its
cursor; a cancel request is a field of its own (`cancel`), so the route never races the driver's writes.
Owners: an app's key digest, a service's id, or `admin`; `None` as a reader means "every owner".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from dispatcher.errors import NotFoundError
from dispatcher.protocol import Keys

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
PUBLIC_FILE = ("id", "object", "bytes", "created_at", "expires_at", "filename", "purpose", "status",
               "status_details")


def new_id(kind: str) -> str:
    return f"{kind}_{uuid.uuid4().hex}"


def put_file(pipe: Any, keys: Keys, *, owner: str, filename: str, purpose: str, data: bytes,
             ttl_s: int) -> dict[str, Any]:
    """Queue a new file's commands on `pipe` (sync or asyncio; the caller executes) and return its object."""
    now = int(time.time())
    file_id = new_id("file")
    meta: dict[str, Any] = {"id": file_id, "object": "file", "bytes": len(data), "created_at": now,
            "expires_at": now + ttl_s, "filename": filename, "purpose": purpose, "status": "processed",
            "status_details": None, "owner": owner}
    key = keys.file(file_id)
    pipe.hset(key, mapping={"meta": orjson.dumps(meta), "data": data})
    pipe.expire(key, ttl_s)
    pipe.zadd(keys.files, {file_id: now})
    return meta


def public_file(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta.get(k) for k in PUBLIC_FILE}


def visible(record: dict[str, Any] | None, owner: str | None) -> bool:
    return record is not None and (owner is None or record.get("owner") == owner)


async def file_meta(r: Redis, keys: Keys, file_id: str, owner: str | None) -> dict[str, Any]:
    """A file the caller may see; 404 for one that does not exist and for another owner's alike."""
    raw = await r.hget(keys.file(file_id), "meta") if file_id.startswith("file_") else None
    meta = orjson.loads(raw) if raw else None
    if not visible(meta, owner):
        raise NotFoundError(f"No such File object: {file_id}", param="file_id")
    assert meta is not None
    return meta


def batch_object(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """A batch's public object from its hash: live counters, and `cancelling` once a cancel was asked."""
    obj: dict[str, Any] = orjson.loads(fields[b"obj"])
    done, failed = int(fields.get(b"completed", 0)), int(fields.get(b"failed", 0))
    if obj["status"] not in TERMINAL:
        obj["request_counts"] = {**obj["request_counts"], "completed": done, "failed": failed}
        if b"cancel" in fields and obj["status"] != "cancelling":
            obj["status"], obj["cancelling_at"] = "cancelling", int(fields[b"cancel"])
    obj.pop("owner", None)
    return obj


async def batch_fields(r: Redis, keys: Keys, batch_id: str, owner: str | None) -> dict[bytes, bytes]:
    """A batch's hash (without its big parts), if the caller may see it; else 404, as for a missing one."""
    fields = cast(dict[bytes, bytes], await r.hgetall(keys.batch(batch_id))) if batch_id.startswith("batch_") else {}
    if not fields or not visible(orjson.loads(fields[b"obj"]), owner):
        raise NotFoundError(f"No such Batch object: {batch_id}", param="batch_id")
    return fields


async def page(r: Redis, index: str, key: Callable[[str], tuple[str, str]], owner: str | None,
               after: str | None, limit: int, keep: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """OpenAI's list page (newest first, `after` an id of the previous page): `data`, `first_id`,
    `last_id`, `has_more`. Entries whose record expired are dropped from the index as they are met."""
    start = 0
    if after:
        rank = cast(int | None, await r.zrevrank(index, after))
        start = rank + 1 if rank is not None else 0
    data: list[dict[str, Any]] = []
    while len(data) <= limit:
        ids = [i.decode() for i in cast(list[bytes], await r.zrevrange(index, start, start + 4 * limit))]
        if not ids:
            break
        start += len(ids)
        raws = await _objs(r, ids, key)
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            await r.zrem(index, *gone)
        for raw in raws:
            record = orjson.loads(raw) if raw else None
            if record is not None and visible(record, owner) and (keep is None or keep(record)):
                data.append(record)
    more = len(data) > limit
    data = data[:limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}


async def _objs(r: Redis, ids: list[str], key: Callable[[str], tuple[str, str]]) -> list[bytes | None]:
    pipe = r.pipeline(transaction=False)
    for i in ids:
        name, field = key(i)
        pipe.hget(name, field)
    return list(await pipe.execute())
