"""The worker's heartbeat: how callers know a model has a live worker, and what the fleet shows.

A background thread, because the loop may sit in a long inference; the key expires after
`heartbeat_ttl_s`, so a killed worker disappears from routing by itself, and its peers take over its
jobs (`dead_workers`). After a failed beat (Redis gone) it retries every `RETRY_S`, so a worker is
routable again right after Redis returns (within ~0.1 s), not one interval later.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

import redis
from rq.queue import Queue

from dispatcher.fleet import memory_gb
from dispatcher.nodes import read_node
from dispatcher.protocol import Heartbeat, Keys, pack
from dispatcher.settings import DEAD_WORKER_MEMORY_S

from .devices import device_type

if TYPE_CHECKING:
    from .main import Worker

log = logging.getLogger(__name__)
RETRY_S = 0.1
"""Pause between beats while Redis is unreachable."""


def worker_expiries(r: redis.Redis, keys: Keys, worker_ids: list[str]) -> dict[str, float | None]:
    """When each worker's heartbeat expires (in the past: dead); None: not one of ours, or dead for long."""
    if not worker_ids:
        return {}
    return dict(zip(worker_ids, r.zmscore(keys.workers, worker_ids), strict=True))


def dead_workers(r: redis.Redis, keys: Keys, worker_ids: list[str]) -> set[str]:
    """Workers among these whose heartbeat expired. Only workers read the streams, so an id unknown to
    the index is a worker dead for longer than it remembers (or a Redis that lost its data)."""
    now = time.time()
    return {w for w, expiry in worker_expiries(r, keys, worker_ids).items() if expiry is None or expiry < now}


class HeartbeatThread(threading.Thread):
    def __init__(self, worker: Worker):
        super().__init__(name="heartbeat", daemon=True)
        self.worker = worker
        self.redis = worker.settings.redis()
        self._stop_event = threading.Event()
        self.started_at = time.time()
        self._last = (time.monotonic(), 0.0)

    def run(self) -> None:
        interval = self.worker.settings.heartbeat_interval_s
        pause, failing = interval, False
        while not self._stop_event.wait(pause):
            try:
                self.beat()
                if failing:
                    log.info("heartbeat back")
                pause, failing = interval, False
            except Exception as exc:  # the thread must outlive any one failure
                if not failing:
                    log.warning("heartbeat failed: %s; retrying every %.2fs", exc, RETRY_S)
                pause, failing = min(RETRY_S, interval), True

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)

    def queue_depths(self) -> dict[str, dict[str, int]]:
        """Per model, both lanes, counting the node's routed keys and the shared ones."""
        w = self.worker
        models = list(w.pipelines)
        pipe = self.redis.pipeline(transaction=False)
        for model in models:
            for stream in w.streams(model):
                pipe.xlen(stream)
            for queue in w.queues(model):
                pipe.llen(Queue.redis_queue_namespace_prefix + queue)
        counts = pipe.execute()
        return {m: {"interactive": counts[4 * i] + counts[4 * i + 1], "bulk": counts[4 * i + 2] + counts[4 * i + 3]}
                for i, m in enumerate(models)}

    def read_wishes(self) -> None:
        """The node's wanted models, set by an operator through the fleet API."""
        node = read_node(self.redis, self.worker.keys, self.worker.settings.node_id)
        self.worker.desired_models = set(node.models) if node and node.models is not None else None

    def beat(self) -> Heartbeat:
        w, s = self.worker, self.worker.settings
        now, mono = time.time(), time.monotonic()
        depths = self.queue_depths()
        depth = sum(d["interactive"] + d["bulk"] for d in depths.values())
        last_mono, last_busy = self._last
        busy_fraction = min(1.0, (w.busy_seconds - last_busy) / max(mono - last_mono, 1e-6))
        self._last = (mono, w.busy_seconds)
        beat = Heartbeat(
            worker_id=w.worker_id, node_id=s.node_id, pid=os.getpid(), started=self.started_at, at=now,
            models={m: device_type(p.device) for m, p in w.pipelines.items()},
            devices=w.devices(), max_concurrent=s.max_concurrent, memory_gb=memory_gb(),
            queue_depth=depth, queue_depths=depths, running=w.running,
            utilization=round(min(100.0, 100.0 * (depth + w.running) / s.max_concurrent), 1),
            busy_fraction=round(busy_fraction, 3), counters=dict(w.counters))
        expires = now + s.heartbeat_ttl_s
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(w.keys.worker(w.worker_id), pack(beat), px=int(s.heartbeat_ttl_s * 1000))
        pipe.zadd(w.keys.workers, {w.worker_id: expires})
        pipe.zremrangebyscore(w.keys.workers, "-inf", now - DEAD_WORKER_MEMORY_S)
        for model in w.pipelines:
            pipe.zadd(w.keys.live(model), {w.worker_id: expires})
            pipe.zremrangebyscore(w.keys.live(model), "-inf", now)
        pipe.execute()
        if w.bulk is not None:
            w.bulk.heartbeat()
        self.read_wishes()
        return beat

    def deregister(self) -> None:
        """A clean stop leaves routing at once instead of after the TTL."""
        w = self.worker
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(w.keys.worker(w.worker_id))
            pipe.zrem(w.keys.workers, w.worker_id)
            for model in w.pipelines:
                pipe.zrem(w.keys.live(model), w.worker_id)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not deregister %s: %s (its heartbeat expires by itself)", w.worker_id, exc)
