"""What backends call: wait on the interactive lane with a deadline, or submit to the bulk lane.

The interactive path is one round trip to Redis (XADD the job and BLPOP its reply key, pipelined),
so waiting costs no thread: the async form waits on a socket, the sync form blocks its caller only.
When no live worker serves the model (heartbeats say so), or its queue is full, the caller does not
wait at all; when the deadline passes, the late job stays behind for the worker to drop; when Redis is
unreachable nothing can be queued. All of these go to the cloud if allowed, else raise a clear error.
A generation whose worker dies before any text reached the caller is submitted once more.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import redis
import redis.asyncio as aredis
from rq import Queue
from rq.job import Job as RQJob

from .cloud import CloudClient
from .errors import (
    REDIS_DOWN,
    InputTooLargeError,
    InvalidInputError,
    JobFailedError,
    NPUError,
    NPUUnavailableError,
    OverloadedError,
    WorkerLostError,
)
from .inbox import Inbox, Message
from .logs import request_id
from .models import ModelSpec, Registry
from .nodes import read_load_balancing
from .protocol import (
    EMBED_TASK,
    GENERATE_TASK,
    DeltaReply,
    DoneReply,
    EmbeddingReply,
    ErrorReply,
    Heartbeat,
    Job,
    Keys,
    MsgpackSerializer,
    Prompt,
    Reply,
    StartReply,
    new_id,
    pack,
    read_reply,
    unpack,
)
from .routing import Route as FleetRoute
from .routing import Router
from .sender import Sender
from .settings import WAIT_SLICE_S, Settings, get_settings

ROUTE_CACHE_S = 0.5
"""How long a positive liveness answer (and the backlog read with it) is trusted, so a busy caller does
not ask Redis every time; a "no worker" answer is never cached."""
GENERATION_ATTEMPTS = 2
"""A generation whose worker died before it streamed anything is submitted once more."""

Route = Literal["ok", "no_worker", "overloaded"]
Waiting = asyncio.Queue[Message]
"""Where an async caller's replies arrive (see `dispatcher.inbox`)."""

NOT_BLANK = r"[^\s\x1c-\x1f\x85\ufeff]"
"""A character that makes a text or prompt non-blank: not whitespace, nor a byte-order mark. Written so
Python's and ECMA-262's regex engines read it alike (the OpenAPI schema states it as the pattern)."""
_NOT_BLANK = re.compile(NOT_BLANK)


@dataclass
class EmbedResult:
    vectors: np.ndarray
    """float32 array, one row per text, in request order."""
    model: str
    source: Literal["npu", "cloud"]
    device: str | None = None
    node_id: str | None = None
    token_counts: list[int] | None = None
    truncated: list[bool] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    fallback_reason: str | None = None


@dataclass
class GenerateResult:
    text: str
    model: str
    source: Literal["npu", "cloud"]
    device: str | None = None
    node_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    fallback_reason: str | None = None
    finish_reason: str | None = None


@dataclass
class StreamChunk:
    """A piece of generated text; the last one has `done=True` and the whole `result`."""

    delta: str
    done: bool = False
    result: GenerateResult | None = None


