"""The worker process: models compiled once, both lanes served, many jobs per inference.

Loop: read the interactive streams (blocking for up to `bulk_poll_ms` only when there is nothing
else to do); run what came, batched; advance running generations by one token; when nothing came
and nothing runs, take a batch from the bulk lane; every `reap_interval_s`, busy or not, take over
the jobs of dead workers in both lanes. A heartbeat thread reports liveness and load.

Redis going away never ends the process: the loop retries (at most 0.25 s apart), and when Redis
comes back empty (restarted without persistence) it recreates the consumer groups and its RQ
registration; either way it first reads its own unacked entries again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections import Counter
from typing import Any

import numpy as np
import redis

from dispatcher.models import Registry
from dispatcher.nodes import register_node
from dispatcher.protocol import BATCH_BUCKETS, GROUP, Keys
from dispatcher.settings import Settings

from .bulk import BulkLane
from .devices import parse_chain
from .generation import Generator
from .heartbeat import HeartbeatThread
from .interactive import InteractiveLane
from .pipelines import Embedder
from .reaper import BulkReaper

log = logging.getLogger(__name__)
RETRY_MIN_S, RETRY_MAX_S = 0.05, 0.25
"""Backoff of the loop while Redis is unreachable: a returning Redis is served again at once (a refused
connection costs nothing; an unreachable host costs the connect timeout anyway)."""


def _lost_data(exc: redis.ResponseError) -> bool:
    """The errors of a stream or group that vanished with Redis's data (XREADGROUP, XINFO; in a pipeline
    redis-py puts the command in front of the message)."""
    return any(mark in str(exc) for mark in ("NOGROUP", "no such key"))


def _transient(exc: redis.RedisError) -> bool:
    """Errors of an outage (gone, loading, read-only during a failover, restarted empty) as opposed to a bug."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)):
        return True
    return isinstance(exc, redis.ResponseError) and (
        _lost_data(exc) or any(mark in str(exc) for mark in ("MASTERDOWN", "TRYAGAIN", "LOADING")))


