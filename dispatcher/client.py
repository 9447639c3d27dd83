"""What backends call: the two drivers of the dispatch flows, and the bulk lane.

The decisions (route, wait, retry, cloud) are in `dispatcher/flow.py`, written once; here each driver
only carries out the effects a flow asks for. `Dispatcher` blocks its caller's thread: a job goes out
with its reply key's BLPOP in the same round trip. `AsyncDispatcher` waits on a socket: its callers'
jobs are sent together (`dispatcher/sender.py`) and their replies come back through one shared reply
list (`dispatcher/inbox.py`), so 64 waiting requests hold two connections, not 64.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any

import httpx
import redis
import redis.asyncio as aredis
from rq import Queue
from rq.job import Job as RQJob

from .errors import NPUUnavailableError, OverloadedError
from .flow import Commands, Core, Decision, Effect, Flow, Http, LookUp, Pause, Receive, Send
from .inbox import Inbox
from .models import ModelSpec, Registry
from .protocol import EMBED_TASK, GENERATE_TASK, MsgpackSerializer, Prompt, new_id, pack, unpack
from .results import EmbedResult, GenerateResult, StreamChunk
from .sender import Sender
from .settings import WAIT_SLICE_S, Settings, get_settings

__all__ = ["AsyncDispatcher", "Dispatcher", "EmbedResult", "GenerateResult", "StreamChunk"]


class _Driver:
    """What both drivers share: the core, and the checks callers may run before submitting."""

    def __init__(self, settings: Settings | None, registry: Registry | None):
        self.core = Core(settings or get_settings(), registry)
        self.settings, self.registry, self.keys = self.core.settings, self.core.registry, self.core.keys
        self.cloud = self.core.cloud

    def check_texts(self, texts: Any) -> list[str]:
        return self.core.limits.check_texts(texts)

    def check_prompt(self, prompt: Any, max_tokens: int | None, temperature: float | None) -> Prompt:
        return self.core.limits.check_prompt(prompt, max_tokens, temperature)


class Dispatcher(_Driver):
    """Blocking dispatcher for synchronous backends."""

    def __init__(self, settings: Settings | None = None, registry: Registry | None = None,
                 redis_client: redis.Redis | None = None):
        super().__init__(settings, registry)
        self.redis = redis_client or self.settings.redis()
        self._http: httpx.Client | None = None

    def _drive(self, flow: Flow) -> Generator[Any, None, None]:
        """Runs a flow: carries out its effects, and yields its outputs."""
        value: Any = None
        error: BaseException | None = None
        try:
            while (item := _resume(flow, value, error)) is not _END:
                value, error = None, None
                if not isinstance(item, Effect):
                    yield item
                    continue
                try:
                    value = self._perform(item)
                except Exception as exc:  # thrown into the flow, which decides what it means
                    error = exc
        finally:
            flow.close()  # also when the caller stops reading a stream early

    def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Commands):
            return _pipeline(self.redis, effect).execute()
        if isinstance(effect, LookUp):
            return self.core.cached_route(effect.model) or _only(self._drive(self.core.look_up(effect.model)))
        if isinstance(effect, Send):
            return self._send(effect)
        if isinstance(effect, Receive):
            return self._receive(effect.job.reply, effect.timeout_s)
        if isinstance(effect, Pause):
            time.sleep(effect.seconds)
            return None
        if isinstance(effect, Http):
            if self._http is None:
                self._http = httpx.Client()
            return self._http.send(effect.request)
        raise TypeError(f"unknown effect {effect!r}")

    def _send(self, send: Send) -> dict[str, Any] | None:
        """XADD and the first BLPOP in one round trip; a long wait is made of `WAIT_SLICE_S` slices."""
        job = send.job
        job.reply = self.keys.reply(job.id)
        end = time.monotonic() + send.timeout_s
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(self.keys.stream(job.model, send.node), {"j": pack(job)})
        pipe.blpop([job.reply], timeout=min(send.timeout_s, WAIT_SLICE_S))
        raw: Any = pipe.execute()[1]
        if raw is not None:
            return _message(raw[1])
        return self._receive(job.reply, end - time.monotonic())

    def _receive(self, key: str, timeout_s: float) -> dict[str, Any] | None:
        end = time.monotonic() + timeout_s
        while (left := end - time.monotonic()) > 0.01:
            raw: Any = self.redis.blpop([key], timeout=min(left, WAIT_SLICE_S))
            if raw is not None:
                return _message(raw[1])
        return None

    def embed(self, texts: list[str], model: str | None = None, *, deadline_s: float | None = None,
              allow_cloud: bool = True, truncate: bool = False) -> EmbedResult:
        result: EmbedResult = _only(self._drive(self.core.embed(
            texts, model, deadline_s=deadline_s, allow_cloud=allow_cloud, truncate=truncate)))
        return result

    def stream(self, prompt: Prompt, model: str | None = None, *, max_tokens: int | None = None,
               temperature: float | None = None, deadline_s: float | None = None, allow_cloud: bool = True,
               deltas: bool = True, stop: list[str] | None = None) -> Iterator[StreamChunk]:
        """Text as it is generated; the last chunk has `done=True` and the whole result (see `Core.stream`)."""
        return self._drive(self.core.stream(prompt, model, max_tokens=max_tokens, temperature=temperature,
                                            deadline_s=deadline_s, allow_cloud=allow_cloud, deltas=deltas,
                                            stop=stop))

    def generate(self, prompt: Prompt, model: str | None = None, **options: Any) -> GenerateResult:
        """The whole text at once. Options as for `stream`."""
        return _last(self.stream(prompt, model, deltas=False, **options))

    # --- bulk lane (plain RQ underneath)

    def bulk_queue(self, model: str) -> Queue:
        """The RQ queue of a model's bulk lane, for backends that want RQ's own API."""
        return Queue(self.keys.queue(self.registry.get(model).name), connection=self.redis,
                     serializer=MsgpackSerializer)

    def submit_embed(self, texts: list[str], model: str | None = None, *, truncate: bool = False,
                     **rq_options: Any) -> RQJob:
        spec = self.core.spec(model, "embedding")
        texts = self.check_texts(texts)
        return self._submit(spec, EMBED_TASK, {"texts": texts, "model": spec.name, "truncate": truncate},
                            rq_options)

    def submit_generate(self, prompt: Prompt, model: str | None = None, *, max_tokens: int | None = None,
                        temperature: float | None = None, **rq_options: Any) -> RQJob:
        spec = self.core.spec(model, "generation")
        prompt = self.check_prompt(prompt, max_tokens, temperature)
        kwargs = {"prompt": prompt, "model": spec.name, "max_tokens": self.core.new_tokens(max_tokens),
                  "temperature": temperature}
        return self._submit(spec, GENERATE_TASK, kwargs, rq_options)

    def _submit(self, spec: ModelSpec, task: str, kwargs: dict[str, Any], rq_options: dict[str, Any]) -> RQJob:
        rq_options.setdefault("result_ttl", self.settings.bulk_result_ttl_s)
        rq_options.setdefault("job_timeout", self.settings.bulk_job_timeout_s)
        route, node = self._perform(LookUp(spec.name))
        queue = Queue(self.keys.queue(spec.name, node if route == "ok" else None), connection=self.redis,
                      serializer=MsgpackSerializer)  # with no live worker, the shared queue waits for one
        if queue.count >= self.settings.max_bulk_queue:
            raise OverloadedError(f"{spec.name!r} has {self.settings.max_bulk_queue} or more bulk jobs waiting; "
                                  "retry later", self.settings.retry_after_s, limit=self.settings.max_bulk_queue)
        job = queue.enqueue(task, kwargs=kwargs, **rq_options)
        self._wait_replicas(job)
        return job

    def _wait_replicas(self, job: RQJob) -> None:
        """Replication is asynchronous: a job only the master holds dies with it in a failover. Waiting
        for a replica (Redis WAIT, about 0.1 ms on a loopback replica) turns that loss into an error the
        submitter sees and can act on (submit again: jobs are idempotent)."""
        want, s = self.settings.bulk_wait_replicas, self.settings
        if want and (got := self.redis.wait(want, s.bulk_replica_timeout_ms)) < want:
            raise NPUUnavailableError(f"bulk job {job.id} was queued, but {got} of {want} replica(s) confirmed it "
                                      f"within {s.bulk_replica_timeout_ms} ms: a failover now could lose it; "
                                      "submit it again if it does not finish (jobs are idempotent)",
                                      reason="not_replicated", job_id=job.id)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        self.redis.close()


class AsyncDispatcher(_Driver):
    """asyncio dispatcher: the facade's, and any async backend's. Waiting holds a socket, not a thread."""

    def __init__(self, settings: Settings | None = None, registry: Registry | None = None,
                 redis_client: aredis.Redis | None = None):
        super().__init__(settings, registry)
        self.redis = redis_client or self.settings.aredis()
        self.inbox = Inbox(self.redis, self.keys.reply(f"inbox:{new_id()}"))
        self.sender = Sender(self.redis)
        self._http: httpx.AsyncClient | None = None
        self._lookups: dict[str, asyncio.Task[Decision]] = {}

    async def _drive(self, flow: Flow) -> AsyncGenerator[Any, None]:
        """As `Dispatcher._drive`. Replies of the flow's jobs that come after it ended are dropped."""
        value: Any = None
        error: BaseException | None = None
        jobs: list[str] = []
        try:
            while (item := _resume(flow, value, error)) is not _END:
                value, error = None, None
                if not isinstance(item, Effect):
                    yield item
                    continue
                try:
                    value = await self._perform(item, jobs)
                except Exception as exc:  # thrown into the flow, which decides what it means
                    error = exc
        finally:
            flow.close()
            for job_id in jobs:
                self.inbox.forget(job_id)

    async def _perform(self, effect: Effect, jobs: list[str]) -> Any:
        if isinstance(effect, Commands):
            return await _pipeline(self.redis, effect).execute()
        if isinstance(effect, LookUp):
            return self.core.cached_route(effect.model) or await self._look_up(effect.model)
        if isinstance(effect, Send):
            job = effect.job
            job.reply = self.inbox.key
            jobs.append(job.id)
            self.inbox.expect(job.id)
            await self.sender.xadd(self.keys.stream(job.model, effect.node), {"j": pack(job)})
            return await self.inbox.get(job.id, effect.timeout_s)
        if isinstance(effect, Receive):
            return await self.inbox.get(effect.job.id, effect.timeout_s)
        if isinstance(effect, Pause):
            await asyncio.sleep(effect.seconds)
            return None
        if isinstance(effect, Http):
            if self._http is None:
                self._http = httpx.AsyncClient()
            return await self._http.send(effect.request)
        raise TypeError(f"unknown effect {effect!r}")

    async def _look_up(self, model: str) -> Decision:
        """Callers that miss the route cache together share one lookup."""
        loop = asyncio.get_running_loop()
        lookup = self._lookups.get(model)
        if lookup is None or lookup.done() or lookup.get_loop() is not loop:
            lookup = self._lookups[model] = loop.create_task(_aonly(self._drive(self.core.look_up(model))))
        decision = await asyncio.shield(lookup)
        return self.core.cached_route(model) or decision

    async def embed(self, texts: list[str], model: str | None = None, *, deadline_s: float | None = None,
                    allow_cloud: bool = True, truncate: bool = False) -> EmbedResult:
        result: EmbedResult = await _aonly(self._drive(self.core.embed(
            texts, model, deadline_s=deadline_s, allow_cloud=allow_cloud, truncate=truncate)))
        return result

    def stream(self, prompt: Prompt, model: str | None = None, *, max_tokens: int | None = None,
               temperature: float | None = None, deadline_s: float | None = None, allow_cloud: bool = True,
               deltas: bool = True, stop: list[str] | None = None) -> AsyncIterator[StreamChunk]:
        """Text as it is generated; the last chunk has `done=True` and the whole result (see `Core.stream`)."""
        return self._drive(self.core.stream(prompt, model, max_tokens=max_tokens, temperature=temperature,
                                            deadline_s=deadline_s, allow_cloud=allow_cloud, deltas=deltas,
                                            stop=stop))

    async def generate(self, prompt: Prompt, model: str | None = None, **options: Any) -> GenerateResult:
        async for chunk in self.stream(prompt, model, deltas=False, **options):
            if chunk.done and chunk.result:
                return chunk.result
        raise AssertionError("a stream always ends with a done chunk")

    async def aclose(self) -> None:
        await self.inbox.close()
        if self._http is not None:
            await self._http.aclose()
        await self.redis.aclose()


