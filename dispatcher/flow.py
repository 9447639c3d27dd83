"""What a dispatcher decides, written once and without I/O: route, send, wait, retry, fall back to the cloud.

Each call is a generator (a "flow") that yields effects (`dispatcher/effects.py`: read the fleet, send
this job and wait for its first reply, send this HTTP request), each typed with its reply, and is sent
that reply, or has its exception thrown in, so `try/except` in the flow handles a Redis outage or a cloud
error where the decision is made. A flow *returns* its result (an `EmbedResult`, a `GenerateResult`, a
bulk job); a generation's flow also yields its text as `StreamChunk`s, told apart from effects by type.
Two thin drivers run flows: `Dispatcher` with blocking redis-py and httpx, `AsyncDispatcher` with their
asyncio forms (`dispatcher/client.py`). This is the shape of httpx's own auth flows (`httpx.Auth.auth_flow`,
run by `sync_auth_flow` and `async_auth_flow`).

Policy, in one place:
- No live worker for the model (heartbeats say so), or its queue is full: the caller does not wait.
- A request has one time budget (`deadline_s`, per call or the setting) for everything: the wait for a
  worker, a generation's retry, and the cloud fallback, which keeps `cloud_share` of the budget for itself.
- A generation whose worker dies before any text reached the caller is submitted once more.
- Redis unreachable: nothing can be queued. Each of these goes to the cloud if allowed, else raises.
- Under Sentinel, a Redis error while a sent embedding job waits is taken for a failover: replication is
  asynchronous, so the job may be gone from the new master, and the caller submits it again (jobs are
  idempotent; the same id, so whichever copy is answered first answers it) every `RESUBMIT_PAUSE_S`
  while its budget lasts. Not a generation: two surviving copies would interleave their streamed text;
  its caller gets the cloud or `redis_unavailable` as before. A request that finds Redis unreachable
  before its job was sent is not waited for: it gets the cloud or `redis_unavailable` (503) at once.
- Bulk jobs pass the same checks and routing, then go to the chosen node's RQ queue (the shared one when
  no node is live), refused while `max_bulk_queue` jobs wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import httpx
from rq.job import Job as RQJob

from . import apps
from .cloud import CloudAPI
from .effects import (
    Cancel,
    Clock,
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
    SystemClock,
    WaitReplicas,
)
from .errors import (
    REDIS_DOWN,
    ErrorCode,
    InvalidInputError,
    JobFailedError,
    NPUError,
    NPUUnavailableError,
    OverloadedError,
    WorkerLostError,
)
from .limits import Limits
from .logs import request_id
from .models import ModelSpec, Registry
from .protocol import (
    EMBED_TASK,
    GENERATE_TASK,
    DeltaReply,
    DoneReply,
    EmbeddingReply,
    ErrorReply,
    Job,
    Keys,
    Prompt,
    Reply,
    StartReply,
)
from .results import EmbedResult, GenerateResult, StreamChunk
from .routing import FleetSnapshot, Router
from .settings import WAIT_SLICE_S, CallerSettings

ROUTE_CACHE_S = 0.5
"""How long a positive liveness answer (and the backlog read with it) is trusted, so a busy caller does
not ask Redis every time; a "no worker" answer is never cached."""
GENERATION_ATTEMPTS = 2
"""A generation whose worker died before it streamed anything is submitted once more."""
RESUBMIT_PAUSE_S = 0.2
"""Pause between resubmissions of a job during a failover (a Sentinel election takes seconds)."""
MIN_CLOUD_S = 0.05
"""Less budget than this left: the cloud is not even asked."""

Availability = Literal["ok", "no_worker", "overloaded"]
"""Whether a model's workers can take a job now."""
Decision = tuple[Availability, str | None]
"""Availability, and the node whose stream a job goes to (None: the model's shared stream)."""
Fallback = Literal["no_worker", "overloaded", "deadline", "worker_lost", "redis_unavailable"]
"""Why a request went to the cloud (or failed): the `fallback_reason` callers read."""


# --- one request's state


@dataclass
class Budget:
    """One request's time, on the clock's monotonic time; jobs carry what is left of it."""

    total_s: float
    ends_at: float
    clock: Clock

    def left_s(self) -> float:
        return self.ends_at - self.clock.monotonic()