class Worker:
    def __init__(self, settings: Settings, models: list[str] | None = None):
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.registry = Registry.load(settings)
        self.model_names = [self.registry.get(m).name for m in (models or settings.models or self.registry.names)]
        self.worker_id = f"{settings.node_id}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.redis = settings.redis()
        self.pipelines: dict[str, Embedder | Generator] = {}
        self.counters: Counter[str] = Counter()
        self.embedding_now = 0
        self.busy_seconds = 0.0
        self.stopping = threading.Event()
        self._next_reap = 0.0
        self._lost_data = False
        self.interactive: InteractiveLane | None = None
        self.bulk: BulkLane | None = None
        self.reaper: BulkReaper | None = None
        self.heartbeat: HeartbeatThread | None = None
        self.desired_models: set[str] | None = None
        """Models the node's operator wants loaded (read by the heartbeat thread); None: as started."""

    # --- start and stop

    def load_models(self) -> None:
        for name in self.model_names:
            self._load(name)

    def _load(self, name: str) -> None:
        spec, started, s = self.registry.get(name), time.perf_counter(), self.settings
        chain = parse_chain(s.devices)
        self.pipelines[name] = (Embedder(spec, chain, s.inference_threads) if spec.task == "embedding"
                                else Generator(spec, chain, s.max_generations))
        log.info("loaded %s on %s in %.1fs", name, self.pipelines[name].device, time.perf_counter() - started)

    def devices(self) -> dict[str, str]:
        return {name: p.device for name, p in self.pipelines.items()}

    @property
    def running(self) -> int:
        """Jobs in inference right now: the embedding batch plus active generations."""
        return self.embedding_now + sum(len(p.active) for p in self.generators())

    def generators(self) -> list[Generator]:
        return [p for p in self.pipelines.values() if isinstance(p, Generator)]

    def streams(self, model: str) -> list[str]:
        """The model's interactive streams this worker reads: its node's (routed work) first, then the shared one."""
        return [self.keys.stream(model, self.settings.node_id), self.keys.stream(model)]

    def queues(self, model: str) -> list[str]:
        """The model's bulk queues, in the same order."""
        return [self.keys.queue(model, self.settings.node_id), self.keys.queue(model)]

    def _ensure_groups(self) -> None:
        for name in self.pipelines:
            for stream in self.streams(name):
                try:
                    # From id 0: jobs added before any worker made the group are served, not skipped.
                    self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
                except redis.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

    def request_stop(self, *_: Any) -> None:
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> None:
        if not self.pipelines:
            self.load_models()
        self.interactive = InteractiveLane(self)
        self.heartbeat = heartbeat = HeartbeatThread(self)
        if not self._start_lanes():
            return
        assert self.bulk is not None
        try:
            heartbeat.start()
            log.info("worker %s serving %s", self.worker_id, ", ".join(self.pipelines))
            self._loop()
            self._drain()
        finally:
            heartbeat.stop()
            self.bulk.close()
            heartbeat.deregister()
            log.info("worker %s stopped: %s", self.worker_id, dict(self.counters))

    def _start_lanes(self) -> bool:
        """Groups, RQ registration, first heartbeat; waits for Redis if it is away (False: stopped meanwhile)."""
        backoff = RETRY_MIN_S
        while not self.stopping.is_set():
            try:
                self._ensure_groups()
                register_node(self.redis, self.keys, self.settings.node_id, self.settings.node_address)
                self.bulk = self.bulk or BulkLane(self)
                self.reaper = BulkReaper(self, self.bulk)
                assert self.heartbeat is not None
                self.heartbeat.beat()  # visible to callers before the first read, not one interval later
                return True
            except redis.RedisError as exc:
                if not _transient(exc):
                    raise
                log.warning("waiting for redis (%s)", exc)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)
        return False

    def _drain(self) -> None:
        """On a requested stop, finish the generations already admitted (they were acked)."""
        while any(g.active for g in self.generators()):
            self._advance_generations()

    # --- the loop

    def _loop(self) -> None:
        busy, backoff, failing = False, RETRY_MIN_S, False
        while not self.stopping.is_set():
            try:
                busy = self._step(busy)
                if failing:
                    log.info("redis is back")
                backoff, failing = RETRY_MIN_S, False
            except redis.RedisError as exc:
                if not _transient(exc):
                    raise  # a bug, not an outage: crash, and the supervisor starts a fresh process
                # Redis gone (or restarted empty): keep the models, keep trying.
                if not failing:
                    log.warning("redis failed (%s); retrying every %.2fs at most", exc, RETRY_MAX_S)
                failing, busy = True, False
                self.counters["redis_errors"] += 1
                # Peers' heartbeats lapsed during the outage too: give them a beat to come back before
                # taking their jobs for a dead worker's.
                self._next_reap = time.monotonic() + self.settings.heartbeat_interval_s
                assert self.interactive is not None
                self.interactive.recovering = True
                if isinstance(exc, redis.ResponseError) and _lost_data(exc):
                    self._lost_data = True
                    continue
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)

    def _recover_lost_data(self) -> None:
        """Redis came back without our keys (no persistence): make the groups, and be seen, at once."""
        log.warning("redis lost its data; recreating consumer groups and registrations")
        self.counters["redis_data_lost"] += 1
        self._ensure_groups()
        if self.bulk:
            self.bulk.register()
        if self.heartbeat:
            self.heartbeat.beat()

    def _step(self, busy: bool) -> bool:
        assert self.interactive is not None and self.bulk is not None and self.reaper is not None
        if self._lost_data:
            self._recover_lost_data()
            self._lost_data = False
        if self.desired_models is not None and self.desired_models != set(self.pipelines):
            self._apply_models(self.desired_models)
        if not self.pipelines:  # everything unloaded by an operator: wait for a load
            self.stopping.wait(self.settings.bulk_poll_ms / 1000)
            return False
        if time.monotonic() >= self._next_reap:
            self._next_reap = time.monotonic() + self.settings.reap_interval_s
            if self.interactive.reclaim() | bool(self.reaper.run()):
                return True
        generating = any(g.active for g in self.generators())
        read = self.interactive.read(block=not (busy or generating))
        for stream, entries in read:
            self.interactive.serve(stream.decode(), entries)
        if generating or any(g.active for g in self.generators()):
            self._advance_generations()
            return True
        if read:
            return True
        return self.bulk.serve_once()

    def _apply_models(self, desired: set[str]) -> None:
        """Load and unload models as the node's operator asked (the heartbeat thread reads the wish).
        A generation model with requests in flight is unloaded once they finish."""
        for name in sorted(set(self.pipelines) - desired):
            pipeline = self.pipelines[name]
            if isinstance(pipeline, Generator) and pipeline.active:
                continue
            del self.pipelines[name]
            self.redis.zrem(self.keys.live(name), self.worker_id)
            log.info("unloaded %s", name)
        for name in sorted(desired - set(self.pipelines)):
            if name not in self.registry.specs:
                continue
            try:
                self._load(name)
            except Exception:
                log.exception("could not load %s", name)
        self._ensure_groups()
        self.interactive = InteractiveLane(self)
        if self.bulk:
            self.bulk.close()
        self.bulk = BulkLane(self)
        self.reaper = BulkReaper(self, self.bulk)
        if self.heartbeat:
            self.heartbeat.beat()  # the new state is visible now, not at the next interval

    def _advance_generations(self) -> None:
        started = time.perf_counter()
        for generator in self.generators():
            generator.step()
        self.busy_seconds += time.perf_counter() - started
        if self.interactive:
            self.interactive.flush()

    def count_model(self, model: str, inferences: int, items: int, seconds: float) -> None:
        """Per-model activity for the fleet's details view: inferences, texts or tokens, busy time."""
        self.counters[f"model:{model}:inferences"] += inferences
        self.counters[f"model:{model}:items"] += items
        self.counters[f"model:{model}:busy_ms"] += int(seconds * 1000)

    def run_embed(self, pipeline: Embedder, texts: list[str]) -> np.ndarray:
        """One inference per `batch_max` texts, counted as busy time for utilization."""
        cap = self.settings.batch_max
        self.embedding_now = len(texts)
        started = time.perf_counter()
        try:
            parts = [pipeline.embed(texts[i:i + cap]) for i in range(0, len(texts), cap)]
        finally:
            self.busy_seconds += time.perf_counter() - started
            self.embedding_now = 0
        self.counters["batches"] += len(parts)
        self.counters["texts"] += len(texts)
        self.count_model(pipeline.spec.name, len(parts), len(texts), time.perf_counter() - started)
        for i in range(0, len(texts), cap):  # cumulative histogram buckets, for /metrics
            size = len(texts[i:i + cap])
            self.counters["batch_texts"] += size
            for bound in BATCH_BUCKETS:
                if size <= bound:
                    self.counters[f"batch_le_{bound}"] += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
