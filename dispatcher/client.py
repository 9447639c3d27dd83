"""What backends call: the two drivers of the dispatch flows, for both lanes.

The decisions (checks, route, wait, retry, cloud, bulk queue) are in `dispatcher/flow.py`, written once;
here each driver only carries out the effects a flow asks for, in one `_perform` each, the same table of
effects with and without `await`. `Dispatcher` blocks its caller's thread: a job goes out with its reply
key's BLPOP in the same round trip. `AsyncDispatcher` waits on a socket: its callers' jobs are sent
together (`dispatcher/sender.py`) and their replies come back through one shared reply list
(`dispatcher/inbox.py`), so 64 waiting requests hold two connections, not 64.

Cancellation: a driver remembers each job its flow sent (`_Sent`: the stream entry, the worker that took
it). When the flow ends with a job unanswered (the caller cancelled the coroutine or closed the stream,
the facade's client disconnected), the driver cancels the job as `effects.Cancel` says (a flow that gives
up on a job yields that effect itself): a job no worker took yet is deleted from its stream (XDEL: the
worker never sees it), a started one is named in its worker's cancel set, which the worker reads with
each step's replies.

The bulk lane is RQ, whose client is blocking: `AsyncDispatcher` runs its enqueue in a thread on a
blocking Redis client, so the `rq.job.Job` it returns is the same object, with a working connection, as
the one `Dispatcher` returns (a job bound to an asyncio client could not answer `get_status()`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from contextlib import aclosing, closing
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
import redis
import redis.asyncio as aredis
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus

from .effects import (
    Cancel,
    Effect,
    Enqueue,
    Flow,
    Http,
    IsAlive,
    Pause,
    QueueLength,
    ReadFleet,
    Receive,
    Send,
    StreamFlow,
    WaitReplicas,
)
from .errors import InvalidInputError, NotFoundError
from .flow import DispatchPolicy
from .inbox import Inbox
from .models import Registry
from .protocol import (
    DeltaReply,
    Job,
    MsgpackSerializer,
    Prompt,
    Reply,
    StartReply,
    app_tag,
    new_id,
    pack,
    read_reply,
    unpack,
)
from .results import EmbedResult, GenerateResult, StreamChunk
from .routing import Calls, FleetRead, FleetSnapshot
from .sender import Sender
from .settings import WAIT_SLICE_S, CallerSettings

__all__ = ["AsyncDispatcher", "Dispatcher", "EmbedResult", "GenerateResult", "StreamChunk"]

R = TypeVar("R")
log = logging.getLogger(__name__)
RENAME_APPS_S = 10.0
"""How often a process names an app it sends for to the workers again (a round trip it shares with the job)."""
START_WAIT_S = 1.0
"""After deleting a cancelled generation's entry: how long to wait for the start of a worker that took it
in the same instant (it admits a job in the step that read it), to stop it there too."""
OnCancel = Callable[[str], None]
"""Told the reason of each job a driver cancels (the facade counts them)."""


@dataclass
class _Sent:
    """A job a flow sent, as its driver saw it go out and be answered: what cancelling it needs."""

    job: Job
    stream: str
    entry_id: str | None = None
    worker_id: str | None = None
    done: bool = False
    """Answered (or cancelled already): nothing to cancel."""

    def saw(self, reply: Reply | None) -> Reply | None:
        if isinstance(reply, StartReply):
            self.worker_id = reply.worker_id or self.worker_id
        elif reply is not None and not isinstance(reply, DeltaReply):
            self.done = True
        return reply


class _Driver:
    """What both drivers share: the policy, and the checks callers may run before submitting."""

    def __init__(self, settings: CallerSettings | None, registry: Registry | None,
                 cancel_reason: str = "caller_cancelled", on_cancel: OnCancel | None = None):
        """`cancel_reason`: what a job left by its caller is counted as (the facade's: `client_gone`)."""
        self.policy = DispatchPolicy(settings or CallerSettings(), registry)
        self.settings, self.registry, self.keys = self.policy.settings, self.policy.registry, self.policy.keys
        self.cloud = self.policy.cloud
        self.app_weights: dict[str, float] = {}
        """Weights a facade configured (`NPU_APPS`); an app not in it is named with weight 1."""
        self._named: dict[str, float] = {}
        """App -> when this process last named it to the workers (monotonic)."""
        self.cancel_reason = cancel_reason
        self.on_cancel = on_cancel

    def stream_of(self, job: Job, node: str | None) -> str:
        """The stream `job` goes to: its app's, at its priority."""
        return self.keys.stream(job.model, node, app_tag(job.app, job.priority))

    def unnamed_app(self, job: Job) -> str | None:
        """`job`'s app when this process has not named it to the workers (`Keys.apps`, HSETNX: never overriding
        a weight already there) in the last `RENAME_APPS_S`: a Redis restarted empty has forgotten them."""
        if not job.app or time.monotonic() - self._named.get(job.app, -RENAME_APPS_S) < RENAME_APPS_S:
            return None
        return job.app

    def named(self, app: str) -> None:
        self._named[app] = time.monotonic()

    def unnamed(self, app: str) -> None:
        self._named.pop(app, None)

    def _cancelled(self, sent: _Sent, reason: str, how: str) -> None:
        log.info("cancelled job %s (%s): %s", sent.job.id, reason, how)
        if self.on_cancel is not None:
            self.on_cancel(reason)

    def _tell_worker(self, pipe: Any, sent: _Sent, reason: str) -> None:
        key = self.keys.cancel(sent.worker_id or "")
        pipe.sadd(key, f"{sent.job.id} {reason}")
        pipe.expire(key, self.settings.reply_ttl_s)

    def _bulk_cancel(self, r: redis.Redis, job_id: str) -> RQJob:
        """RQ's own cancel for a job not started (`Job.cancel`); a started one is stopped as RQ documents
        (`send_stop_job_command`, for a plain `rq worker`) and named in its worker's cancel set (ours run
        bulk generations in their engines, stopped at the next step)."""
        try:
            job = RQJob.fetch(job_id, connection=r, serializer=MsgpackSerializer)
        except NoSuchJobError:
            raise NotFoundError(f"no bulk job {job_id!r}") from None
        status = job.get_status(refresh=False)
        if status == JobStatus.STARTED and job.worker_name:
            with r.pipeline(transaction=False) as pipe:
                pipe.sadd(self.keys.cancel(job.worker_name), f"{job.id} caller_cancelled")
                pipe.expire(self.keys.cancel(job.worker_name), self.settings.reply_ttl_s)
                pipe.execute()
            send_stop_job_command(r, job.id, serializer=MsgpackSerializer)
        elif status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            raise InvalidInputError(f"bulk job {job_id!r} has already ended ({status.value})")
        else:
            try:
                job.cancel()
            except InvalidJobOperation as exc:
                raise InvalidInputError(str(exc)) from None
        log.info("cancelled bulk job %s (caller_cancelled): it was %s", job.id, status.value if status else "?")
        return job

    def check_texts(self, texts: Any) -> list[str]:
        return self.policy.limits.check_texts(texts)

    def check_prompt(self, prompt: Any, max_tokens: int | None, temperature: float | None) -> Prompt:
        return self.policy.limits.check_prompt(prompt, max_tokens, temperature)


class Dispatcher(_Driver):
    """Blocking dispatcher for synchronous backends."""

    def __init__(self, settings: CallerSettings | None = None, registry: Registry | None = None,
                 redis_client: redis.Redis | None = None, *, cancel_reason: str = "caller_cancelled",
                 on_cancel: OnCancel | None = None):
        super().__init__(settings, registry, cancel_reason, on_cancel)
        self.redis = redis_client or self.settings.redis()
        self._http: httpx.Client | None = None

    # --- the driver

    def _drive(self, flow: StreamFlow[R]) -> Generator[StreamChunk | _Done[R], None, None]:
        """Runs a flow: carries out its effects; yields its text, then its result. Jobs left unanswered
        when the caller leaves (closes the stream early, KeyboardInterrupt) are cancelled as
        `cancel_reason`; a flow that gives up on a job itself says so (`Cancel`)."""
        reply: object = None
        error: Exception | None = None
        sent: dict[str, _Sent] = {}
        reason: str | None = None
        ended = False
        try:
            while True:
                item = _resume(flow, reply, error)
                reply, error = None, None
                if isinstance(item, _Done):
                    ended = True  # closed after its result: the caller did not leave
                    yield item
                    return
                if isinstance(item, StreamChunk):
                    yield item
                    continue
                try:
                    reply = self._perform(item, sent)
                except Exception as exc:  # thrown into the flow, which decides what it means
                    error = exc
        except BaseException as exc:
            if not ended and not isinstance(exc, Exception):  # GeneratorExit, KeyboardInterrupt: the caller left
                reason = self.cancel_reason
            raise
        finally:
            flow.close()  # also when the caller stops reading a stream early
            for job in sent.values():
                if reason is not None and not job.done:
                    self._cancel(job, reason)

    def _perform(self, effect: Effect[object], sent: dict[str, _Sent]) -> object:
        match effect:
            case ReadFleet(model=model):
                read = FleetRead(self.keys, model, self.policy.clock.time())
                first = self._pipeline(read.first())
                return read.snapshot(first, self._pipeline(read.second(first)))
            case Send(job=job, node=node):
                record = sent[job.id] = _Sent(job, self.stream_of(job, node))
                return record.saw(self._send(effect, record))
            case Receive(job=job, timeout_s=timeout_s):
                return sent[job.id].saw(self._receive(job.reply, timeout_s))
            case Cancel(job=job, reason=reason):
                self._cancel(sent[job.id], reason)
                return None
            case IsAlive(worker_id=worker_id):
                return bool(self.redis.exists(self.keys.worker(worker_id)))
            case Pause(seconds=seconds):
                time.sleep(seconds)
                return None
            case Http(request=request):
                self._http = self._http or httpx.Client()
                return self._http.send(request)
            case QueueLength() | Enqueue() | WaitReplicas():
                return _rq(self.redis, effect)
        raise TypeError(f"unknown effect {effect!r}")

    def _pipeline(self, calls: Calls) -> list[object]:
        replies: list[object] = _queued(self.redis.pipeline(transaction=False), calls).execute()
        return replies

    def _send(self, send: Send, record: _Sent) -> Reply | None:
        """XADD and the first BLPOP in one round trip; a long wait is made of `WAIT_SLICE_S` slices."""
        job = send.job
        job.reply = self.keys.reply(job.id)
        end = time.monotonic() + send.timeout_s
        pipe = self.redis.pipeline(transaction=False)
        new_app = self.unnamed_app(job)
        if new_app:
            pipe.hsetnx(self.keys.apps, new_app, self.app_weights.get(new_app, 1))
        pipe.xadd(record.stream, {"j": pack(job)})
        pipe.blpop([job.reply], timeout=min(send.timeout_s, WAIT_SLICE_S))
        *_, entry_id, popped = pipe.execute()
        record.entry_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        if new_app:
            self.named(new_app)
        if popped is not None:
            return read_reply(unpack(popped[1]))
        return self._receive(job.reply, end - time.monotonic())

    def _receive(self, key: str, timeout_s: float) -> Reply | None:
        end = time.monotonic() + timeout_s
        while (left := end - time.monotonic()) > 0.01:
            popped: Any = self.redis.blpop([key], timeout=min(left, WAIT_SLICE_S))
            if popped is not None:
                return read_reply(unpack(popped[1]))
        return None

    def _cancel(self, sent: _Sent, reason: str) -> None:
        """`effects.Cancel`; a failure is logged, never raised over what ended the flow."""
        sent.done = True
        try:
            if sent.worker_id is None and sent.entry_id is not None:
                removed = self.redis.xdel(sent.stream, sent.entry_id)
                if removed or sent.job.kind != "generate":
                    self._cancelled(sent, reason, "taken off its stream" if removed else "already taken")
                    return
                popped: Any = self.redis.blpop([sent.job.reply], timeout=START_WAIT_S)
                if popped is not None:
                    sent.saw(read_reply(unpack(popped[1])))
            if sent.worker_id is not None:
                with self.redis.pipeline(transaction=False) as pipe:
                    self._tell_worker(pipe, sent, reason)
                    pipe.execute()
                self._cancelled(sent, reason, f"worker {sent.worker_id} told")
        except redis.RedisError as exc:
            log.warning("could not cancel job %s (%s): %s", sent.job.id, reason, exc)

    def _run(self, flow: Flow[R]) -> R:
        with closing(self._drive(flow)) as items:
            for item in items:
                if isinstance(item, _Done):
                    return item.value
        raise AssertionError("a flow always ends with its result")

    def _chunks(self, flow: StreamFlow[GenerateResult]) -> Iterator[StreamChunk]:
        with closing(self._drive(flow)) as items:
            for item in items:
                yield item if isinstance(item, StreamChunk) else StreamChunk("", True, item.value)

    # --- interactive lane

    def embed(self, texts: list[str], model: str | None = None, *, deadline_s: float | None = None,
              allow_cloud: bool = True, truncate: bool = False) -> EmbedResult:
        return self._run(self.policy.embed(texts, model, deadline_s=deadline_s, allow_cloud=allow_cloud,
                                           truncate=truncate))

    def stream(self, prompt: Prompt, model: str | None = None, *, max_tokens: int | None = None,
               temperature: float | None = None, deadline_s: float | None = None, allow_cloud: bool = True,
               deltas: bool = True, stop: list[str] | None = None) -> Iterator[StreamChunk]:
        """Text as it is generated; the last chunk has `done=True` and the whole result (see
        `DispatchPolicy.stream`)."""
        return self._chunks(self.policy.stream(prompt, model, max_tokens=max_tokens, temperature=temperature,
                                               deadline_s=deadline_s, allow_cloud=allow_cloud, deltas=deltas,
                                               stop=stop))

    def generate(self, prompt: Prompt, model: str | None = None, **options: Any) -> GenerateResult:
        """The whole text at once. Options as for `stream`."""
        for chunk in self.stream(prompt, model, deltas=False, **options):
            if chunk.result is not None:
                return chunk.result
        raise AssertionError("a stream always ends with a done chunk")

    # --- bulk lane (plain RQ underneath)

    def bulk_queue(self, model: str) -> Queue:
        """The RQ queue of a model's bulk lane, for backends that want RQ's own API."""
        return _queue(self.redis, self.policy.bulk_queue(model))

    def submit_embed(self, texts: list[str], model: str | None = None, *, truncate: bool = False,
                     **rq_options: Any) -> RQJob:
        return self._run(self.policy.submit_embed(texts, model, truncate=truncate, rq_options=rq_options))

    def submit_generate(self, prompt: Prompt, model: str | None = None, *, max_tokens: int | None = None,
                        temperature: float | None = None, **rq_options: Any) -> RQJob:
        return self._run(self.policy.submit_generate(prompt, model, max_tokens=max_tokens, temperature=temperature,
                                                     rq_options=rq_options))

    def cancel_bulk(self, job_id: str) -> RQJob:
        """Cancel a bulk job: RQ's `Job.cancel` if it has not started; a started one is stopped (a bulk
        generation within a step). Unknown: `NotFoundError`; already ended: `InvalidInputError`."""
        return self._bulk_cancel(self.redis, job_id)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        self.redis.close()


class AsyncDispatcher(_Driver):
    """asyncio dispatcher: the facade's, and any async backend's. Waiting holds a socket, not a thread."""

    def __init__(self, settings: CallerSettings | None = None, registry: Registry | None = None,
                 redis_client: aredis.Redis | None = None, *, cancel_reason: str = "caller_cancelled",
                 on_cancel: OnCancel | None = None):
        super().__init__(settings, registry, cancel_reason, on_cancel)
        self.redis = redis_client or self.settings.aredis()
        self.inbox = Inbox(self.redis, self.keys.reply(f"inbox:{new_id()}"))
        self.sender = Sender(self.redis)
        self._http: httpx.AsyncClient | None = None
        self._rq_redis: redis.Redis | None = None
        self._fleet_reads: dict[str, asyncio.Task[FleetSnapshot]] = {}
        self._cancelling: set[asyncio.Task[None]] = set()
        """Cancellations under way (a task of their own, so a cancelled caller does not wait for them)."""

    # --- the driver

    async def _drive(self, flow: StreamFlow[R]) -> AsyncGenerator[StreamChunk | _Done[R], None]:
        """As `Dispatcher._drive`. Replies of the flow's jobs that come after it ended are dropped. Jobs
        left unanswered are cancelled in a task of their own: a cancelled caller (asyncio.CancelledError,
        which anyio delivers again at every await of a cancelled scope) cannot await it."""
        reply: object = None
        error: Exception | None = None
        sent: dict[str, _AsyncSent] = {}
        reason: str | None = None
        ended = False
        try:
            while True:
                item = _resume(flow, reply, error)
                reply, error = None, None
                if isinstance(item, _Done):
                    ended = True  # closed after its result: the caller did not leave
                    yield item
                    return
                if isinstance(item, StreamChunk):
                    yield item
                    continue
                try:
                    reply = await self._perform(item, sent)
                except Exception as exc:  # thrown into the flow, which decides what it means
                    error = exc
        except BaseException as exc:
            if not ended and not isinstance(exc, Exception):  # CancelledError, GeneratorExit: the caller left
                reason = self.cancel_reason
            raise
        finally:
            flow.close()
            for job in sent.values():
                if reason is None or job.done:
                    self.inbox.forget(job.job.id)
                else:
                    job.done = True
                    self._cancel_later(job, reason)

    async def _perform(self, effect: Effect[object], sent: dict[str, _AsyncSent]) -> object:
        match effect:
            case ReadFleet(model=model):
                return await self._read_fleet(model)
            case Send(job=job, node=node, timeout_s=timeout_s):
                job.reply = self.inbox.key
                self.inbox.expect(job.id)
                new_app = self.unnamed_app(job)
                if new_app:
                    self.named(new_app)  # before the await: the flood of concurrent first sends names it once
                    try:
                        await self.redis.hsetnx(self.keys.apps, new_app, self.app_weights.get(new_app, 1))
                    except BaseException:
                        self.unnamed(new_app)
                        raise
                record = sent[job.id] = _AsyncSent(job, self.stream_of(job, node))
                record.entry = self.sender.xadd(record.stream, {"j": pack(job)})
                record.entry_id = await asyncio.shield(record.entry)
                return record.saw(_reply(await self.inbox.get(job.id, timeout_s)))
            case Receive(job=job, timeout_s=timeout_s):
                return sent[job.id].saw(_reply(await self.inbox.get(job.id, timeout_s)))
            case Cancel(job=job, reason=reason):
                record = sent[job.id]
                record.done = True
                await self._cancel(record, reason)
                return None
            case IsAlive(worker_id=worker_id):
                return bool(await self.redis.exists(self.keys.worker(worker_id)))
            case Pause(seconds=seconds):
                await asyncio.sleep(seconds)
                return None
            case Http(request=request):
                self._http = self._http or httpx.AsyncClient()
                return await self._http.send(request)
            case QueueLength() | Enqueue() | WaitReplicas():
                self._rq_redis = self._rq_redis or self.settings.redis()
                return await asyncio.to_thread(_rq, self._rq_redis, effect)
        raise TypeError(f"unknown effect {effect!r}")

    def _cancel_later(self, sent: _AsyncSent, reason: str) -> None:
        try:
            task = asyncio.get_running_loop().create_task(self._cancel(sent, reason))
        except RuntimeError:  # no loop any more (interpreter shutdown): the worker drops it by its budget
            return
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)

    async def _cancel(self, sent: _AsyncSent, reason: str) -> None:
        """`effects.Cancel`; a failure is logged, never raised."""
        try:
            if sent.worker_id is None:
                if sent.entry_id is None and sent.entry is not None:
                    sent.entry_id = await sent.entry
                removed = await self.redis.xdel(sent.stream, sent.entry_id) if sent.entry_id else 0
                if sent.job.kind == "generate":  # a worker may have taken it this instant: its start says
                    sent.saw(_reply(await self.inbox.get(sent.job.id, START_WAIT_S if not removed else 0.2)))
                if sent.worker_id is None:
                    self._cancelled(sent, reason, "taken off its stream" if removed else "already taken")
                    return
            pipe = self.redis.pipeline(transaction=False)
            self._tell_worker(pipe, sent, reason)
            await pipe.execute()
            self._cancelled(sent, reason, f"worker {sent.worker_id} told")
        except Exception as exc:
            log.warning("could not cancel job %s (%s): %s", sent.job.id, reason, exc)
        finally:
            self.inbox.forget(sent.job.id)

    async def _read_fleet(self, model: str) -> FleetSnapshot:
        """Callers that miss the fleet cache together share one read."""
        loop = asyncio.get_running_loop()
        reading = self._fleet_reads.get(model)
        if reading is None or reading.done() or reading.get_loop() is not loop:
            reading = self._fleet_reads[model] = loop.create_task(self._read_fleet_now(model))
        return await asyncio.shield(reading)

    async def _read_fleet_now(self, model: str) -> FleetSnapshot:
        read = FleetRead(self.keys, model, self.policy.clock.time())
        first = await self._pipeline(read.first())
        return read.snapshot(first, await self._pipeline(read.second(first)))

    async def _pipeline(self, calls: Calls) -> list[object]:
        replies: list[object] = await _queued(self.redis.pipeline(transaction=False), calls).execute()
        return replies

    async def _run(self, flow: Flow[R]) -> R:
        async with aclosing(self._drive(flow)) as items:
            async for item in items:
                if isinstance(item, _Done):
                    return item.value
        raise AssertionError("a flow always ends with its result")

    async def _chunks(self, flow: StreamFlow[GenerateResult]) -> AsyncIterator[StreamChunk]:
        async with aclosing(self._drive(flow)) as items:
            async for item in items:
                yield item if isinstance(item, StreamChunk) else StreamChunk("", True, item.value)

    # --- interactive lane

    async def embed(self, texts: list[str], model: str | None = None, *, deadline_s: float | None = None,
                    allow_cloud: bool = True, truncate: bool = False) -> EmbedResult:
        return await self._run(self.policy.embed(texts, model, deadline_s=deadline_s, allow_cloud=allow_cloud,
                                                 truncate=truncate))

    def stream(self, prompt: Prompt, model: str | None = None, *, max_tokens: int | None = None,
               temperature: float | None = None, deadline_s: float | None = None, allow_cloud: bool = True,
               deltas: bool = True, stop: list[str] | None = None) -> AsyncIterator[StreamChunk]:
        """Text as it is generated; the last chunk has `done=True` and the whole result (see
        `DispatchPolicy.stream`)."""
        return self._chunks(self.policy.stream(prompt, model, max_tokens=max_tokens, temperature=temperature,
                                               deadline_s=deadline_s, allow_cloud=allow_cloud, deltas=deltas,
                                               stop=stop))

    async def generate(self, prompt: Prompt, model: str | None = None, **options: Any) -> GenerateResult:
        async for chunk in self.stream(prompt, model, deltas=False, **options):
            if chunk.result is not None:
                return chunk.result
        raise AssertionError("a stream always ends with a done chunk")

    # --- bulk lane (plain RQ underneath, run in a thread)

    async def submit_embed(self, texts: list[str], model: str | None = None, *, truncate: bool = False,
                           **rq_options: Any) -> RQJob:
        return await self._run(self.policy.submit_embed(texts, model, truncate=truncate, rq_options=rq_options))

    async def submit_generate(self, prompt: Prompt, model: str | None = None, *, max_tokens: int | None = None,
                              temperature: float | None = None, **rq_options: Any) -> RQJob:
        return await self._run(self.policy.submit_generate(prompt, model, max_tokens=max_tokens,
                                                           temperature=temperature, rq_options=rq_options))

    async def cancel_bulk(self, job_id: str) -> RQJob:
        """As `Dispatcher.cancel_bulk`, in a thread (RQ's client is blocking)."""
        self._rq_redis = self._rq_redis or self.settings.redis()
        return await asyncio.to_thread(self._bulk_cancel, self._rq_redis, job_id)

    async def aclose(self) -> None:
        if self._cancelling:  # cancellations under way finish first (bounded: each waits START_WAIT_S at most)
            await asyncio.wait(set(self._cancelling), timeout=START_WAIT_S + WAIT_SLICE_S)
        await self.inbox.close()
        if self._http is not None:
            await self._http.aclose()
        if self._rq_redis is not None:
            self._rq_redis.close()
        await self.redis.aclose()