_END = object()
"""What `_resume` returns once the flow has finished."""


def _resume(flow: Flow, value: Any, error: BaseException | None) -> Any:
    """The flow's next effect or output, after handing it the last effect's result (or throwing in its error)."""
    try:
        return flow.throw(error) if error is not None else flow.send(value)
    except StopIteration:
        return _END


def _pipeline(r: Any, effect: Commands) -> Any:
    """The effect's commands queued on one pipeline (no transaction) of a sync or asyncio client."""
    pipe = r.pipeline(transaction=False)
    for name, args in effect.calls:
        getattr(pipe, name)(*args)
    return pipe


def _message(raw: bytes) -> dict[str, Any]:
    message: dict[str, Any] = unpack(raw)
    return message


def _only(outputs: Generator[Any, None, None]) -> Any:
    """The one output of a flow that has one (an embedding, a route)."""
    try:
        for output in outputs:
            return output
    finally:
        outputs.close()
    raise AssertionError("the flow ended without an output")


async def _aonly(outputs: AsyncGenerator[Any, None]) -> Any:
    try:
        async for output in outputs:
            return output
    finally:
        await outputs.aclose()
    raise AssertionError("the flow ended without an output")


def _last(chunks: Iterator[StreamChunk]) -> GenerateResult:
    for chunk in chunks:
        if chunk.done and chunk.result:
            return chunk.result
    raise AssertionError("a stream always ends with a done chunk")
