"""What a dispatch flow asks its driver to do: one effect type per kind of I/O, each typed with its reply.

An `Effect[T]` is answered with a `T`: a flow writes `reply = yield from Send(...)`, the driver sends the
reply back into the generator, and the type checker knows what the flow got. The drivers
(`dispatcher/client.py`) carry effects out, each with one `match` over these types. Time is read from
a `Clock`, so a test drives a flow by hand and moves time itself.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, cast

import httpx
from rq.job import Job as RQJob

from .protocol import Job, Reply
from .results import StreamChunk
from .routing import FleetSnapshot

R = TypeVar("R")
T_co = TypeVar("T_co", covariant=True)


class Clock(Protocol):
    """Where a flow reads time: `time.monotonic` for durations, `time.time` for what workers compare."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class Effect(Generic[T_co]):
    """A request for I/O answered with a `T_co`. `reply = yield from effect` yields it and types the reply."""

    def __iter__(self) -> Generator[Effect[T_co], object, T_co]:
        reply = yield self
        return cast(T_co, reply)


@dataclass(frozen=True)
class ReadFleet(Effect[FleetSnapshot]):
    """The fleet's state for `model` (`routing.FleetRead`). Drivers may let concurrent readers share one."""

    model: str


@dataclass(frozen=True)
class Send(Effect[Reply | None]):
    """Queue `job` on the model's stream (the node's when `node` is set) and wait up to `timeout_s` for its
    first reply; None when none came. The driver names the reply key."""

    job: Job
    node: str | None
    timeout_s: float


@dataclass(frozen=True)
class Receive(Effect[Reply | None]):
    """The next reply of a job already sent, or None after `timeout_s`."""

    job: Job
    timeout_s: float


@dataclass(frozen=True)
class Cancel(Effect[None]):
    """Nobody waits for `job` any more: take it off its stream if no worker took it yet, else tell the
    worker running it (a generation stops within a step and frees its KV cache). `reason` is one of
    `protocol.CANCEL_REASONS`. Drivers also carry it out themselves for jobs of a flow closed early."""

    job: Job
    reason: str


@dataclass(frozen=True)
class IsAlive(Effect[bool]):
    """Whether a worker's heartbeat is still there."""

    worker_id: str


@dataclass(frozen=True)
class Pause(Effect[None]):
    """Wait this long before the next step (between resubmissions during a failover)."""

    seconds: float


@dataclass(frozen=True)
class Http(Effect[httpx.Response]):
    """Send this request (to the cloud)."""

    request: httpx.Request


@dataclass(frozen=True)
class QueueLength(Effect[int]):
    """Jobs waiting in a bulk (RQ) queue."""

    queue: str


@dataclass(frozen=True)
class Enqueue(Effect[RQJob]):
    """Enqueue an RQ job of `task` on a bulk queue."""

    queue: str
    task: str
    kwargs: dict[str, object]
    options: dict[str, object]
    """RQ's own `enqueue` options, passed through (their types are RQ's)."""


@dataclass(frozen=True)
class WaitReplicas(Effect[int]):
    """Redis WAIT: how many replicas confirmed the writes so far, within `timeout_ms`."""

    replicas: int
    timeout_ms: int


Flow = Generator[Effect[object], object, R]
"""Yields effects, is sent their replies, returns an `R`."""
StreamFlow = Generator[Effect[object] | StreamChunk, object, R]
"""As `Flow`, and yields text as it comes."""
