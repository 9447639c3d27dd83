"""The fleet service: nodes and their live state, read from worker heartbeats and the node registry.

The facade's fleet routes, `/health` and the CLI's `status` all read the fleet through `Fleet`, so a node's
figures (load, models, device type) are computed in one place, and nothing but this module and
`dispatcher.nodes` speaks Redis for the fleet. Node views use the seed's field names (camelCase).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import redis.asyncio as aredis

from .detection import detect
from .errors import ConflictError, ErrorCode, InvalidInputError, NotFoundError
from .models import Registry
from .nodes import NPU_ROLE, LoadBalancing, Node, NodeStore
from .protocol import Heartbeat, Keys, Placement, unpack, utilization
from .settings import FacadeSettings

RQ_QUEUE_PREFIX = "rq:queue:"
"""What RQ puts before a queue's name to make its list key (`rq.Queue.redis_queue_namespace_prefix`)."""
DEVICE_ORDER = ["intel-npu", "nvidia-gpu", "amd-gpu", "intel-gpu", "cpu"]


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


def placements(beats: list[Heartbeat]) -> dict[str, Placement]:
    """Per model: where it runs (on the most capable device any worker has it on), its engine, and why the
    earlier devices of the chain refused it: what /health, the node card and `npu-worker status` show."""
    best: dict[str, tuple[int, Placement]] = {}
    for beat in beats:
        for model, placement in (beat.placements or {}).items():
            dtype = beat.models.get(model, "")
            rank = DEVICE_ORDER.index(dtype) if dtype in DEVICE_ORDER else len(DEVICE_ORDER)
            if model not in best or rank < best[model][0]:
                best[model] = (rank, placement)
    return {model: best[model][1] for model in sorted(best)}


def iso(ts: float | None) -> str | None:
    """A time as the seed writes it: ISO 8601 in UTC, to the second (`2026-02-04T10:30:00Z`). Every time in
    a fleet body is written so; only the utilization history keeps unix seconds (chart data)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def best_device_type(types: set[str] | list[str]) -> str | None:
    """The most capable of several device types, for a node-level summary."""
    return min(types, key=lambda t: DEVICE_ORDER.index(t) if t in DEVICE_ORDER else len(DEVICE_ORDER),
               default=None)


@dataclass
class Load:
    """Several workers' heartbeats taken together: one node's, or the whole fleet's."""

    workers: int
    models: dict[str, ModelState]
    running: int
    max_concurrent: int
    memory_gb: float | None

    @classmethod
    def of(cls, beats: list[Heartbeat]) -> Load:
        return cls(workers=len(beats), models=by_model(beats), running=sum(b.running for b in beats),
                   max_concurrent=sum(b.max_concurrent for b in beats),
                   memory_gb=max((b.memory_gb for b in beats), default=None))

    @property
    def queued(self) -> int:
        """Jobs waiting, each shared queue counted once however many workers report it."""
        return sum(s.interactive_depth + s.bulk_depth for s in self.models.values())

    @property
    def utilization(self) -> float:
        return utilization(self.queued, self.running, self.max_concurrent)

    @property
    def device_type(self) -> str | None:
        return best_device_type({d for s in self.models.values() for d in s.devices})

    @property
    def loaded_models(self) -> list[str]:
        return sorted(self.models)


def by_node(beats: list[Heartbeat]) -> dict[str, list[Heartbeat]]:
    nodes: dict[str, list[Heartbeat]] = {}
    for beat in beats:
        nodes.setdefault(beat.node_id, []).append(beat)
    return nodes


def node_id_from(name: str) -> str:
    """The id a node added without one gets: its name, lower case, other characters as dashes."""
    return "".join(c if c.isalnum() or c in "_.-" else "-" for c in name.lower())[:64]


