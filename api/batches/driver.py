"""The batch driver: every facade runs one; a lease in Redis makes exactly one of them step a batch.

A step collects the batch's finished bulk jobs into per-line results (each line answered once:
HSETNX), keeps up to NPU_BATCH_WINDOW jobs queued ahead, and at the end writes the output and error
files. The jobs are the bulk lane's own (`Dispatcher.submit_embed` / `submit_generate`), so the worker,
`rq info` and the bulk metrics see ordinary bulk work. Job ids are the batch's id and the group's
number: the set of jobs in flight is kept in Redis before a job is enqueued, so a driver that takes
over (its predecessor's facade died, its lease lapsed) finds every job again and enqueues only those
that do not exist. A worker killed mid-job is the bulk lane's business: its peers requeue the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, cast

import orjson
from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job, JobStatus

from dispatcher import errors as npu_errors
from dispatcher.client import Dispatcher
from dispatcher.errors import NPUError, OverloadedError
from dispatcher.models import Registry
from dispatcher.protocol import Keys, MsgpackSerializer
from dispatcher.settings import FacadeSettings

from .lines import answers
from .records import put_file

log = logging.getLogger(__name__)

_LEASE = """local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0"""
"""Take the lease if it is free, renew it if it is ours."""
_ANSWER = """if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
redis.call('HINCRBY', KEYS[2], ARGV[3], 1) return 1 end
return 0"""
"""A line's first answer, counted; any later one (a retried job, a second driver) is dropped."""
IDLE_POLL_S = 1.0
"""How often an idle driver looks for batches created by other facades (or left by a facade that died): a
10 Hz look cost an idle facade ~1% of a core (a thread hop and a round trip each time)."""
_WAITING = {JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
_ENDED = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED}