# --- what both drivers share


@dataclass
class _AsyncSent(_Sent):
    entry: asyncio.Future[str] | None = None
    """The XADD under way (a caller cancelled while it was queued still learns the entry's id)."""


@dataclass
class _Done(Generic[R]):
    """A flow's result, as its driver hands it on."""

    value: R


def _resume(flow: StreamFlow[R], reply: object, error: Exception | None) -> Effect[object] | StreamChunk | _Done[R]:
    """The flow's next effect or text, or its result, after handing it the last effect's reply (or
    throwing in its error)."""
    try:
        return flow.throw(error) if error is not None else flow.send(reply)
    except StopIteration as stop:
        value: R = stop.value
        return _Done(value)


def _queued(pipe: Any, calls: Calls) -> Any:
    """The commands queued on a pipeline of a sync or asyncio client."""
    for name, args in calls:
        getattr(pipe, name)(*args)
    return pipe


def _reply(message: dict[str, Any] | None) -> Reply | None:
    return None if message is None else read_reply(message)


def _queue(r: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=r, serializer=MsgpackSerializer)


def _rq(r: redis.Redis, effect: QueueLength | Enqueue | WaitReplicas) -> object:
    """The bulk lane's effects, on a blocking client (RQ has no other)."""
    match effect:
        case QueueLength(queue=name):
            return _queue(r, name).count
        case Enqueue(queue=name, task=task, kwargs=kwargs, options=options):
            return _queue(r, name).enqueue(task, kwargs=kwargs, **options)
        case WaitReplicas(replicas=replicas, timeout_ms=timeout_ms):
            return r.wait(replicas, timeout_ms)
