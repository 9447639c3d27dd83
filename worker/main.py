"""The worker process: models compiled once, both lanes served, many jobs per inference.

Loop: read the interactive streams (blocking for up to `bulk_poll_ms` only when there is nothing
else to do); run what came, batched; advance running generations by one token; when nothing came
and nothing runs, take a batch from the bulk lane; every `reap_interval_s`, busy or not, take over
the jobs of dead workers in both lanes. A heartbeat thread reports liveness and load.

This module only wires the parts together: the lanes, the reaper and the heartbeat see the loaded models
(`Served`), the counters (`Stats`) and the key names (`Routes`), never this class, and none of them
imports this module.

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
from typing import Any

import redis

from dispatcher.models import Registry
from dispatcher.nodes import register_node
from dispatcher.protocol import GROUP, Keys
from dispatcher.settings import Settings

from . import inference
from .bulk import BulkLane
from .clock import RedisClock
from .devices import parse_chain
from .generation import Generator
from .heartbeat import HeartbeatThread
from .interactive import InteractiveLane
from .pipelines import Embedder
from .reaper import BulkReaper
from .routes import Routes
from .served import Served
from .stats import Stats
from .tasks import default_max_tokens

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
        self.routes = Routes(self.keys, settings.node_id)
        self.registry = Registry.load(settings)
        self.model_names = [self.registry.get(m).name for m in (models or settings.models or self.registry.names)]
        self.worker_id = f"{settings.node_id}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.redis = settings.redis()
        self.clock = RedisClock(self.redis)
        self.served = Served()
        self.stats = Stats()
        self.stopping = threading.Event()
        self._next_reap = 0.0
        self._next_bulk = 0.0
        """When the bulk lane is looked at again after it was found empty (`_step`)."""
        self._lost_data = False
        self.interactive: InteractiveLane | None = None
        self.bulk: BulkLane | None = None
        self.reaper: BulkReaper | None = None
        self.heartbeat = HeartbeatThread(settings, self.worker_id, self.served, self.stats,
                                         on_beat=self._rq_heartbeat)

    # --- start and stop

    def load_models(self) -> None:
        for name in self.model_names:
            self._load(name)

    def _load(self, name: str) -> None:
        spec, started, s = self.registry.get(name), time.perf_counter(), self.settings
        chain = parse_chain(s.devices)
        pipeline = (Embedder(spec, chain, s.inference_threads, s.embed_one_pass) if spec.task == "embedding"
                    else Generator(spec, chain, s.max_generations, s.inference_threads, default_max_tokens(s),
                                   s.max_new_tokens, s.kv_cache_mb))
        if isinstance(pipeline, Embedder):
            pipeline.warm_up(s.batch_max, inference.PADDED_TOKENS)
        else:
            pipeline.warm_up()
        self.served.add(name, pipeline)
        log.info("loaded and warmed up %s on %s in %.1fs", name, pipeline.device, time.perf_counter() - started)

    def _ensure_groups(self) -> None:
        for name in self.served.names():
            for stream in self.routes.streams(name):
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

    def _rq_heartbeat(self) -> None:
        """RQ's own worker heartbeat, sent with ours (`rq info` shows the worker alive)."""
        bulk = self.bulk
        if bulk is not None:
            bulk.heartbeat()

    def _make_lanes(self) -> None:
        """Lanes for the models loaded now; the bulk lane's RQ worker lists exactly their queues."""
        s, r, me = self.settings, self.redis, self.worker_id
        old_interactive, old_bulk = self.interactive, self.bulk
        self.interactive = InteractiveLane(s, r, me, self.served, self.stats, self.clock, self.routes)
        if old_interactive:
            # Generations the old lane admitted report through its outbox: the new lane flushes the same one.
            self.interactive.outbox = old_interactive.outbox
        if old_bulk:
            old_bulk.close()
        self.bulk = BulkLane(s, r, me, self.served, self.stats, self.routes)
        if old_bulk:
            # Bulk generations still running are this process's: the reaper must not take them for orphans.
            self.bulk.inflight, self.bulk.generating = old_bulk.inflight, old_bulk.generating
        self.reaper = BulkReaper(s, r, me, self.bulk, self.stats)

    def run(self) -> None:
        if not self.served:
            self.load_models()
        self.interactive = InteractiveLane(self.settings, self.redis, self.worker_id, self.served, self.stats,
                                           self.clock)
        if not self._start_lanes():
            return
        assert self.bulk is not None
        heartbeat = self.heartbeat
        try:
            heartbeat.start()
            log.info("worker %s serving %s", self.worker_id, ", ".join(self.served.names()))
            self._loop()
            self._drain()
        finally:
            heartbeat.stop()
            self.bulk.close()
            heartbeat.deregister()
            log.info("worker %s stopped: %s", self.worker_id, self.stats.snapshot().counters)

    def _start_lanes(self) -> bool:
        """Groups, RQ registration, first heartbeat; waits for Redis if it is away (False: stopped meanwhile)."""
        backoff = RETRY_MIN_S
        while not self.stopping.is_set():
            try:
                self._ensure_groups()
                register_node(self.redis, self.keys, self.settings.node_id, self.settings.node_address)
                self.bulk = self.bulk or BulkLane(self.settings, self.redis, self.worker_id, self.served, self.stats)
                self.reaper = BulkReaper(self.settings, self.redis, self.worker_id, self.bulk, self.stats)
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
        """On a requested stop (SIGTERM): leave routing, then finish what this worker holds. The loop has
        ended after a whole step, so no embedding batch is half done; generations already admitted (they
        were acked) run to their end, still announced by the heartbeat so their callers keep waiting.
        Jobs still queued stay for the peers; `run` then deregisters (RQ too) and the process exits 0."""
        self.heartbeat.leave_routing()
        held = sum(g.running for g in self.served.generators())
        started = time.monotonic()
        while any(g.running for g in self.served.generators()):
            self._advance_generations()
        log.info("worker %s drained: %d generation(s) finished in %.1fs", self.worker_id, held,
                 time.monotonic() - started)

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
                self.stats.add("redis_errors")
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
        self.stats.add("redis_data_lost")
        self._ensure_groups()
        if self.bulk:
            self.bulk.register()
        self.heartbeat.beat()

    def _step(self, busy: bool) -> bool:
        assert self.interactive is not None and self.bulk is not None and self.reaper is not None
        if self._lost_data:
            self._recover_lost_data()
            self._lost_data = False
        wanted = self.heartbeat.wanted
        if wanted is not None and wanted != set(self.served.names()):
            self.apply_models(wanted)
        if self.heartbeat.in_role != self.routes.shared:
            self.apply_role(self.heartbeat.in_role)
        if not self.served:  # everything unloaded by an operator: wait for a load
            self.stopping.wait(self.settings.bulk_poll_ms / 1000)
            return False
        if time.monotonic() >= self._next_reap:
            self._next_reap = time.monotonic() + self.settings.reap_interval_s
            if self.interactive.reclaim() | bool(self.reaper.run()):
                return True
        generating = any(g.running for g in self.served.generators())
        read = self.interactive.read(block=not (busy or generating))
        for stream, entries in read:
            self.interactive.serve(stream.decode(), entries)
        if generating or any(g.running for g in self.served.generators()):
            self._advance_generations()
            return True
        if read:
            return True
        # An empty bulk lane is looked at again after `bulk_poll_ms`, as an idle worker does, not after every
        # interactive job: under steady single requests that look cost a lone request's path ~1 ms of CPU
        # on two cores (RQ's dequeue is a round trip per model queue), and a bulk job waits no longer than
        # it would on an idle worker.
        if time.monotonic() < self._next_bulk:
            return False
        served = self.bulk.serve_once()
        if not served:
            self._next_bulk = time.monotonic() + self.settings.bulk_poll_ms / 1000
        return served

    def apply_models(self, wanted: set[str] | frozenset[str]) -> None:
        """Load and unload models as the node's operator asked (the heartbeat thread reads the wish).
        A generation model with requests in flight is unloaded once they finish."""
        for name in sorted(set(self.served.names()) - wanted):
            pipeline = self.served[name]
            if isinstance(pipeline, Generator) and pipeline.running:
                continue
            self.served.remove(name)
            self.redis.zrem(self.keys.live(name), self.worker_id)
            log.info("unloaded %s", name)
        for name in sorted(wanted - set(self.served.names())):
            if name not in self.registry.specs:
                continue
            try:
                self._load(name)
            except Exception:
                log.exception("could not load %s", name)
        self._ensure_groups()
        self._make_lanes()
        self.heartbeat.beat()  # the new state is visible now, not at the next interval

    def apply_role(self, in_role: bool) -> None:
        """The node lost (or regained) its npu-worker role: out of routing, and reading only the work
        already routed to this node until it is given the role back (or back to everything)."""
        self.routes = Routes(self.keys, self.settings.node_id, shared=in_role)
        self.heartbeat.draining = not in_role
        self._make_lanes()
        self.heartbeat.beat()
        log.info("node %s %s", self.settings.node_id, "back in the fleet" if in_role else "drained: role taken away")

    def _advance_generations(self) -> None:
        inference.advance(self.served.generators(), self.stats)
        if self.interactive:
            self.interactive.flush()
