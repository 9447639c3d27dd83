"""What a dispatcher decides, written once and without I/O: route, send, wait, retry, fall back to the cloud.

Each call is a generator (a "flow") that yields *effects*, small requests for I/O (run these Redis commands,
send this job and wait for its first reply, send this HTTP request), and receives their results back, or
has their exceptions thrown into it, so `try/except` in the flow handles a Redis outage or a cloud error
where the decision is made. It also yields its *outputs*: an `EmbedResult`, or `StreamChunk`s. Two thin
drivers run flows: `Dispatcher` with blocking redis-py and httpx, `AsyncDispatcher` with their asyncio
forms (`dispatcher/client.py`). This is the shape of httpx's own auth flows (`httpx.Auth.auth_flow`).

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
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from .cloud import CloudAPI
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
from .nodes import read_load_balancing
from .protocol import (
    DeltaReply,
    DoneReply,
    EmbeddingReply,
    ErrorReply,
    Heartbeat,
    Job,
    Keys,
    Prompt,
    Reply,
    StartReply,
    read_reply,
    unpack,
)
from .results import EmbedResult, GenerateResult, StreamChunk
from .routing import Route as FleetRoute
from .routing import Router
from .settings import WAIT_SLICE_S, Settings

ROUTE_CACHE_S = 0.5
"""How long a positive liveness answer (and the backlog read with it) is trusted, so a busy caller does
not ask Redis every time; a "no worker" answer is never cached."""
GENERATION_ATTEMPTS = 2
"""A generation whose worker died before it streamed anything is submitted once more."""
RESUBMIT_PAUSE_S = 0.2
"""Pause between resubmissions of a job during a failover (a Sentinel election takes seconds)."""
MIN_CLOUD_S = 0.05
"""Less budget than this left: the cloud is not even asked."""

Route = Literal["ok", "no_worker", "overloaded"]
Decision = tuple[Route, str | None]
"""A route and the node whose stream a job goes to (None: the model's shared stream)."""



# --- effects: what a flow asks its driver to do


class Effect:
    """Base of every request for I/O a flow yields; anything else it yields is an output for the caller."""


@dataclass
class Commands(Effect):
    """Run these Redis commands in one pipeline (no transaction); the flow receives their results."""

    calls: list[tuple[str, tuple[Any, ...]]]


@dataclass
class LookUp(Effect):
    """Where the next job of `model` goes (a `Decision`). Drivers run `Core.look_up` for it, so the async
    one can let concurrent callers that miss the route cache share one lookup."""

    model: str


@dataclass
class Send(Effect):
    """Queue `job` on the model's stream (the node's when `node` is set) and wait up to `timeout_s` for its
    first reply; the flow receives the decoded message, or None. The driver names the reply key."""

    job: Job
    node: str | None
    timeout_s: float


@dataclass
class Receive(Effect):
    """The next reply of a job already sent, or None after `timeout_s`."""

    job: Job
    timeout_s: float


@dataclass
class Pause(Effect):
    """Wait this long before the next step (between resubmissions during a failover)."""

    seconds: float


@dataclass
class Http(Effect):
    """Send this request (to the cloud); the flow receives the `httpx.Response`."""

    request: httpx.Request


Flow = Generator[Any, Any, None]
"""Yields effects and outputs; is sent each effect's result."""


class Budget:
    """One request's time, on this process's monotonic clock; jobs carry what is left of it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class Core:
    """State a dispatcher keeps between calls (settings, registry, route cache, router) and its flows."""

    def __init__(self, settings: Settings, registry: Registry | None = None):
        self.settings = settings
        self.registry = registry or Registry.load(settings)
        self.keys = Keys(settings.key_prefix)
        self.cloud = CloudAPI(settings)
        self.limits = Limits.of(settings)
        self.router = Router()
        self._routes: dict[str, tuple[float, Route, FleetRoute | None]] = {}

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
        seconds = deadline_s if deadline_s is not None else self.settings.deadline_s
        if not seconds > 0:
            raise InvalidInputError("deadline must be positive")
        return Budget(seconds)

    # --- routing

    def look_up(self, model: str) -> Flow:
        """The fleet's state for `model` (two round trips), turned into the route for the next
        `ROUTE_CACHE_S`. Yields the `Decision`."""
        keys = self.keys
        lb_raw, worker_ids = yield Commands([("get", (keys.load_balancing,)),
                                             ("zrangebyscore", (keys.live(model), time.time(), "+inf"))])
        state: list[Any] = [[]]
        if worker_ids:
            nodes = sorted({w.decode().rsplit(":", 2)[0] for w in worker_ids})
            state = yield Commands([("mget", ([keys.worker(w.decode()) for w in worker_ids],)),
                                    ("xlen", (keys.stream(model),)),
                                    *[("xlen", (keys.stream(model, node),)) for node in nodes]])
        yield self._note_route(model, lb_raw, state)

    def forget_routes(self, model: str | None = None) -> None:
        """Read the fleet afresh for the next job (of `model`, or of every model)."""
        if model is None:
            self._routes.clear()
        else:
            self._routes.pop(model, None)

    def cached_route(self, model: str) -> Decision | None:
        cached = self._routes.get(model)
        if cached is None or cached[0] <= time.monotonic():
            return None
        return self._decide(model, cached[1], cached[2])

    def _decide(self, model: str, status: Route, fleet: FleetRoute | None) -> Decision:
        """The node for this job, by the stored strategy; `no_worker` when affinity allows no live node."""
        if status != "ok" or fleet is None:
            return status, None
        node = self.router.choose(model, fleet)
        return ("ok", node) if node is not None else ("no_worker", None)

    def _note_route(self, model: str, lb_raw: bytes | None, state: list[Any]) -> Decision:
        """A "no worker" answer is not cached: the first worker to come up is used at once."""
        beats = [Heartbeat.model_validate(unpack(raw)) for raw in state[0] if raw]
        fleet = FleetRoute.from_beats(model, beats, read_load_balancing(lb_raw))
        if not fleet.nodes:
            self._routes.pop(model, None)
            return "no_worker", None
        status: Route = "overloaded" if sum(state[1:]) >= self.settings.max_queue else "ok"
        self._routes[model] = (time.monotonic() + ROUTE_CACHE_S, status, fleet)
        return self._decide(model, status, fleet)

    # --- the flows

    def embed(self, texts: list[str], model: str | None, *, deadline_s: float | None = None,
              allow_cloud: bool = True, truncate: bool = False) -> Flow:
        started = time.perf_counter()
        spec = self.spec(model, "embedding")
        texts = self.limits.check_texts(texts)
        budget = self.budget(deadline_s)
        cloud = allow_cloud and self.cloud.available_for(spec)
        try:
            reason, node = yield LookUp(spec.name)
            if reason == "ok":
                job = self._job(spec, kind="embed", texts=texts, truncate=truncate)
                message = yield from self._submit(job, node, budget, cloud)
                if message is not None:
                    yield self._embed_result(spec, _decode(message), started)
                    return
                reason = "deadline"
        except REDIS_DOWN:
            if not cloud:
                raise
            reason = "redis_unavailable"
        if not cloud:
            raise self._no_cloud(spec, reason, allow_cloud)
        response = yield from self._ask_cloud(self.cloud.embed_request(spec, texts, self._cloud_wait(budget, reason)))
        yield EmbedResult(self.cloud.read_vectors(spec, response, len(texts)), spec.name, "cloud",
                          timings=_timings(started), fallback_reason=reason)

    def stream(self, prompt: Prompt, model: str | None, *, max_tokens: int | None = None,
               temperature: float | None = None, deadline_s: float | None = None, allow_cloud: bool = True,
               deltas: bool = True, stop: list[str] | None = None) -> Flow:
        """Yields `StreamChunk`s, the last with `done=True` and the whole result.

        The budget covers the wait for a worker to start the generation, a retry included; a started
        generation runs to its end (a silent worker is given up after `generation_idle_s`). A worker
        that dies before any text was yielded costs a retry (then the cloud); after, `WorkerLostError`.
        """
        started = time.perf_counter()
        spec = self.spec(model, "generation")
        prompt = self.limits.check_prompt(prompt, max_tokens, temperature)
        max_tokens = self.new_tokens(max_tokens)
        budget = self.budget(deadline_s)
        cloud = allow_cloud and self.cloud.available_for(spec)
        sent, reason = False, "no_worker"
        try:
            for _ in range(GENERATION_ATTEMPTS):
                route, node = yield LookUp(spec.name)
                if route != "ok":
                    reason = reason if reason == "worker_lost" else route
                    break
                job = self._job(spec, kind="generate", prompt=prompt, max_tokens=max_tokens,
                                temperature=temperature, stream=deltas, stop=stop or None)
                message = yield from self._send(job, node, self._local_wait(budget, cloud))
                if message is None:
                    reason = "deadline"
                    break
                reply = _decode(message)
                worker_id = reply.worker_id if isinstance(reply, StartReply) else None
                try:
                    while isinstance(reply, (StartReply, DeltaReply)):
                        if isinstance(reply, DeltaReply):
                            sent = True
                            yield StreamChunk(reply.delta)
                        reply = yield from self._next(job, worker_id)
                except WorkerLostError:
                    if sent:
                        raise
                    self.forget_routes(spec.name)
                    reason = "worker_lost"
                    continue
                yield StreamChunk("", True, self._generate_result(spec, reply, started))
                return
        except REDIS_DOWN:
            if sent or not cloud:
                raise
            reason = "redis_unavailable"
        if not cloud:
            raise self._no_cloud(spec, reason, allow_cloud)
        request = self.cloud.chat_request(spec, prompt, max_tokens, temperature, self._cloud_wait(budget, reason),
                                          stop=stop)
        text, p_tokens, c_tokens = self.cloud.read_text((yield from self._ask_cloud(request)))
        yield StreamChunk(text)
        yield StreamChunk("", True, GenerateResult(text, spec.name, "cloud", None, None, p_tokens, c_tokens,
                                                   _timings(started), fallback_reason=reason))

    # --- steps of the flows

    def _job(self, spec: ModelSpec, **fields: Any) -> Job:
        """The reply key is the driver's to name (a key per job, or its inbox)."""
        return Job(model=spec.name, reply="", deadline=0.0, request_id=request_id.get(), **fields)

    def _local_wait(self, budget: Budget, cloud: bool) -> float:
        """What the wait for a worker may take: the budget, less the cloud's share when it may be asked."""
        return budget.left() - (self.settings.cloud_share * budget.seconds if cloud else 0.0)

    def _submit(self, job: Job, node: str | None, budget: Budget,
                cloud: bool) -> Generator[Effect, Any, dict[str, Any] | None]:
        """Send `job` and wait for its first reply; under Sentinel, resubmit it after a Redis error (see
        the module's policy) to the node routing names then, else to the model's shared stream."""
        resubmits = 0
        while True:
            try:
                if resubmits:
                    yield Pause(RESUBMIT_PAUSE_S)
                    route, fresh = yield LookUp(job.model)
                    node = fresh if route == "ok" else None
                return (yield from self._send(job, node, self._local_wait(budget, cloud)))
            except REDIS_DOWN:
                if not self.settings.redis_sentinels or self._local_wait(budget, cloud) <= RESUBMIT_PAUSE_S:
                    raise
                self.forget_routes(job.model)
                resubmits += 1

    def _send(self, job: Job, node: str | None, timeout_s: float) -> Generator[Effect, Any, dict[str, Any] | None]:
        if timeout_s <= 0:
            return None
        # The job's own deadline lets the worker drop it once the caller has stopped waiting.
        job.deadline = time.time() + timeout_s
        job.budget_ms = int(timeout_s * 1000)
        in_flight = self.router.in_flight
        in_flight[node or ""] += 1  # this process's unanswered jobs count as load when choosing a node
        try:
            message: dict[str, Any] | None = yield Send(job, node, timeout_s)
            return message
        finally:
            in_flight[node or ""] -= 1

    def _next(self, job: Job, worker_id: str | None) -> Generator[Effect, Any, Reply]:
        """Next message of a started generation; a dead or stalled worker is an error, not a hang."""
        s = self.settings
        end = time.monotonic() + s.generation_idle_s
        while (left := end - time.monotonic()) > 0.01:
            message = yield Receive(job, min(left, WAIT_SLICE_S, s.heartbeat_interval_s))
            if message is not None:
                return _decode(message)
            if worker_id and not (yield Commands([("exists", (self.keys.worker(worker_id),))]))[0]:
                raise WorkerLostError(f"worker {worker_id} died during the generation (its heartbeat expired)")
        raise JobFailedError(f"the worker went silent for {s.generation_idle_s:.0f}s during generation",
                             code=ErrorCode.GENERATION_STALLED, status=504)

    def _cloud_wait(self, budget: Budget, reason: str) -> float:
        left = min(budget.left(), self.settings.cloud_timeout_s)
        if left < MIN_CLOUD_S:
            raise NPUUnavailableError(f"the request's time budget was spent before the cloud could be asked "
                                      f"({reason})", reason=reason)
        return left

    def _ask_cloud(self, request: httpx.Request) -> Generator[Effect, Any, httpx.Response]:
        try:
            response: httpx.Response = yield Http(request)
        except httpx.HTTPError as exc:
            raise NPUUnavailableError(f"cloud fallback unreachable: {exc!r}") from exc
        return response

    def _embed_result(self, spec: ModelSpec, reply: Reply, started: float) -> EmbedResult:
        assert isinstance(reply, EmbeddingReply), f"an embedding job was answered with {type(reply).__name__}"
        return EmbedResult(reply.matrix(), spec.name, "npu", reply.device, reply.node_id, reply.token_counts,
                           reply.truncated, _timings(started, reply))

    def _generate_result(self, spec: ModelSpec, reply: Reply, started: float) -> GenerateResult:
        assert isinstance(reply, DoneReply), f"a generation ended with {type(reply).__name__}"
        timings = _timings(started, reply)
        if reply.ttft_ms is not None:
            timings["ttft_ms"] = round(reply.ttft_ms, 3)
        return GenerateResult(reply.text, spec.name, "npu", reply.device, reply.node_id, reply.prompt_tokens,
                              reply.completion_tokens, timings, finish_reason=reply.finish_reason)

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


def _decode(message: dict[str, Any]) -> Reply:
    reply = read_reply(message)
    if isinstance(reply, ErrorReply):
        raise reply.exception()
    return reply


def _timings(started: float, reply: EmbeddingReply | DoneReply | None = None) -> dict[str, float]:
    timings = {"total_ms": round((time.perf_counter() - started) * 1000, 3)}
    if reply is not None:
        timings["queue_ms"] = round(reply.queue_ms or 0.0, 3)
        timings["inference_ms"] = round(reply.inference_ms or 0.0, 3)
    return timings