class Fleet:
    """The fleet over one async Redis client: what the facade's fleet routes, `/health` and the CLI ask."""

    def __init__(self, r: aredis.Redis, keys: Keys, settings: FacadeSettings, registry: Registry):
        self.r, self.keys, self.settings, self.registry = r, keys, settings, registry
        self.store = NodeStore(r, keys)

    async def heartbeats(self) -> list[Heartbeat]:
        """Heartbeats of the live workers."""
        ids: Any = await self.r.zrangebyscore(self.keys.workers, time.time(), "+inf")
        raws: Any = await self.r.mget([self.keys.worker(i.decode()) for i in ids]) if ids else []
        # A key can expire between the two reads: such a worker is simply no longer live.
        return [Heartbeat.model_validate(unpack(raw)) for raw in raws if raw]

    async def queue_depths(self, beats: list[Heartbeat]) -> dict[str, dict[str, int]]:
        """Per registered model, jobs waiting in each lane: its shared stream and RQ queue plus those routed
        to the nodes of `beats`. Read directly (one pipeline), so a model with no live worker, whose
        backlog is what an operator wants to see, is counted too."""
        nodes = sorted({b.node_id for b in beats})
        pipe = self.r.pipeline(transaction=False)
        slots: list[tuple[str, str]] = []
        for model in self.registry.names:
            for node in [None, *nodes]:
                pipe.xlen(self.keys.stream(model, node))
                pipe.llen(RQ_QUEUE_PREFIX + self.keys.queue(model, node))
                slots += [(model, "interactive"), (model, "bulk")]
        depths = {m: {"interactive": 0, "bulk": 0} for m in self.registry.names}
        for (model, lane), n in zip(slots, await pipe.execute(), strict=True):
            depths[model][lane] += int(n)
        return depths

    async def _beats_of(self, node_id: str) -> list[Heartbeat]:
        return [b for b in await self.heartbeats() if b.node_id == node_id]

    async def node(self, node_id: str) -> Node:
        """The registry's record; a node with live workers that is not registered yet reads as a bare one."""
        node = await self.store.get(node_id)
        if node is not None:
            return node
        if not await self._beats_of(node_id):
            raise NotFoundError(f"no node {node_id!r}")
        return Node(id=node_id, name=node_id, roles=[NPU_ROLE])

    @staticmethod
    def view(node: Node, beats: list[Heartbeat]) -> dict[str, Any]:
        """A node for the operator page: its record and its measured state."""
        load = Load.of(beats)
        return {
            "id": node.id, "name": node.name, "address": node.address, "roles": node.roles, "labels": node.labels,
            "legacy_signing": node.legacy_signing,
            "created": iso(node.created), "updated": iso(node.updated), "status": "online" if beats else "offline",
            "workers": load.workers, "deviceType": load.device_type, "loadedModels": load.loaded_models,
            "utilization": load.utilization, "queueDepth": load.queued,
            "capabilities": node.capabilities, "lastHealthCheck": iso(node.last_health_check),
            "detection": {**node.detection.model_dump(), "at": iso(node.detection.at)} if node.detection else None,
            "models": node.models,
            "placements": {m: p.model_dump() for m, p in placements(beats).items()},
        }

    async def _saved_view(self, node: Node) -> dict[str, Any]:
        await self.store.put(node)
        return self.view(node, await self._beats_of(node.id))

    async def nodes(self, role: str | None = None) -> list[dict[str, Any]]:
        """Registered nodes and nodes with live workers, by name."""
        beats = by_node(await self.heartbeats())
        nodes = {n.id: n for n in await self.store.all()}
        for node_id in beats.keys() - nodes.keys():
            nodes[node_id] = Node(id=node_id, name=node_id, roles=[NPU_ROLE])
        views = [self.view(n, beats.get(n.id, [])) for n in sorted(nodes.values(), key=lambda n: n.name)]
        return [v for v in views if role is None or role in v["roles"]]

    async def add(self, name: str, node_id: str | None = None, address: str | None = None,
                  roles: list[str] | None = None, labels: dict[str, str] | None = None, *,
                  legacy_signing: bool = False) -> dict[str, Any]:
        """A new node; given the npu-worker role, its capabilities are detected at once."""
        node_id = node_id or node_id_from(name)
        if await self.store.get(node_id):
            raise ConflictError(f"node {node_id!r} exists")
        node = Node(id=node_id, name=name, address=address, roles=sorted(set(roles or [])), labels=labels or {},
                    legacy_signing=legacy_signing)
        if NPU_ROLE in node.roles:
            node = await detect(node, self.settings)
        return await self._saved_view(node)

    async def update(self, node_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Changed fields; gaining the npu-worker role, or a new address with it, detects capabilities."""
        node = await self.node(node_id)
        roles = changes.get("roles")
        gains_role = roles is not None and NPU_ROLE in roles and NPU_ROLE not in node.roles
        for name, value in changes.items():
            setattr(node, name, sorted(set(value)) if name == "roles" else value)
        if gains_role or (("address" in changes or "legacy_signing" in changes) and NPU_ROLE in node.roles):
            node = await detect(node, self.settings)
        return await self._saved_view(node)

    async def remove(self, node_id: str) -> None:
        if not await self.store.delete(node_id):
            raise NotFoundError(f"no node {node_id!r}")

    async def detect(self, node_id: str) -> dict[str, Any]:
        return await self._saved_view(await detect(await self.node(node_id), self.settings))

    async def status(self, node_id: str) -> dict[str, Any]:
        """The seed's shape exactly. Measured values when the node has live workers; else what the last
        detection read; else nulls (never invented defaults)."""
        node, beats = await self.node(node_id), await self._beats_of(node_id)
        load, detected = Load.of(beats), node.capabilities or {}
        if beats:
            capabilities = {"models": load.loaded_models, "maxConcurrent": load.max_concurrent,
                            "memoryGB": load.memory_gb, "deviceType": load.device_type,
                            "utilization": load.utilization}
        else:
            capabilities = {k: detected.get(k) for k in ("models", "maxConcurrent", "memoryGB", "deviceType",
                                                         "utilization")}
        return {"node_id": node_id, "capabilities": capabilities,
                "loadedModels": load.loaded_models if beats else detected.get("loadedModels", []),
                "queueDepth": load.queued if beats else 0,
                "lastHealthCheck": iso(max(filter(None, [node.last_health_check, *(b.at for b in beats)]),
                                           default=None))}

    async def details(self, node_id: str) -> dict[str, Any]:
        """What the details panel shows: per-model activity, memory, queues, an hour of utilization."""
        node, beats = await self.node(node_id), await self._beats_of(node_id)
        load = Load.of(beats)
        models = []
        for name in self.registry.names:
            counters = [b.counters for b in beats if name in b.models]
            inferences = sum(c.get(f"model:{name}:inferences", 0) for c in counters)
            busy_ms = sum(c.get(f"model:{name}:busy_ms", 0) for c in counters)
            items = sum(c.get(f"model:{name}:items", 0) for c in counters)
            devices = sorted(load.models[name].devices) if name in load.models else []
            models.append({"name": name, "task": self.registry.specs[name].task, "loaded": name in load.models,
                           "wanted": node.models is None or name in node.models,
                           "device": devices[0] if devices else None, "inferences": inferences,
                           "meanLatencyMs": round(busy_ms / inferences, 2) if inferences else None,
                           "throughputPerS": round(items * 1000 / busy_ms, 1) if busy_ms else None})
        workers = [{"workerId": b.worker_id, "pid": b.pid, "rssBytes": b.rss_bytes,
                    "kvCache": {m: c.model_dump() for m, c in (b.kv_cache or {}).items()}}
                   for b in sorted(beats, key=lambda b: b.worker_id)]
        reported = [b.rss_bytes for b in beats if b.rss_bytes is not None]
        served: dict[str, int] = {}  # per app: texts embedded and tokens generated (worker/interactive.py)
        for beat in beats:
            for name, value in beat.counters.items():
                if name.startswith("app:") and name.endswith(":work"):
                    served[name[4:-5]] = served.get(name[4:-5], 0) + value
        return {"node_id": node_id, "models": models,
                "apps": [{"name": n, "work": w} for n, w in sorted(served.items())],
                "memoryGB": load.memory_gb, "utilization": load.utilization,
                "workerMemoryBytes": sum(reported) if reported else None, "workers": workers,
                "queueDepth": {m: {"interactive": s.interactive_depth, "bulk": s.bulk_depth}
                               for m, s in load.models.items()},
                "history": await self.history(node_id)}

    async def history(self, node_id: str) -> list[list[float]]:
        """[time, utilization] samples, oldest first."""
        raw: Any = await self.r.lrange(self.keys.history(node_id), 0, -1)
        return [[float(t), float(u)] for t, u in (h.decode().split(":") for h in reversed(raw))]

    async def sample_history(self) -> None:
        """One utilization sample per live node per interval. Facades share the work: the first to claim an
        interval's slot writes it."""
        now, s = time.time(), self.settings
        slot = int(now // s.history_interval_s)
        for node_id, beats in by_node(await self.heartbeats()).items():
            key = self.keys.history(node_id)
            if not await self.r.set(f"{key}:slot:{slot}", 1, nx=True, ex=int(3 * s.history_interval_s) + 1):
                continue
            pipe = self.r.pipeline(transaction=False)
            pipe.lpush(key, f"{now:.0f}:{Load.of(beats).utilization}")
            pipe.ltrim(key, 0, s.history_samples - 1)
            await pipe.execute()

    async def want_model(self, node_id: str, model: str, loaded: bool) -> dict[str, Any]:
        """Record that the node should (not) serve `model`; its workers apply it on their next heartbeat."""
        self.registry.get(model)  # 404 for an unknown model
        node = await self.node(node_id)
        current = node.models if node.models is not None else Load.of(await self._beats_of(node_id)).loaded_models
        node.models = sorted(set(current) | {model}) if loaded else sorted(set(current) - {model})
        await self.store.put(node)
        return {"node_id": node_id, "models": node.models}

    async def load_balancing(self) -> LoadBalancing:
        return await self.store.load_balancing()

    async def set_load_balancing(self, setting: LoadBalancing) -> LoadBalancing:
        """Stored only if every affinity names a known model and a node that serves (or is meant to) it."""
        nodes = {n.id: n for n in await self.store.all()}
        beats = by_node(await self.heartbeats())
        for model, node_ids in setting.modelAffinity.items():
            if model not in self.registry.specs:
                raise InvalidInputError(f"modelAffinity names unknown model {model!r}", code=ErrorCode.UNKNOWN_MODEL)
            for node_id in node_ids:
                if node_id not in nodes and node_id not in beats:
                    raise InvalidInputError(f"modelAffinity names unknown node {node_id!r}",
                                            code=ErrorCode.UNKNOWN_NODE)
                node = nodes.get(node_id)
                has = {m for b in beats.get(node_id, []) for m in b.models}
                if node:
                    detected: Any = (node.capabilities or {}).get("models") or []
                    has |= set(node.models or []) | set(detected)
                if model not in has:
                    raise InvalidInputError(f"node {node_id!r} does not serve {model!r}",
                                            code=ErrorCode.MODEL_NOT_ON_NODE)
        await self.store.set_load_balancing(setting)
        return setting