@dataclass
class Call:
    """What a call asked, checked, and what it has done so far."""

    spec: ModelSpec
    budget: Budget
    cloud: bool
    """The cloud may be asked (allowed, and configured for the model)."""
    allow_cloud: bool
    started: float
    texts: list[str] = field(default_factory=list)
    prompt: Prompt = ""
    max_tokens: int = 0
    temperature: float | None = None
    deltas: bool = True
    stop: list[str] | None = None
    streamed: bool = False
    """Text has reached the caller: the generation can no longer be retried or replaced."""
    bounded: bool = False
    """The caller set `deadline_s`: it bounds the whole call, a running generation included (the setting's
    default bounds only the wait for a worker to start it)."""


class DispatchPolicy:
    """The dispatch policy and the state it keeps between calls (settings, registry, fleet cache, router):
    each public method returns the flow of one call."""

    def __init__(self, settings: CallerSettings, registry: Registry | None = None, clock: Clock | None = None):
        self.settings = settings
        self.registry = registry or Registry.load(settings)
        self.clock: Clock = clock or SystemClock()
        self.keys = Keys(settings.key_prefix)
        self.cloud = CloudAPI(settings)
        self.limits = Limits.of(settings)
        self.router = Router()
        self._fleets: dict[str, tuple[float, Availability, FleetSnapshot]] = {}

    # --- checks, before anything is queued

    def spec(self, model: str | None, task: str) -> ModelSpec:
        spec = self.registry.get(model or self.registry.default(task))
        if spec.task != task:
            raise InvalidInputError(f"model {spec.name!r} is a {spec.task} model, not {task}",
                                    code=ErrorCode.WRONG_TASK)
        return spec

    def new_tokens(self, max_tokens: int | None) -> int:
        """What a generation may produce: as asked, else the default, which never exceeds the limit."""
        s = self.settings
        return max_tokens if max_tokens is not None else min(s.default_new_tokens, s.max_new_tokens)

    def budget(self, deadline_s: float | None) -> Budget:
        total_s = deadline_s if deadline_s is not None else self.settings.deadline_s
        if not total_s > 0:
            raise InvalidInputError("deadline must be positive")
        return Budget(total_s, self.clock.monotonic() + total_s, self.clock)

    def _call(self, spec: ModelSpec, deadline_s: float | None, allow_cloud: bool) -> Call:
        return Call(spec, self.budget(deadline_s), allow_cloud and self.cloud.available_for(spec), allow_cloud,
                    self.clock.monotonic(), bounded=deadline_s is not None)

    # --- routing

    def forget_routes(self, model: str | None = None) -> None:
        """Read the fleet afresh for the next job (of `model`, or of every model)."""
        if model is None:
            self._fleets.clear()
        else:
            self._fleets.pop(model, None)

    def route(self, model: str) -> Flow[Decision]:
        """Where the next job of `model` goes: from the fleet read in the last `ROUTE_CACHE_S`, else read
        afresh. A "no worker" answer is not cached: the first worker to come up is used at once."""
        cached = self._fleets.get(model)
        if cached is None or cached[0] <= self.clock.monotonic():
            fleet = yield from ReadFleet(model)
            if not fleet.nodes:
                self._fleets.pop(model, None)
                return "no_worker", None
            status: Availability = "overloaded" if fleet.backlog >= self.settings.max_queue else "ok"
            cached = self._fleets[model] = (self.clock.monotonic() + ROUTE_CACHE_S, status, fleet)
        _, status, fleet = cached
        if status != "ok":
            return status, None
        node = self.router.choose(model, fleet)
        return ("ok", node) if node is not None else ("no_worker", None)

    # --- interactive lane

    def embed(self, texts: list[str], model: str | None, *, deadline_s: float | None = None,
              allow_cloud: bool = True, truncate: bool = False) -> Flow[EmbedResult]:
        spec = self.spec(model, "embedding")
        texts = self.limits.check_texts(texts)
        call = self._call(spec, deadline_s, allow_cloud)
        call.texts = texts
        try:
            outcome = yield from self._embed_locally(call, truncate)
        except REDIS_DOWN:
            if not call.cloud:
                raise
            outcome = "redis_unavailable"
        if isinstance(outcome, EmbedResult):
            return outcome
        return (yield from self._embed_in_cloud(call, outcome))

    def stream(self, prompt: Prompt, model: str | None, *, max_tokens: int | None = None,
               temperature: float | None = None, deadline_s: float | None = None, allow_cloud: bool = True,
               deltas: bool = True, stop: list[str] | None = None) -> StreamFlow[GenerateResult]:
        """Yields the text as `StreamChunk`s and returns the whole result.

        The budget covers the wait for a worker to start the generation, a retry included; with `deadline_s`
        given, it also bounds the generation itself: the worker cuts it when the budget ends and returns its
        text so far (`finish_reason` "length"). A silent worker is given up after `generation_idle_s` (a
        worker running a generation that sends no text tells its caller every `protocol.PROGRESS_S`). A worker
        that dies before any text was yielded costs a retry (then the cloud); after, `WorkerLostError`.
        """
        spec = self.spec(model, "generation")
        prompt = self.limits.check_prompt(prompt, max_tokens, temperature)
        call = self._call(spec, deadline_s, allow_cloud)
        call.prompt = prompt
        call.max_tokens, call.temperature = self.new_tokens(max_tokens), temperature
        call.deltas, call.stop = deltas, stop or None
        try:
            outcome = yield from self._generate_locally(call)
        except REDIS_DOWN:
            if call.streamed or not call.cloud:
                raise
            outcome = "redis_unavailable"
        if isinstance(outcome, GenerateResult):
            return outcome
        return (yield from self._generate_in_cloud(call, outcome))

    # --- bulk lane

    def submit_embed(self, texts: list[str], model: str | None, *, truncate: bool = False,
                     rq_options: dict[str, object]) -> Flow[RQJob]:
        spec = self.spec(model, "embedding")
        texts = self.limits.check_texts(texts)
        return (yield from self._enqueue(spec, EMBED_TASK, {"texts": texts, "model": spec.name, "truncate": truncate},
                                         rq_options))

    def submit_generate(self, prompt: Prompt, model: str | None, *, max_tokens: int | None = None,
                        temperature: float | None = None, rq_options: dict[str, object]) -> Flow[RQJob]:
        spec = self.spec(model, "generation")
        prompt = self.limits.check_prompt(prompt, max_tokens, temperature)
        kwargs: dict[str, object] = {"prompt": prompt, "model": spec.name, "max_tokens": self.new_tokens(max_tokens),
                                     "temperature": temperature}
        return (yield from self._enqueue(spec, GENERATE_TASK, kwargs, rq_options))

    def bulk_queue(self, model: str) -> str:
        """The name of a model's shared bulk queue."""
        return self.keys.queue(self.registry.get(model).name)

    def _enqueue(self, spec: ModelSpec, task: str, kwargs: dict[str, object],
                 rq_options: dict[str, object]) -> Flow[RQJob]:
        """To the node routing names; with no live worker, the shared queue waits for one. Then, when
        asked (`bulk_wait_replicas`), a replica's confirmation: replication is asynchronous, and a job only
        the master holds dies with it in a failover, so the submitter is told and can submit again."""
        s = self.settings
        options = {"result_ttl": s.bulk_result_ttl_s, "job_timeout": s.bulk_job_timeout_s, **rq_options}
        status, node = yield from self.route(spec.name)
        queue = self.keys.queue(spec.name, node if status == "ok" else None)
        if (yield from QueueLength(queue)) >= s.max_bulk_queue:
            raise OverloadedError(f"{spec.name!r} has {s.max_bulk_queue} or more bulk jobs waiting; retry later",
                                  s.retry_after_s, limit=s.max_bulk_queue)
        job = yield from Enqueue(queue, task, kwargs, options)
        want = s.bulk_wait_replicas
        if want and (got := (yield from WaitReplicas(want, s.bulk_replica_timeout_ms))) < want:
            raise NPUUnavailableError(f"bulk job {job.id} was queued, but {got} of {want} replica(s) confirmed it "
                                      f"within {s.bulk_replica_timeout_ms} ms: a failover now could lose it; "
                                      "submit it again if it does not finish (jobs are idempotent)",
                                      reason="not_replicated", job_id=job.id)
        return job

    # --- steps of an embedding

    def _embed_locally(self, call: Call, truncate: bool) -> Flow[EmbedResult | Fallback]:
        status, node = yield from self.route(call.spec.name)
        if status != "ok":
            return status
        job = self._job(call.spec, kind="embed", texts=call.texts, truncate=truncate)
        reply = yield from self._submit(job, node, call)
        if reply is None:
            return "deadline"
        assert isinstance(reply, EmbeddingReply), f"an embedding job was answered with {type(reply).__name__}"
        return EmbedResult(reply.matrix(), call.spec.name, "npu", reply.device, reply.node_id, reply.token_counts,
                           reply.truncated, self._timings(call, reply))

    def _submit(self, job: Job, node: str | None, call: Call) -> Flow[Reply | None]:
        """Send `job` and wait for its first reply; under Sentinel, resubmit it after a Redis error (see
        the module's policy) to the node routing names then, else to the model's shared stream."""
        resubmit = False
        while True:
            try:
                if resubmit:
                    yield from Pause(RESUBMIT_PAUSE_S)
                    status, fresh = yield from self.route(job.model)
                    node = fresh if status == "ok" else None
                return (yield from self._send(job, node, call))
            except REDIS_DOWN:
                if not self.settings.redis_sentinels or self._local_wait(call) <= RESUBMIT_PAUSE_S:
                    raise
                self.forget_routes(job.model)
                resubmit = True

    def _embed_in_cloud(self, call: Call, reason: Fallback) -> Flow[EmbedResult]:
        request = self.cloud.embed_request(call.spec, call.texts, self._cloud_wait(call, reason))
        response = yield from self._ask_cloud(request)
        return EmbedResult(self.cloud.read_vectors(call.spec, response, len(call.texts)), call.spec.name, "cloud",
                           timings=self._timings(call), fallback_reason=reason)

    # --- steps of a generation

    def _generate_locally(self, call: Call) -> StreamFlow[GenerateResult | Fallback]:
        for attempt in range(GENERATION_ATTEMPTS):
            status, node = yield from self.route(call.spec.name)
            if status != "ok":
                return "worker_lost" if attempt else status
            job = self._job(call.spec, kind="generate", prompt=call.prompt, max_tokens=call.max_tokens,
                            temperature=call.temperature, stream=call.deltas, stop=call.stop)
            first = yield from self._send(job, node, call)
            if first is None:  # not started in time: it must not start late, nobody would read it
                yield from Cancel(job, "deadline")
                return "deadline"
            result = yield from self._relay(call, job, first)
            if result is not None:
                return result
            self.forget_routes(call.spec.name)  # its worker died before any text: once more, then the cloud
        return "worker_lost"

    def _relay(self, call: Call, job: Job, reply: Reply) -> StreamFlow[GenerateResult | None]:
        """Yields a started generation's text, and returns its result; None when its worker died before
        any text reached the caller (after, `WorkerLostError`)."""
        worker_id = reply.worker_id if isinstance(reply, StartReply) else None
        try:
            while isinstance(reply, StartReply | DeltaReply):
                if isinstance(reply, DeltaReply):
                    call.streamed = True
                    yield StreamChunk(reply.delta)
                reply = yield from self._next(job, worker_id)
        except WorkerLostError:
            if call.streamed:
                raise
            return None
        assert isinstance(reply, DoneReply), f"a generation ended with {type(reply).__name__}"
        timings = self._timings(call, reply)
        if reply.ttft_ms is not None:
            timings["ttft_ms"] = round(reply.ttft_ms, 3)
        return GenerateResult(reply.text, call.spec.name, "npu", reply.device, reply.node_id, reply.prompt_tokens,
                              reply.completion_tokens, timings, finish_reason=reply.finish_reason)

    def _next(self, job: Job, worker_id: str | None) -> Flow[Reply]:
        """Next message of a started generation; a dead or stalled worker is an error, not a hang."""
        s = self.settings
        end = self.clock.monotonic() + s.generation_idle_s
        while (left := end - self.clock.monotonic()) > 0.01:
            reply = yield from Receive(job, min(left, WAIT_SLICE_S, s.heartbeat_interval_s))
            if reply is not None:
                return _checked(reply)
            if worker_id and not (yield from IsAlive(worker_id)):
                raise WorkerLostError(f"worker {worker_id} died during the generation (its heartbeat expired)")
        raise JobFailedError(f"the worker went silent for {s.generation_idle_s:.0f}s during generation",
                             code=ErrorCode.GENERATION_STALLED, status=504)

    def _generate_in_cloud(self, call: Call, reason: Fallback) -> StreamFlow[GenerateResult]:
        request = self.cloud.chat_request(call.spec, call.prompt, call.max_tokens, call.temperature,
                                          self._cloud_wait(call, reason), stop=call.stop)
        text, p_tokens, c_tokens = self.cloud.read_text((yield from self._ask_cloud(request)))
        yield StreamChunk(text)
        return GenerateResult(text, call.spec.name, "cloud", None, None, p_tokens, c_tokens, self._timings(call),
                              fallback_reason=reason)

    # --- steps both share

    def _job(self, spec: ModelSpec, **fields: object) -> Job:
        """The reply key is the driver's to name (a key per job, or its inbox)."""
        return Job(model=spec.name, reply="", deadline_at=0.0, request_id=request_id.get(), app=apps.app.get(),
                   priority=apps.priority.get(), **fields)

    def _local_wait(self, call: Call) -> float:
        """What the wait for a worker may take: the budget, less the cloud's share when it may be asked."""
        budget = call.budget
        return budget.left_s() - (self.settings.cloud_share * budget.total_s if call.cloud else 0.0)

    def _send(self, job: Job, node: str | None, call: Call) -> Flow[Reply | None]:
        time_left_s = self._local_wait(call)
        if time_left_s <= 0:
            return None
        # The job's own deadline lets the worker drop it once the caller has stopped waiting.
        job.deadline_at = self.clock.time() + time_left_s
        job.budget_ms = int(time_left_s * 1000)
        if job.kind == "generate" and call.bounded:
            job.run_ms = int(call.budget.left_s() * 1000)
        in_flight = self.router.in_flight
        in_flight[node or ""] += 1  # this process's unanswered jobs count as load when choosing a node
        try:
            reply = yield from Send(job, node, time_left_s)
        finally:
            in_flight[node or ""] -= 1
        return None if reply is None else _checked(reply)

    def _cloud_wait(self, call: Call, reason: Fallback) -> float:
        if not call.cloud:
            raise self._no_cloud(call, reason)
        left_s = min(call.budget.left_s(), self.settings.cloud_timeout_s)
        if left_s < MIN_CLOUD_S:
            raise NPUUnavailableError(f"the request's time budget was spent before the cloud could be asked "
                                      f"({reason})", reason=reason)
        return left_s

    def _ask_cloud(self, request: httpx.Request) -> Flow[httpx.Response]:
        try:
            return (yield from Http(request))
        except httpx.HTTPError as exc:
            raise NPUUnavailableError(f"cloud fallback unreachable: {exc!r}") from exc

    def _no_cloud(self, call: Call, reason: Fallback) -> NPUError:
        name = call.spec.name
        why = {"no_worker": f"no live worker serves {name!r}",
               "deadline": f"no worker answered for {name!r} before the deadline",
               "worker_lost": f"the workers running this {name!r} job died",
               "overloaded": f"{name!r} has {self.settings.max_queue} or more jobs waiting",
               "redis_unavailable": "Redis cannot be reached"}[reason]
        tail = ("cloud fallback was not allowed for this call" if not call.allow_cloud
                else "no cloud fallback is configured for it")
        if reason == "overloaded":
            return OverloadedError(f"{why}, and {tail}; retry later", self.settings.retry_after_s,
                                   limit=self.settings.max_queue)
        return NPUUnavailableError(f"{why}, and {tail}", reason=reason)

    def _timings(self, call: Call, reply: EmbeddingReply | DoneReply | None = None) -> dict[str, float]:
        timings = {"total_ms": round((self.clock.monotonic() - call.started) * 1000, 3)}
        if reply is not None:
            timings["queue_ms"] = round(reply.queue_ms or 0.0, 3)
            timings["inference_ms"] = round(reply.inference_ms or 0.0, 3)
        return timings


def _checked(reply: Reply) -> Reply:
    """A worker's error reply, raised as the error it names."""
    if isinstance(reply, ErrorReply):
        raise reply.exception()
    return reply
