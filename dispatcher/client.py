"""What backends call: the two drivers of the dispatch flows, for both lanes.

The decisions (checks, route, wait, retry, cloud, bulk queue) are in `dispatcher/flow.py`, written once;
here each driver only carries out the effects a flow asks for, in one `_perform` each, the same table of
effects with and without `await`. `Dispatcher` blocks its caller's thread: a job goes out with its reply
key's BLPOP in the same round trip. `AsyncDispatcher` waits on a socket: its callers' jobs are sent
together (`dispatcher/sender.py`) and their replies come back through one shared reply list
(`dispatcher/inbox.py`), so 64 waiting requests hold two connections, not 64.

The bulk lane is RQ, whose client is blocking: `AsyncDispatcher` runs its enqueue in a thread on a
blocking Redis client, so the `rq.job.Job` it returns is the same object, with a working connection, as
the one `Dispatcher` returns (a job bound to an asyncio client could not answer `get_status()`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from contextlib import aclosing, closing
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
import redis
import redis.asyncio as aredis
from rq import Queue
from rq.job import Job as RQJob

from .effects import (
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
from .flow import DispatchPolicy
from .inbox import Inbox
from .models import Registry
from .protocol import Job, MsgpackSerializer, Prompt, Reply, app_tag, new_id, pack, read_reply, unpack
from .results import EmbedResult, GenerateResult, StreamChunk
from .routing import Calls, FleetRead, FleetSnapshot
from .sender import Sender
from .settings import WAIT_SLICE_S, CallerSettings

__all__ = ["AsyncDispatcher", "Dispatcher", "EmbedResult", "GenerateResult", "StreamChunk"]

R = TypeVar("R")


class _Driver:
    """What both drivers share: the policy, and the checks callers may run before submitting."""

    def __init__(self, settings: CallerSettings | None, registry: Registry | None):
        self.policy = DispatchPolicy(settings or CallerSettings(), registry)
        self.settings, self.registry, self.keys = self.policy.settings, self.policy.registry, self.policy.keys
        self.cloud = self.policy.cloud
        self.known_apps: set[str] = set()

    def stream_of(self, job: Job, node: str | None) -> tuple[str, str | None]:
        """The stream `job` goes to (its app's, at its priority), and its app when this process has not
        yet named that app to the workers (`Keys.apps`: until it succeeded once per app and process, never
        overriding the weight a facade configured)."""
        stream = self.keys.stream(job.model, node, app_tag(job.app, job.priority))
        return stream, job.app if job.app and job.app not in self.known_apps else None

    def check_texts(self, texts: Any) -> list[str]:
        return self.policy.limits.check_texts(texts)

    def check_prompt(self, prompt: Any, max_tokens: int | None, temperature: float | None) -> Prompt:
        return self.policy.limits.check_prompt(prompt, max_tokens, temperature)


class Dispatcher(_Driver):
    """Blocking dispatcher for synchronous backends."""

    def __init__(self, settings: CallerSettings | None = None, registry: Registry | None = None,
                 redis_client: redis.Redis | None = None):
        super().__init__(settings, registry)
        self.redis = redis_client or self.settings.redis()
        self._http: httpx.Client | None = None

    # --- the driver

    def _drive(self, flow: StreamFlow[R]) -> Generator[StreamChunk | _Done[R], None, None]:
        """Runs a flow: carries out its effects; yields its text, then its result."""
        reply: object = None
        error: Exception | None = None
        try:
            while True:
                item = _resume(flow, reply, error)
                reply, error = None, None
                if isinstance(item, _Done):
                    yield item
                    return
                if isinstance(item, StreamChunk):
                    yield item
                    continue
                try:
                    reply = self._perform(item)
                except Exception as exc:  # thrown into the flow, which decides what it means
                    error = exc
        finally:
            flow.close()  # also when the caller stops reading a stream early

    def _perform(self, effect: Effect[object]) -> object:
        match effect:
            case ReadFleet(model=model):
                read = FleetRead(self.keys, model, self.policy.clock.time())
                first = self._pipeline(read.first())
                return read.snapshot(first, self._pipeline(read.second(first)))
            case Send():
                return self._send(effect)
            case Receive(job=job, timeout_s=timeout_s):
                return self._receive(job.reply, timeout_s)
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

    def _send(self, send: Send) -> Reply | None:
        """XADD and the first BLPOP in one round trip; a long wait is made of `WAIT_SLICE_S` slices."""
        job = send.job
        job.reply = self.keys.reply(job.id)
        end = time.monotonic() + send.timeout_s
        pipe = self.redis.pipeline(transaction=False)
        stream, new_app = self.stream_of(job, send.node)
        if new_app:
            pipe.hsetnx(self.keys.apps, new_app, 1)
        pipe.xadd(stream, {"j": pack(job)})
        pipe.blpop([job.reply], timeout=min(send.timeout_s, WAIT_SLICE_S))
        popped: Any = pipe.execute()[-1]
        if new_app:
            self.known_apps.add(new_app)
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

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        self.redis.close()


class AsyncDispatcher(_Driver):
    """asyncio dispatcher: the facade's, and any async backend's. Waiting holds a socket, not a thread."""

    def __init__(self, settings: CallerSettings | None = None, registry: Registry | None = None,
                 redis_client: aredis.Redis | None = None):
        super().__init__(settings, registry)
        self.redis = redis_client or self.settings.aredis()
        self.inbox = Inbox(self.redis, self.keys.reply(f"inbox:{new_id()}"))
        self.sender = Sender(self.redis)
        self._http: httpx.AsyncClient | None = None
        self._rq_redis: redis.Redis | None = None
        self._fleet_reads: dict[str, asyncio.Task[FleetSnapshot]] = {}

    # --- the driver

    async def _drive(self, flow: StreamFlow[R]) -> AsyncGenerator[StreamChunk | _Done[R], None]:
        """As `Dispatcher._drive`. Replies of the flow's jobs that come after it ended are dropped."""
        reply: object = None
        error: Exception | None = None
        jobs: list[str] = []
        try:
            while True:
                item = _resume(flow, reply, error)
                reply, error = None, None
                if isinstance(item, _Done):
                    yield item
                    return
                if isinstance(item, StreamChunk):
                    yield item
                    continue
                try:
                    reply = await self._perform(item, jobs)
                except Exception as exc:  # thrown into the flow, which decides what it means
                    error = exc
        finally:
            flow.close()
            for job_id in jobs:
                self.inbox.forget(job_id)

    async def _perform(self, effect: Effect[object], jobs: list[str]) -> object:
        match effect:
            case ReadFleet(model=model):
                return await self._read_fleet(model)
            case Send(job=job, node=node, timeout_s=timeout_s):
                job.reply = self.inbox.key
                jobs.append(job.id)
                self.inbox.expect(job.id)
                stream, new_app = self.stream_of(job, node)
                if new_app:
                    await self.redis.hsetnx(self.keys.apps, new_app, 1)
                    self.known_apps.add(new_app)
                await self.sender.xadd(stream, {"j": pack(job)})
                return _reply(await self.inbox.get(job.id, timeout_s))
            case Receive(job=job, timeout_s=timeout_s):
                return _reply(await self.inbox.get(job.id, timeout_s))
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

    async def aclose(self) -> None:
        await self.inbox.close()
        if self._http is not None:
            await self._http.aclose()
        if self._rq_redis is not None:
            self._rq_redis.close()
        await self.redis.aclose()


# --- what both drivers share


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