class Driver:
    def __init__(self, settings: FacadeSettings, registry: Registry | None = None):
        self.settings, self.keys = settings, Keys(settings.key_prefix)
        self.redis: Redis = settings.redis()
        self.dispatcher = Dispatcher(settings, registry, redis_client=self.redis)
        self.me = uuid.uuid4().hex
        self._lease = self.redis.register_script(_LEASE)
        self._answer = self.redis.register_script(_ANSWER)
        self._woken: asyncio.Event | None = None

    async def run(self) -> None:
        """Step every batch this facade holds the lease of, every NPU_BATCH_POLL_MS while any batch is active;
        with none, look again every IDLE_POLL_S or as soon as this facade creates one (`wake`)."""
        self._woken = asyncio.Event()
        while True:
            busy = True
            try:
                busy = await asyncio.to_thread(self.round)
            except RedisError as exc:  # Redis away: the next round tries again
                log.debug("batch driver round skipped: %s", exc)
            except Exception:  # a bug met in one batch: logged, and the next round tries again
                log.exception("batch driver round failed")
            self._woken.clear()
            pause = self.settings.batch_poll_ms / 1000 if busy else IDLE_POLL_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), pause)

    def wake(self) -> None:
        """A batch was created here: start it now, not at the next idle look."""
        if self._woken is not None:
            self._woken.set()

    def round(self) -> bool:
        """One step of each batch whose lease this facade holds; False when no batch is active anywhere."""
        lease_ms = int(self.settings.batch_lease_s * 1000)
        active = cast(set[bytes], self.redis.smembers(self.keys.batches_active))
        for raw in active:
            batch_id = raw.decode()
            if self._lease(keys=[self.keys.batch(batch_id, "lease")], args=[self.me, lease_ms]):
                self.step(batch_id)
        return bool(active)

    def close(self) -> None:
        self.dispatcher.close()

    # --- one step of one batch

    def step(self, batch_id: str) -> None:
        fields: dict[bytes, bytes] = self.redis.hgetall(self.keys.batch(batch_id))  # type: ignore[assignment]
        if not fields:
            self.redis.srem(self.keys.batches_active, batch_id)
            return
        obj = orjson.loads(fields[b"obj"])
        now = int(time.time())
        stop = None
        if b"cancel" in fields:
            stop = "batch_cancelled"
            if obj["status"] != "cancelling":
                obj.update(status="cancelling", cancelling_at=int(fields[b"cancel"]))
                self._save(batch_id, obj)
        elif now >= obj["expires_at"]:
            stop = "batch_expired"
        self._collect(batch_id, stop)
        total, cursor = int(fields[b"groups"]), int(self.redis.hget(self.keys.batch(batch_id), "next") or 0)
        if stop:
            self._abandon(batch_id, range(cursor, total), stop)
            self.redis.hset(self.keys.batch(batch_id), "next", total)
            cursor = total
        else:
            cursor = self._fill(batch_id, cursor, total)
        if cursor >= total and not self.redis.scard(self.keys.batch(batch_id, "inflight")):
            self._finish(batch_id, obj, stop)

    def _group(self, batch_id: str, job_id: str) -> dict[str, Any]:
        """The lines a job answers: its group's, or one line of it for a job split off a failed group."""
        parts = job_id[len(batch_id) + 1:].split("-")
        group: dict[str, Any] = orjson.loads(self.redis.lindex(self.keys.batch(batch_id, "groups"), int(parts[0])))  # type: ignore[arg-type]
        if len(parts) > 1:
            group["lines"] = [group["lines"][int(parts[1])]]
        return group

    def _collect(self, batch_id: str, stop: str | None) -> None:
        inflight = self.keys.batch(batch_id, "inflight")
        ids = sorted(i.decode() for i in cast(set[bytes], self.redis.smembers(inflight)))
        if not ids:
            return
        jobs = Job.fetch_many(ids, connection=self.redis, serializer=MsgpackSerializer)
        for job_id, job in zip(ids, jobs, strict=True):
            status = job.get_status(refresh=False) if job is not None else None
            if job is not None and status not in _ENDED and not (stop and status in _WAITING):
                continue  # queued or running: the lane's business
            group = self._group(batch_id, job_id)
            if job is not None and status == JobStatus.FINISHED:
                for line, body in answers(group, job.return_value()):  # type: ignore[arg-type]
                    self._ok(batch_id, line, job_id, body)
            elif job is not None and status == JobStatus.FAILED:
                if len(group["lines"]) > 1 and not stop:  # find which line(s) failed: each on its own
                    subs = [f"{job_id}-{i}" for i in range(len(group["lines"]))]
                    self.redis.sadd(inflight, *subs)
                    for sub in subs:  # a predecessor may have split it already
                        if not Job.exists(sub, connection=self.redis):
                            self._submit(batch_id, sub)
                else:
                    self._failed(batch_id, group, job_id, job)
            elif stop:  # waiting (cancelled now), or gone, while the batch stops
                if job is not None and status in _WAITING:
                    job.cancel()
                self._abandoned(batch_id, group, stop)
            else:  # gone before it ran (cancelled by hand, or its driver died before enqueueing it)
                self._submit(batch_id, job_id)
                continue
            self.redis.srem(inflight, job_id)

    def _fill(self, batch_id: str, cursor: int, total: int) -> int:
        """Enqueue the next groups while fewer than NPU_BATCH_WINDOW jobs are in flight."""
        inflight = self.keys.batch(batch_id, "inflight")
        room = self.settings.batch_window - int(self.redis.scard(inflight))
        while room > 0 and cursor < total:
            job_id = f"{batch_id}-{cursor}"
            pipe = self.redis.pipeline()  # in flight before it exists: a successor finds it either way
            pipe.sadd(inflight, job_id)
            pipe.hset(self.keys.batch(batch_id), "next", cursor + 1)
            pipe.execute()
            cursor, room = cursor + 1, room - 1
            if not self._submit(batch_id, job_id):
                break
        return cursor

    def _submit(self, batch_id: str, job_id: str) -> bool:
        """One bulk job through the lane's public API; False when the lane refuses more for now (it is
        tried again next step: the job stays in flight, found missing)."""
        group = self._group(batch_id, job_id)
        options: dict[str, Any] = {"job_id": job_id, "description": f"batch {batch_id}"}
        try:
            if group["kind"] == "embed":
                texts = [t for line in group["lines"] for t in line["texts"]]
                self.dispatcher.submit_embed(texts, group["model"], **options)
            else:
                line = group["lines"][0]
                self.dispatcher.submit_generate(line["messages"], group["model"], max_tokens=line["max_tokens"],
                                                temperature=line["temperature"], **options)
        except OverloadedError:
            return False
        except NPUError as exc:  # e.g. not replicated in time: the job may exist; the next step looks
            log.warning("batch %s: job %s: %s", batch_id, job_id, exc)
            return False
        return True

    # --- answers

    def _put(self, batch_id: str, line: dict[str, Any], entry: dict[str, Any], ok: bool) -> None:
        entry = {"id": f"batch_req_{batch_id[6:]}_{line['n']}", "custom_id": line["custom_id"], **entry}
        value = (b"o" if ok else b"e") + orjson.dumps(entry, option=orjson.OPT_SERIALIZE_NUMPY)
        self._answer(keys=[self.keys.batch(batch_id, "results"), self.keys.batch(batch_id)],
                     args=[line["n"], value, "completed" if ok else "failed"])

    def _ok(self, batch_id: str, line: dict[str, Any], job_id: str, body: dict[str, Any]) -> None:
        self._put(batch_id, line, {"response": {"status_code": 200, "request_id": job_id, "body": body},
                                   "error": None}, True)

    def _failed(self, batch_id: str, group: dict[str, Any], job_id: str, job: Job) -> None:
        status, code, message = _failure(job)
        error = {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                 "code": code, "param": None}
        for line in group["lines"]:
            self._put(batch_id, line, {"response": {"status_code": status, "request_id": job_id,
                                                    "body": {"error": error}}, "error": None}, False)

    def _abandoned(self, batch_id: str, group: dict[str, Any], code: str) -> None:
        message = "The batch was cancelled before this request ran." if code == "batch_cancelled" else \
            "The batch expired before this request ran."
        for line in group["lines"]:
            self._put(batch_id, line, {"response": None, "error": {"code": code, "message": message}}, False)

    def _abandon(self, batch_id: str, groups: range, code: str) -> None:
        for n in groups:
            self._abandoned(batch_id, self._group(batch_id, f"{batch_id}-{n}"), code)

    # --- the end

    def _save(self, batch_id: str, obj: dict[str, Any]) -> None:
        self.redis.hset(self.keys.batch(batch_id), "obj", orjson.dumps(obj))

    def _finish(self, batch_id: str, obj: dict[str, Any], stop: str | None) -> None:
        """finalizing, the output and error files (lines in input order), then the final status."""
        now = int(time.time())
        obj.update(status="finalizing", finalizing_at=now)
        self._save(batch_id, obj)
        results = self.keys.batch(batch_id, "results")
        total = int(obj["request_counts"]["total"])
        out: list[bytes] = []
        err: list[bytes] = []
        for start in range(0, total, 1000):
            values = cast(list[bytes | None], self.redis.hmget(results, list(range(start, min(total, start + 1000)))))
            for value in values:
                if value is not None:
                    (out if value[:1] == b"o" else err).append(value[1:])
        pipe = self.redis.pipeline()
        for name, lines in (("output_file_id", out), ("error_file_id", err)):
            if lines:
                meta = put_file(pipe, self.keys, owner=obj["owner"], filename=f"{batch_id}_{name[:-8]}.jsonl",
                                purpose="batch_output", data=b"\n".join(lines) + b"\n",
                                ttl_s=self.settings.batch_file_ttl_s)
                obj[name] = meta["id"]
        final = {"batch_cancelled": "cancelled", "batch_expired": "expired"}.get(stop or "", "completed")
        obj.update(status=final, **{f"{final}_at": int(time.time())},
                   request_counts={"total": total, "completed": len(out), "failed": len(err)})
        pipe.hset(self.keys.batch(batch_id), "obj", orjson.dumps(obj))
        pipe.expire(self.keys.batch(batch_id), self.settings.batch_file_ttl_s)
        pipe.delete(*(self.keys.batch(batch_id, p) for p in ("groups", "results", "inflight", "lease")))
        pipe.srem(self.keys.batches_active, batch_id)
        pipe.execute()


def _failure(job: Job) -> tuple[int, str, str]:
    """Status, code and message of a failed job, from RQ's exception string: ours carry `code: message`."""
    result = job.latest_result()
    text = (result.exc_string if result is not None else None) or "the job failed"
    last = next((ln for ln in reversed(text.strip().splitlines()) if ln.strip()), text)
    name, _, rest = last.partition(": ")
    cls = getattr(npu_errors, name.rsplit(".", 1)[-1], None)
    if isinstance(cls, type) and issubclass(cls, NPUError) and rest:
        code, _, message = rest.partition(": ")
        return (400 if cls.status == 422 else cls.status), code, message or rest
    return 500, "job_failed", last
