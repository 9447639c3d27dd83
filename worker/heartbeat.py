"""The worker's heartbeat: how callers know a model has a live worker, and what the fleet shows.

A background thread, because the loop may sit in a long inference; the key expires after
`heartbeat_ttl_s`, so a killed worker disappears from routing by itself, and its peers take over its
jobs (`worker.deliveries`). After a failed beat (Redis gone) it retries every `RETRY_S`, so a worker is
routable again right after Redis returns (within ~0.1 s), not one interval later.

The thread reads only snapshots (`Served.snapshot()`, `Stats.snapshot()`), taken under their locks, so a
beat never races the loop loading a model or counting a job. A beat that fails anyway is logged and
counted (`heartbeat_failed` in the next beat's counters), never silently dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import cast

import redis
from rq.queue import Queue

from dispatcher.nodes import NPU_ROLE, read_node
from dispatcher.protocol import Heartbeat, Keys, Placement, memory_gb, pack, read_weights, utilization
from dispatcher.settings import DEAD_WORKER_MEMORY_S, WorkerSettings

from .devices import device_memory_bytes, refusals
from .engines import Engine, engine_name
from .served import Served
from .sources import Sources
from .stats import Stats, rss_bytes

log = logging.getLogger(__name__)
RETRY_S = 0.1
"""Pause between beats while Redis is unreachable."""


def queue_depths(r: redis.Redis, sources: Sources, models: list[str]) -> dict[str, dict[str, int]]:
    """Per model, both lanes, summed over every stream and queue the worker reads for it."""
    pipe = r.pipeline(transaction=False)
    slots: list[tuple[str, str]] = []
    for model in models:
        for stream in sources.streams(model):
            pipe.xlen(stream)
            slots.append((model, "interactive"))
        for queue in sources.queues(model):
            pipe.llen(Queue.redis_queue_namespace_prefix + queue)
            slots.append((model, "bulk"))
    depths = {m: {"interactive": 0, "bulk": 0} for m in models}
    for (model, lane), count in zip(slots, pipe.execute() if slots else [], strict=True):
        depths[model][lane] += count
    return depths


class HeartbeatThread(threading.Thread):
    def __init__(self, settings: WorkerSettings, worker_id: str, served: Served, stats: Stats, sources: Sources,
                 on_beat: Callable[[], None] | None = None):
        super().__init__(name="heartbeat", daemon=True)
        self.settings, self.worker_id, self.served, self.stats = settings, worker_id, served, stats
        self.keys = Keys(settings.key_prefix)
        self.sources = sources
        """The worker's own (live): a drained node reports only the depth of what it still reads."""
        self.on_beat = on_beat
        """Called after each beat (the bulk lane's RQ heartbeat)."""
        self.redis = settings.redis()
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        """One beat at a time: the loop also beats (after a model change), not only this thread."""
        self.started_at = time.time()
        self._last = (time.monotonic(), 0.0)
        self.beats = 0
        """Beats written."""
        self.wanted: frozenset[str] | None = None
        """Models the node's operator wants loaded (read at every beat); None: as started."""
        self.in_role = True
        """The node has the npu-worker role (read at every beat); taken away, the worker is drained."""
        self.draining = False
        self._device_gb: dict[str, float | None] = {}
        """Device -> its own memory where the plugin reports it (asked once per device)."""
        """Set on a requested stop: the worker still beats (callers of its running generations see it
        alive) but is out of routing, so no new job is sent its way."""

    def run(self) -> None:
        interval = self.settings.heartbeat_interval_s
        pause, failing = interval, False
        while not self._stop_event.wait(pause):
            try:
                self.beat()
                if failing:
                    log.info("heartbeat back")
                pause, failing = interval, False
            except redis.RedisError as exc:  # an outage: retry soon, log once per outage
                self.stats.add("heartbeat_failed")
                if not failing:
                    log.warning("heartbeat failed: %s; retrying every %.2fs", exc, RETRY_S)
                pause, failing = min(RETRY_S, interval), True
            except Exception:  # a bug: the thread must outlive it, but it is never quiet
                self.stats.add("heartbeat_failed")
                log.exception("heartbeat failed")
                pause, failing = min(RETRY_S, interval), True

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)

    def read_wishes(self) -> None:
        """The node's wanted models, set by an operator through the fleet API."""
        node = read_node(self.redis, self.keys, self.settings.node_id)
        self.wanted = frozenset(node.models) if node and node.models is not None else None
        self.in_role = node is None or NPU_ROLE in node.roles
        # Apps once seen stay read: a Redis restarted empty forgets `Keys.apps` while their callers still send.
        apps = {**self.sources.apps, **read_weights(cast(dict[bytes, bytes], self.redis.hgetall(self.keys.apps)))}
        if apps != self.sources.apps:
            self.sources.apps = apps  # replaced whole: the loop sees the old set or the new one

    def memory_gb(self, devices: list[str]) -> float:
        """The memory of the devices the models run on where their plugin reports it (an NPU's), else the
        host's: what bounds the models a node can hold."""
        for device in devices:
            if device not in self._device_gb:
                size = device_memory_bytes(device)
                self._device_gb[device] = round(size / 2**30, 1) if size else None
        reported = [gb for d in devices if (gb := self._device_gb[d])]
        return max(reported) if reported else memory_gb()

    def placements(self, devices: dict[str, str]) -> dict[str, Placement]:
        engines = self.served.engines
        return {model: Placement(device=device, engine=engine_name(engines[model]) if model in engines else None,
                                 refused=refusals(model),
                                 max_concurrent=_concurrency(engines.get(model)))
                for model, device in devices.items()}

    def beat(self) -> Heartbeat:
        with self._lock:
            beat = self._beat()
        if self.on_beat is not None:
            self.on_beat()
        self.read_wishes()
        return beat

    def _beat(self) -> Heartbeat:
        s, keys = self.settings, self.keys
        served, stats = self.served.snapshot(), self.stats.snapshot()
        models = list(served.devices)
        now, mono = time.time(), time.monotonic()
        depths = queue_depths(self.redis, self.sources, models)
        depth = sum(d["interactive"] + d["bulk"] for d in depths.values())
        running = stats.embedding + served.generating
        last_mono, last_busy = self._last
        busy_fraction = min(1.0, (stats.busy_seconds - last_busy) / max(mono - last_mono, 1e-6))
        self._last = (mono, stats.busy_seconds)
        beat = Heartbeat(
            worker_id=self.worker_id, node_id=s.node_id, pid=os.getpid(), started=self.started_at, at=now,
            models=served.models, devices=served.devices, max_concurrent=s.max_concurrent,
            memory_gb=self.memory_gb(list(served.devices.values())),
            queue_depth=depth, queue_depths=depths, running=running,
            utilization=utilization(depth, running, s.max_concurrent),
            busy_fraction=round(busy_fraction, 3), counters=stats.counters, rss_bytes=rss_bytes(),
            kv_cache=served.kv_cache or None, placements=self.placements(served.devices))
        expires = now + s.heartbeat_ttl_s
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keys.worker(self.worker_id), pack(beat), px=int(s.heartbeat_ttl_s * 1000))
        pipe.zadd(keys.workers, {self.worker_id: expires})
        pipe.zremrangebyscore(keys.workers, "-inf", now - DEAD_WORKER_MEMORY_S)
        for model in models:
            if self.draining:
                pipe.zrem(keys.live(model), self.worker_id)
            else:
                pipe.zadd(keys.live(model), {self.worker_id: expires})
            pipe.zremrangebyscore(keys.live(model), "-inf", now)
        pipe.execute()
        self.beats += 1
        return beat

    def leave_routing(self) -> None:
        """The first step of a drain: out of every model's live set at once (callers read it with a cache of
        half a second), still beating until the held jobs are done."""
        self.draining = True
        try:
            with self._lock:
                self._beat()
        except redis.RedisError as exc:
            log.warning("could not leave routing: %s (callers drop it when its heartbeat expires)", exc)

    def deregister(self) -> None:
        """A clean stop leaves routing at once instead of after the TTL."""
        keys = self.keys
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(keys.worker(self.worker_id))
            pipe.zrem(keys.workers, self.worker_id)
            for model in self.served.names():
                pipe.zrem(keys.live(model), self.worker_id)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not deregister %s: %s (its heartbeat expires by itself)", self.worker_id, exc)


def _concurrency(engine: Engine | None) -> int | None:
    """What a generation engine really runs at once; None for an embedding model (batches, not sequences)."""
    return engine.max_sequences if engine is not None and engine.task == "generation" else None