class _Base:
    """Checks, job building and reply decoding shared by the sync and async dispatchers."""

    def __init__(self, settings: Settings | None = None, registry: Registry | None = None):
        self.settings = settings or get_settings()
        self.registry = registry or Registry.load(self.settings)
        self.keys = Keys(self.settings.key_prefix)
        self.cloud = CloudClient(self.settings)
        self._routes: dict[str, tuple[float, Route, FleetRoute | None]] = {}
        self.router = Router()

    def _spec(self, model: str | None, task: str) -> ModelSpec:
        spec = self.registry.get(model or self.registry.default(task))
        if spec.task != task:
            raise InvalidInputError(f"model {spec.name!r} is a {spec.task} model, not {task}",
                                    code="wrong_task")
        return spec

    def check_texts(self, texts: Any) -> list[str]:
        s = self.settings
        if isinstance(texts, str) or not isinstance(texts, list) or not texts:
            raise InvalidInputError("texts must be a non-empty list of strings")
        if len(texts) > s.max_texts:
            raise InputTooLargeError(f"{len(texts)} texts in one request; the limit is {s.max_texts}",
                                     code="too_many_texts", limit=s.max_texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not _NOT_BLANK.search(text):
                raise InvalidInputError(f"texts[{i}] must be a non-empty string", index=i)
            if len(text) > s.max_text_chars:
                raise InputTooLargeError(
                    f"texts[{i}] has {len(text)} characters; the limit is {s.max_text_chars}",
                    code="input_too_large", index=i, limit=s.max_text_chars)
        return texts

    def check_prompt(self, prompt: Any, max_tokens: int | None, temperature: float | None) -> Prompt:
        s = self.settings
        if isinstance(prompt, list):
            roles = {"system", "user", "assistant"}
            if not prompt or not all(isinstance(m, dict) and m.get("role") in roles
                                     and isinstance(m.get("content"), str) for m in prompt):
                raise InvalidInputError('messages must be a non-empty list of {"role": "system"|"user"|"assistant", '
                                        '"content": string}')
            chars = sum(len(m["content"]) for m in prompt)
            if not any(_NOT_BLANK.search(m["content"]) for m in prompt):
                raise InvalidInputError("messages are all empty")
        elif isinstance(prompt, str) and _NOT_BLANK.search(prompt):
            chars = len(prompt)
        else:
            raise InvalidInputError("prompt must be a non-empty string")
        if chars > s.max_prompt_chars:
            raise InputTooLargeError(f"prompt has {chars} characters; the limit is {s.max_prompt_chars}",
                                     code="input_too_large", limit=s.max_prompt_chars)
        if max_tokens is not None and not 1 <= max_tokens <= s.max_new_tokens:
            raise InvalidInputError(f"max_tokens must be between 1 and {s.max_new_tokens}",
                                    limit=s.max_new_tokens)
        if temperature is not None and not 0 <= temperature <= 2:
            raise InvalidInputError("temperature must be between 0 and 2")
        return prompt

    def new_tokens(self, max_tokens: int | None) -> int:
        """What a generation may produce: as asked, else the default, which never exceeds the limit."""
        s = self.settings
        return max_tokens if max_tokens is not None else min(s.default_new_tokens, s.max_new_tokens)

    def _job(self, spec: ModelSpec, deadline_s: float | None, **fields: Any) -> tuple[Job, float]:
        timeout = deadline_s if deadline_s is not None else self.settings.deadline_s
        if timeout <= 0:
            raise InvalidInputError("deadline must be positive")
        job = Job(model=spec.name, reply="", deadline=time.time() + timeout, request_id=request_id.get(), **fields)
        job.reply = self.keys.reply(job.id)
        return job, timeout

    def _cached_route(self, model: str) -> tuple[Route, str | None] | None:
        cached = self._routes.get(model)
        if cached is None or cached[0] <= time.monotonic():
            return None
        return self._decide(model, cached[1], cached[2])

    def _decide(self, model: str, status: Route, fleet: FleetRoute | None) -> tuple[Route, str | None]:
        """The node for this job, by the stored strategy; `no_worker` when affinity allows no live node."""
        if status != "ok" or fleet is None:
            return status, None
        node = self.router.choose(model, fleet)
        return ("ok", node) if node is not None else ("no_worker", None)

    @staticmethod
    def _route_reads(pipe: Any, keys: Keys, model: str) -> None:
        pipe.get(keys.load_balancing)
        pipe.zrangebyscore(keys.live(model), time.time(), "+inf")

    @staticmethod
    def _state_reads(pipe: Any, keys: Keys, model: str, worker_ids: list[bytes]) -> list[str]:
        """Heartbeats of the live workers, and the backlog of the model's shared and per-node streams."""
        nodes = sorted({w.decode().rsplit(":", 2)[0] for w in worker_ids})
        pipe.mget([keys.worker(w.decode()) for w in worker_ids])
        pipe.xlen(keys.stream(model))
        for node in nodes:
            pipe.xlen(keys.stream(model, node))
        return nodes

    def _note_route(self, model: str, lb_raw: bytes | None, state: list[Any]) -> tuple[Route, str | None]:
        """Where jobs for `model` go for the next `ROUTE_CACHE_S`: a node's stream, or (no worker, full
        queue) elsewhere. A "no worker" answer is not cached."""
        beats = [Heartbeat.model_validate(unpack(raw)) for raw in state[0] if raw]
        fleet = FleetRoute.from_beats(model, beats, read_load_balancing(lb_raw))
        if not fleet.nodes:
            self._routes.pop(model, None)
            return "no_worker", None
        status: Route = "overloaded" if sum(state[1:]) >= self.settings.max_queue else "ok"
        self._routes[model] = (time.monotonic() + ROUTE_CACHE_S, status, fleet)
        return self._decide(model, status, fleet)

    def _forget_route(self, model: str) -> None:
        self._routes.pop(model, None)

    def _cloud_allowed(self, spec: ModelSpec, allow_cloud: bool) -> bool:
        return allow_cloud and self.cloud.available_for(spec)

    @staticmethod
    def _decode(data: dict[str, Any]) -> Reply:
        reply = read_reply(data)
        if isinstance(reply, ErrorReply):
            raise reply.exception()
        return reply

    @staticmethod
    def _timings(started: float, reply: EmbeddingReply | DoneReply | None = None) -> dict[str, float]:
        timings = {"total_ms": round((time.perf_counter() - started) * 1000, 3)}
        if reply is not None:
            timings["queue_ms"] = round(reply.queue_ms or 0.0, 3)
            timings["inference_ms"] = round(reply.inference_ms or 0.0, 3)
        return timings

    def _embed_result(self, spec: ModelSpec, reply: Reply, started: float) -> EmbedResult:
        assert isinstance(reply, EmbeddingReply), f"an embedding job was answered with {type(reply).__name__}"
        return EmbedResult(reply.matrix(), spec.name, "npu", reply.device, reply.node_id, reply.token_counts,
                           reply.truncated, self._timings(started, reply))

    def _generate_result(self, spec: ModelSpec, reply: Reply, started: float) -> GenerateResult:
        assert isinstance(reply, DoneReply), f"a generation ended with {type(reply).__name__}"
        timings = self._timings(started, reply)
        if reply.ttft_ms is not None:
            timings["ttft_ms"] = round(reply.ttft_ms, 3)
        return GenerateResult(reply.text or "", spec.name, "npu", reply.device, reply.node_id,
                              reply.prompt_tokens, reply.completion_tokens, timings, finish_reason=reply.finish_reason)

    def _stalled(self) -> JobFailedError:
        return JobFailedError(f"the worker went silent for {self.settings.generation_idle_s:.0f}s during "
                              "generation", code="generation_stalled", status=504)

    def _lost(self, worker_id: str) -> WorkerLostError:
        return WorkerLostError(f"worker {worker_id} died during the generation (its heartbeat expired)")

    @property
    def _silence_slice_s(self) -> float:
        """How long a generation may be silent before the caller checks that its worker still lives."""
        return min(WAIT_SLICE_S, self.settings.heartbeat_interval_s)

    def _cloud_chunks(self, spec: ModelSpec, text: str, p_tokens: int | None, c_tokens: int | None,
                      started: float, reason: str) -> list[StreamChunk]:
        result = GenerateResult(text, spec.name, "cloud", None, None, p_tokens, c_tokens, self._timings(started),
                                fallback_reason=reason)
        return [StreamChunk(text), StreamChunk("", True, result)]

    def _no_cloud(self, spec: ModelSpec, reason: str, allow_cloud: bool) -> NPUError:
        why = {"no_worker": f"no live worker serves {spec.name!r}",
               "deadline": f"no worker answered for {spec.name!r} before the deadline",
               "worker_lost": f"the workers running this {spec.name!r} job died",
               "overloaded": f"{spec.name!r} has {self.settings.max_queue} or more jobs waiting"}[reason]
        tail = ("cloud fallback was not allowed for this call" if not allow_cloud
                else "no cloud fallback is configured for it")
        if reason == "overloaded":
            return OverloadedError(f"{why}, and {tail}; retry later", self.settings.retry_after_s,
                                   limit=self.settings.max_queue)
        return NPUUnavailableError(f"{why}, and {tail}", reason=reason)


class Dispatcher(_Base):
    """Blocking dispatcher for synchronous backends."""

    def __init__(self, settings: Settings | None = None, registry: Registry | None = None,
                 redis_client: redis.Redis | None = None):
        super().__init__(settings, registry)
        self.redis = redis_client or self.settings.redis()

    def live_workers(self, model: str) -> int:
        return int(self.redis.zcount(self.keys.live(model), time.time(), "+inf"))

    def _route(self, model: str) -> tuple[Route, str | None]:
        """The node for a job, from the fleet's state read at most every `ROUTE_CACHE_S` (two round trips)."""
        if (cached := self._cached_route(model)) is not None:
            return cached
        pipe = self.redis.pipeline(transaction=False)
        self._route_reads(pipe, self.keys, model)
        lb_raw, worker_ids = pipe.execute()
        if not worker_ids:
            return self._note_route(model, lb_raw, [[]])
        pipe = self.redis.pipeline(transaction=False)
        self._state_reads(pipe, self.keys, model, worker_ids)
        return self._note_route(model, lb_raw, pipe.execute())

    def _call(self, job: Job, timeout: float, node: str | None) -> Any:
        end = time.monotonic() + timeout
        self.router.in_flight[node or ""] += 1
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(self.keys.stream(job.model, node), {"j": pack(job)})
            pipe.blpop([job.reply], timeout=min(timeout, WAIT_SLICE_S))
            raw = pipe.execute()[1]
            while raw is None and (left := end - time.monotonic()) > 0.01:
                raw = self.redis.blpop([job.reply], timeout=min(left, WAIT_SLICE_S))
            return raw
        finally:
            self.router.in_flight[node or ""] -= 1

    def embed(self, texts: list[str], model: str | None = None, *, deadline_s: float | None = None,
              allow_cloud: bool = True, truncate: bool = False) -> EmbedResult:
        started = time.perf_counter()
        spec = self._spec(model, "embedding")
        texts = self.check_texts(texts)
        try:
            reason, node = self._route(spec.name)
            if reason == "ok":
                job, timeout = self._job(spec, deadline_s, kind="embed", texts=texts, truncate=truncate)
                raw = self._call(job, timeout, node)
                if raw is not None:
                    return self._embed_result(spec, self._decode(unpack(raw[1])), started)
                reason = "deadline"
        except REDIS_DOWN:
            if not self._cloud_allowed(spec, allow_cloud):
                raise
            reason = "redis_unavailable"
        if not self._cloud_allowed(spec, allow_cloud):
            raise self._no_cloud(spec, reason, allow_cloud)
        vectors = self.cloud.embed(spec, texts)
        return EmbedResult(vectors, spec.name, "cloud", timings=self._timings(started), fallback_reason=reason)

    def _wait(self, key: str, worker_id: str | None) -> Reply:
        """Next message of a started generation; a dead or stalled worker is an error, not a hang."""
        end = time.monotonic() + self.settings.generation_idle_s
        while (left := end - time.monotonic()) > 0.01:
            raw = self.redis.blpop([key], timeout=min(left, self._silence_slice_s))
            if raw is not None:
                return self._decode(unpack(raw[1]))
            if worker_id and not self.redis.exists(self.keys.worker(worker_id)):
                raise self._lost(worker_id)
        raise self._stalled()

    def stream(self, prompt: Prompt, model: str | None = None, *, max_tokens: int | None = None,
               temperature: float | None = None, deadline_s: float | None = None, allow_cloud: bool = True,
               deltas: bool = True) -> Iterator[StreamChunk]:
        """Text as it is generated; the last chunk has `done=True` and the whole result.

        The deadline covers the wait for a worker to start; a started generation runs to its end. A
        worker that dies before any text was yielded costs a retry (then the cloud); after, `WorkerLostError`.
        """
        started = time.perf_counter()
        spec = self._spec(model, "generation")
        prompt = self.check_prompt(prompt, max_tokens, temperature)
        max_tokens = self.new_tokens(max_tokens)
        sent, reason = False, "no_worker"
        try:
            for _ in range(GENERATION_ATTEMPTS):
                route, node = self._route(spec.name)
                if route != "ok":
                    reason = reason if reason == "worker_lost" else route
                    break
                job, timeout = self._job(spec, deadline_s, kind="generate", prompt=prompt, max_tokens=max_tokens,
                                         temperature=temperature, stream=deltas)
                raw = self._call(job, timeout, node)
                if raw is None:
                    reason = "deadline"
                    break
                reply = self._decode(unpack(raw[1]))
                worker_id = reply.worker_id if isinstance(reply, StartReply) else None
                try:
                    while isinstance(reply, (StartReply, DeltaReply)):
                        if isinstance(reply, DeltaReply):
                            sent = True
                            yield StreamChunk(reply.delta)
                        reply = self._wait(job.reply, worker_id)
                except WorkerLostError:
                    if sent:
                        raise
                    self._forget_route(spec.name)
                    reason = "worker_lost"
                    continue
                yield StreamChunk("", True, self._generate_result(spec, reply, started))
                return
        except REDIS_DOWN:
            if sent or not self._cloud_allowed(spec, allow_cloud):
                raise
            reason = "redis_unavailable"
        if not self._cloud_allowed(spec, allow_cloud):
            raise self._no_cloud(spec, reason, allow_cloud)
        text, p_tokens, c_tokens = self.cloud.generate(spec, prompt, max_tokens, temperature)
        yield from self._cloud_chunks(spec, text, p_tokens, c_tokens, started, reason)

    def generate(self, prompt: Prompt, model: str | None = None, **options: Any) -> GenerateResult:
        """The whole text at once. Options as for `stream`."""
        for chunk in self.stream(prompt, model, deltas=False, **options):
            if chunk.done and chunk.result:
                return chunk.result
        raise AssertionError("a stream always ends with a done chunk")

    # --- bulk lane (plain RQ underneath)

    def bulk_queue(self, model: str) -> Queue:
        """The RQ queue of a model's bulk lane, for backends that want RQ's own API."""
        return Queue(self.keys.queue(self.registry.get(model).name), connection=self.redis,
                     serializer=MsgpackSerializer)

    def submit_embed(self, texts: list[str], model: str | None = None, *, truncate: bool = False,
                     **rq_options: Any) -> RQJob:
        spec = self._spec(model, "embedding")
        texts = self.check_texts(texts)
        return self._submit(spec, EMBED_TASK, {"texts": texts, "model": spec.name, "truncate": truncate},
                            rq_options)

    def submit_generate(self, prompt: Prompt, model: str | None = None, *, max_tokens: int | None = None,
                        temperature: float | None = None, **rq_options: Any) -> RQJob:
        spec = self._spec(model, "generation")
        prompt = self.check_prompt(prompt, max_tokens, temperature)
        max_tokens = self.new_tokens(max_tokens)
        kwargs = {"prompt": prompt, "model": spec.name, "max_tokens": max_tokens, "temperature": temperature}
        return self._submit(spec, GENERATE_TASK, kwargs, rq_options)

    def _submit(self, spec: ModelSpec, task: str, kwargs: dict[str, Any], rq_options: dict[str, Any]) -> RQJob:
        rq_options.setdefault("result_ttl", self.settings.bulk_result_ttl_s)
        rq_options.setdefault("job_timeout", self.settings.bulk_job_timeout_s)
        route, node = self._route(spec.name)
        queue = Queue(self.keys.queue(spec.name, node if route == "ok" else None), connection=self.redis,
                      serializer=MsgpackSerializer)  # with no live worker, the shared queue waits for one
        if queue.count >= self.settings.max_bulk_queue:
            raise OverloadedError(f"{spec.name!r} has {self.settings.max_bulk_queue} or more bulk jobs waiting; "
                                  "retry later", self.settings.retry_after_s, limit=self.settings.max_bulk_queue)
        return queue.enqueue(task, kwargs=kwargs, **rq_options)

    def close(self) -> None:
        self.cloud.close()
        self.redis.close()


class AsyncDispatcher(_Base):
    """asyncio dispatcher: the facade's, and any async backend's. Waiting holds a socket, not a thread."""

    def __init__(self, settings: Settings | None = None, registry: Registry | None = None,
                 redis_client: aredis.Redis | None = None):
        super().__init__(settings, registry)
        self.redis = redis_client or self.settings.aredis()
        self.inbox = Inbox(self.redis, self.keys.reply(f"inbox:{new_id()}"))
        self.sender = Sender(self.redis)
        self._lookups: dict[str, asyncio.Task[tuple[Route, str | None]]] = {}

    async def live_workers(self, model: str) -> int:
        return int(await self.redis.zcount(self.keys.live(model), time.time(), "+inf"))

    async def _route(self, model: str) -> tuple[Route, str | None]:
        """As `Dispatcher._route`; callers that miss the cache together share one lookup."""
        if (cached := self._cached_route(model)) is not None:
            return cached
        loop = asyncio.get_running_loop()
        lookup = self._lookups.get(model)
        if lookup is None or lookup.done() or lookup.get_loop() is not loop:
            lookup = self._lookups[model] = loop.create_task(self._look_up(model))
        route = await asyncio.shield(lookup)
        return self._cached_route(model) or route

    async def _look_up(self, model: str) -> tuple[Route, str | None]:
        pipe = self.redis.pipeline(transaction=False)
        self._route_reads(pipe, self.keys, model)
        lb_raw, worker_ids = await pipe.execute()
        if not worker_ids:
            return self._note_route(model, lb_raw, [[]])
        pipe = self.redis.pipeline(transaction=False)
        self._state_reads(pipe, self.keys, model, worker_ids)
        return self._note_route(model, lb_raw, await pipe.execute())

    async def _call(self, job: Job, timeout: float, node: str | None) -> tuple[Waiting, dict[str, Any] | None]:
        """Send a job and wait for its first reply. The caller `forget`s the job in the inbox when done."""
        self.router.in_flight[node or ""] += 1
        try:
            job.reply = self.inbox.key
            waiting = self.inbox.expect(job.id)
            await self.sender.xadd(self.keys.stream(job.model, node), {"j": pack(job)})
            return waiting, await self.inbox.get(waiting, timeout)
        finally:
            self.router.in_flight[node or ""] -= 1

    async def embed(self, texts: list[str], model: str | None = None, *, deadline_s: float | None = None,
                    allow_cloud: bool = True, truncate: bool = False) -> EmbedResult:
        started = time.perf_counter()
        spec = self._spec(model, "embedding")
        texts = self.check_texts(texts)
        try:
            reason, node = await self._route(spec.name)
            if reason == "ok":
                job, timeout = self._job(spec, deadline_s, kind="embed", texts=texts, truncate=truncate)
                try:
                    _, message = await self._call(job, timeout, node)
                finally:
                    self.inbox.forget(job.id)
                if message is not None:
                    return self._embed_result(spec, self._decode(message), started)
                reason = "deadline"
        except REDIS_DOWN:
            if not self._cloud_allowed(spec, allow_cloud):
                raise
            reason = "redis_unavailable"
        if not self._cloud_allowed(spec, allow_cloud):
            raise self._no_cloud(spec, reason, allow_cloud)
        vectors = await self.cloud.aembed(spec, texts)
        return EmbedResult(vectors, spec.name, "cloud", timings=self._timings(started), fallback_reason=reason)

    async def _wait(self, waiting: Waiting, worker_id: str | None) -> Reply:
        end = time.monotonic() + self.settings.generation_idle_s
        while (left := end - time.monotonic()) > 0.01:
            message = await self.inbox.get(waiting, min(left, self._silence_slice_s))
            if message is not None:
                return self._decode(message)
            if worker_id and not await self.redis.exists(self.keys.worker(worker_id)):
                raise self._lost(worker_id)
        raise self._stalled()

    async def stream(self, prompt: Prompt, model: str | None = None, *, max_tokens: int | None = None,
                     temperature: float | None = None, deadline_s: float | None = None, allow_cloud: bool = True,
                     deltas: bool = True) -> AsyncIterator[StreamChunk]:
        """Text as it is generated; the last chunk has `done=True` and the whole result. As `Dispatcher.stream`."""
        started = time.perf_counter()
        spec = self._spec(model, "generation")
        prompt = self.check_prompt(prompt, max_tokens, temperature)
        max_tokens = self.new_tokens(max_tokens)
        sent, reason = False, "no_worker"
        try:
            for _ in range(GENERATION_ATTEMPTS):
                route, node = await self._route(spec.name)
                if route != "ok":
                    reason = reason if reason == "worker_lost" else route
                    break
                job, timeout = self._job(spec, deadline_s, kind="generate", prompt=prompt, max_tokens=max_tokens,
                                         temperature=temperature, stream=deltas)
                try:
                    waiting, message = await self._call(job, timeout, node)
                    if message is None:
                        reason = "deadline"
                        break
                    reply = self._decode(message)
                    worker_id = reply.worker_id if isinstance(reply, StartReply) else None
                    while isinstance(reply, (StartReply, DeltaReply)):
                        if isinstance(reply, DeltaReply):
                            sent = True
                            yield StreamChunk(reply.delta)
                        reply = await self._wait(waiting, worker_id)
                except WorkerLostError:
                    if sent:
                        raise
                    self._forget_route(spec.name)
                    reason = "worker_lost"
                    continue
                finally:
                    self.inbox.forget(job.id)
                yield StreamChunk("", True, self._generate_result(spec, reply, started))
                return
        except REDIS_DOWN:
            if sent or not self._cloud_allowed(spec, allow_cloud):
                raise
            reason = "redis_unavailable"
        if not self._cloud_allowed(spec, allow_cloud):
            raise self._no_cloud(spec, reason, allow_cloud)
        text, p_tokens, c_tokens = await self.cloud.agenerate(spec, prompt, max_tokens, temperature)
        for chunk in self._cloud_chunks(spec, text, p_tokens, c_tokens, started, reason):
            yield chunk

    async def generate(self, prompt: Prompt, model: str | None = None, **options: Any) -> GenerateResult:
        async for chunk in self.stream(prompt, model, deltas=False, **options):
            if chunk.done and chunk.result:
                return chunk.result
        raise AssertionError("a stream always ends with a done chunk")

    async def aclose(self) -> None:
        await self.inbox.close()
        await self.cloud.aclose()
        await self.redis.aclose()
