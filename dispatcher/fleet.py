"""Reading the fleet's state from worker heartbeats (who is alive, serving what, how loaded)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import redis
import redis.asyncio as aredis

from .protocol import Heartbeat, Keys, unpack


async def live_heartbeats(r: aredis.Redis, keys: Keys) -> list[Heartbeat]:
    ids = await r.zrangebyscore(keys.workers, time.time(), "+inf")
    return _beats(await r.mget([keys.worker(i.decode()) for i in ids]) if ids else [])


def live_heartbeats_sync(r: redis.Redis, keys: Keys) -> list[Heartbeat]:
    ids = r.zrangebyscore(keys.workers, time.time(), "+inf")
    return _beats(r.mget([keys.worker(i.decode()) for i in ids]) if ids else [])


def _beats(raws: list[bytes | None]) -> list[Heartbeat]:
    # A key can expire between the two reads: such a worker is simply no longer live.
    return [Heartbeat.model_validate(unpack(raw)) for raw in raws if raw]


@dataclass
class ModelState:
    workers: int = 0
    devices: set[str] = field(default_factory=set)
    interactive_depth: int = 0
    bulk_depth: int = 0


def by_model(beats: list[Heartbeat]) -> dict[str, ModelState]:
    """Per model: live workers, device types, and queue depth (every worker reports the same shared
    queues, so depth is taken once per model, not summed)."""
    states: dict[str, ModelState] = {}
    for beat in beats:
        for model, dtype in beat.models.items():
            state = states.setdefault(model, ModelState())
            state.workers += 1
            state.devices.add(dtype)
            depth = beat.queue_depths.get(model, {})
            state.interactive_depth = max(state.interactive_depth, depth.get("interactive", 0))
            state.bulk_depth = max(state.bulk_depth, depth.get("bulk", 0))
    return states


DEVICE_ORDER = ["intel-npu", "nvidia-gpu", "amd-gpu", "intel-gpu", "cpu"]


def best_device_type(types: set[str] | list[str]) -> str | None:
    """The most capable of several device types, for a node-level summary."""
    return min(types, key=lambda t: DEVICE_ORDER.index(t) if t in DEVICE_ORDER else len(DEVICE_ORDER),
               default=None)


def memory_gb() -> float:
    """This host's memory, as the seed's `memory_gb` reports it."""
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
