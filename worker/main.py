"""The worker process: models compiled once, both lanes served, many jobs per inference.

Loop: read the interactive streams (blocking for up to `bulk_poll_ms` only when there is nothing
else to do); run what came, batched; advance running generations by one token; when nothing came
and nothing runs, take a batch from the bulk lane; every `reap_interval_s`, busy or not, take over
the jobs of dead workers in both lanes. A heartbeat thread reports liveness and load.

This module only wires the parts together, once: the lanes, the reaper and the heartbeat see the loaded
engines (`Served`), the streams and queues to read (`Sources`), the work held across steps (`InFlight`) and
the counters (`Stats`), never this class, and none of them imports this module. A model or role change
changes those, and every part sees it at its next read; nothing is rebuilt.

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
from dispatcher.settings import WorkerSettings

from . import engines, inference
from .bulk import BulkLane
from .clock import RedisClock
from .heartbeat import HeartbeatThread
from .inflight import InFlight
from .interactive import InteractiveLane
from .reaper import BulkReaper
from .served import Served
from .sources import Sources
from .stats import Stats

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
    def __init__(self, settings: WorkerSettings, models: list[str] | None = None):
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.sources = Sources(self.keys, settings.node_id)
        self.registry = Registry.load(settings)
        self.model_names = [self.registry.get(m).name for m in (models or settings.models or self.registry.names)]
        self.worker_id = f"{settings.node_id}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.redis = settings.redis()
        self.clock = RedisClock(self.redis)
        self.served = Served()
        self.stats = Stats()
        self.in_flight = InFlight()
        self.stopping = threading.Event()
        self._next_reap = 0.0
        self._next_bulk = 0.0
        """When the bulk lane is looked at again after it was found empty (`_step`)."""
        self._lost_data = False
        s, r, me = settings, self.redis, self.worker_id
        self.interactive = InteractiveLane(s, r, me, self.served, self.stats, self.clock, self.sources, self.in_flight)
        self.bulk = BulkLane(s, r, me, self.served, self.stats, self.sources, self.in_flight)
        self.reaper = BulkReaper(s, r, me, self.bulk, self.stats)
        # RQ's own worker heartbeat is sent with ours (`rq info` shows the worker alive).
        self.heartbeat = HeartbeatThread(s, me, self.served, self.stats, self.sources, on_beat=self.bulk.heartbeat)

    # --- start and stop

    def load_models(self) -> None:
        for name in self.model_names:
            self._load(name)

    def _load(self, name: str) -> None:
        started = time.perf_counter()
        engine = engines.build(self.registry.get(name), self.settings)
        engine.warm_up()
        self.served.add(name, engine)
        log.info("loaded and warmed up %s on %s in %.1fs", name, engine.device, time.perf_counter() - started)

    def _ensure_groups(self) -> None:
        for name in self.served.names():
            for stream in self.sources.streams(name):
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
        if not self.served:
            self.load_models()
        if not self._start_lanes():
            return
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
                self.bulk.register()
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
        held = sum(g.running for g in self.served.generation.values())
        started = time.monotonic()
        while self.served.generating():
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
        self.bulk.register()
        self.heartbeat.beat()

    def _step(self, busy: bool) -> bool:
        if self._lost_data:
            self._recover_lost_data()
            self._lost_data = False
        wanted = self.heartbeat.wanted
        if wanted is not None and wanted != set(self.served.names()):
            self.apply_models(wanted)
        if self.heartbeat.in_role != self.sources.shared:
            self.apply_role(self.heartbeat.in_role)
        if not self.served:  # everything unloaded by an operator: wait for a load
            self.stopping.wait(self.settings.bulk_poll_ms / 1000)
            return False
        if time.monotonic() >= self._next_reap:
            self._next_reap = time.monotonic() + self.settings.reap_interval_s
            if self.interactive.reclaim() | bool(self.reaper.run()):
                return True
        generating = self.served.generating()
        read = self.interactive.read(block=not (busy or generating))
        if read or self.interactive.holding:
            self.interactive.serve(read)
        if generating or self.served.generating():
            self._advance_generations()
            return True
        if read or self.interactive.holding:
            # The next read blocks unless there is other work to get to: jobs held here, or a bulk lane due
            # for a look. A blocking XREADGROUP returns at once when entries wait, so a busy interactive
            # lane loses nothing, and a lone job costs one read, not a second, empty one before the block.
            return self.interactive.holding or time.monotonic() >= self._next_bulk
        # An empty bulk lane is looked at again after `bulk_poll_ms`, as an idle worker does, not after every
        # interactive job: that look (RQ's dequeue is a round trip per model queue) would weigh on a lone
        # request's path, and a bulk job waits no longer than it would on an idle worker.
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
            generation = self.served.generation.get(name)
            if generation is not None and generation.running:
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
        self.heartbeat.beat()  # the new state is visible now, not at the next interval

    def apply_role(self, in_role: bool) -> None:
        """The node lost (or regained) its npu-worker role: out of routing, and reading only the work
        already routed to this node until it is given the role back (or back to everything)."""
        self.heartbeat.draining = not in_role
        self.sources.shared = in_role  # the lanes and the heartbeat read it: nothing else to change
        self._ensure_groups()  # a model loaded while drained has no group on its shared stream yet
        self.heartbeat.beat()
        log.info("node %s %s", self.settings.node_id, "back in the fleet" if in_role else "drained: role taken away")

    def _advance_generations(self) -> None:
        inference.advance(self.served.generation.values(), self.stats)
        self.interactive.flush()
