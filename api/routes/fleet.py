"""Fleet endpoints (seed contracts): nodes, the npu-worker role with capability detection, per-node
status and details, model load/unload, and the load-balancing setting that routing obeys."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from dispatcher.client import AsyncDispatcher
from dispatcher.detection import detect
from dispatcher.errors import InvalidInputError, NotFoundError
from dispatcher.fleet import best_device_type, by_model, live_heartbeats
from dispatcher.nodes import NPU_ROLE, LoadBalancing, Node, NodeStore
from dispatcher.protocol import Heartbeat

from ..auth import RESPONSES, require_admin, require_read
from ..deps import Dispatcher

router = APIRouter(tags=["fleet"], responses=RESPONSES)
Read = [Depends(require_read)]
Admin = [Depends(require_admin)]


class NodeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Default: made from the name.")
    name: str = Field(min_length=1, max_length=128)
    address: str | None = Field(None, pattern=r"^https?://", description="Base URL of the node's facade.")
    roles: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)


class NodeUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=128)
    address: str | None = Field(None, pattern=r"^https?://")
    roles: list[str] | None = None
    labels: dict[str, str] | None = None


def _store(dispatcher: Dispatcher) -> NodeStore:
    return NodeStore(dispatcher.redis, dispatcher.keys)


def _by_node(beats: list[Heartbeat]) -> dict[str, list[Heartbeat]]:
    nodes: dict[str, list[Heartbeat]] = {}
    for beat in beats:
        nodes.setdefault(beat.node_id, []).append(beat)
    return nodes


def _live(beats: list[Heartbeat]) -> dict[str, Any]:
    """A node's measured state from its workers' heartbeats."""
    states = by_model(beats)
    return {
        "workers": len(beats),
        "deviceType": best_device_type({d for s in states.values() for d in s.devices}),
        "loadedModels": sorted(states),
        "utilization": round(sum(b.utilization for b in beats) / len(beats), 1) if beats else 0.0,
        "queueDepth": sum(s.interactive_depth + s.bulk_depth for s in states.values()),
        "maxConcurrent": sum(b.max_concurrent for b in beats),
        "memoryGB": max((b.memory_gb for b in beats), default=None),
    }


def _view(node: Node, beats: list[Heartbeat]) -> dict[str, Any]:
    live = _live(beats)
    return {
        "id": node.id, "name": node.name, "address": node.address, "roles": node.roles, "labels": node.labels,
        "created": node.created, "updated": node.updated, "status": "online" if beats else "offline",
        "workers": live["workers"], "deviceType": live["deviceType"], "loadedModels": live["loadedModels"],
        "utilization": live["utilization"], "queueDepth": live["queueDepth"],
        "capabilities": node.capabilities, "lastHealthCheck": node.last_health_check,
        "detection": node.detection.model_dump() if node.detection else None, "models": node.models,
    }


async def _node(dispatcher: Dispatcher, node_id: str) -> Node:
    node = await _store(dispatcher).get(node_id)
    if node is None:
        beats = [b for b in await live_heartbeats(dispatcher.redis, dispatcher.keys) if b.node_id == node_id]
        if not beats:
            raise NotFoundError(f"no node {node_id!r}")
        node = Node(id=node_id, name=node_id, roles=[NPU_ROLE])  # live, not yet in the registry
    return node


async def _node_beats(dispatcher: Dispatcher, node_id: str) -> list[Heartbeat]:
    return [b for b in await live_heartbeats(dispatcher.redis, dispatcher.keys) if b.node_id == node_id]


@router.get("/api/fleet/nodes", dependencies=Read)
async def list_nodes(dispatcher: Dispatcher, role: Annotated[str | None, Query()] = None) -> dict[str, Any]:
    beats = _by_node(await live_heartbeats(dispatcher.redis, dispatcher.keys))
    nodes = {n.id: n for n in await _store(dispatcher).all()}
    for node_id in beats.keys() - nodes.keys():
        nodes[node_id] = Node(id=node_id, name=node_id, roles=[NPU_ROLE])
    views = [_view(n, beats.get(n.id, [])) for n in sorted(nodes.values(), key=lambda n: n.name)]
    return {"nodes": [v for v in views if role is None or role in v["roles"]]}


@router.post("/api/fleet/nodes", status_code=201, dependencies=Admin)
async def add_node(body: NodeCreate, request: Request, dispatcher: Dispatcher) -> dict[str, Any]:
    node_id = body.id or "".join(c if c.isalnum() or c in "_.-" else "-" for c in body.name.lower())[:64]
    store = _store(dispatcher)
    if await store.get(node_id):
        raise InvalidInputError(f"node {node_id!r} exists", code="conflict")
    node = Node(id=node_id, name=body.name, address=body.address, roles=sorted(set(body.roles)), labels=body.labels)
    if NPU_ROLE in node.roles:
        node = await detect(node, request.app.state.settings)
    await store.put(node)
    return _view(node, await _node_beats(dispatcher, node_id))


@router.patch("/api/fleet/nodes/{node_id}", dependencies=Admin)
async def update_node(node_id: str, body: NodeUpdate, request: Request, dispatcher: Dispatcher) -> dict[str, Any]:
    node = await _node(dispatcher, node_id)
    gains_role = body.roles is not None and NPU_ROLE in body.roles and NPU_ROLE not in node.roles
    for field, value in body.model_dump(exclude_none=True).items():
        setattr(node, field, sorted(set(value)) if field == "roles" else value)
    if gains_role or (body.address is not None and NPU_ROLE in node.roles):
        node = await detect(node, request.app.state.settings)  # assigning the role detects capabilities
    await _store(dispatcher).put(node)
    return _view(node, await _node_beats(dispatcher, node_id))


@router.delete("/api/fleet/nodes/{node_id}", status_code=204, dependencies=Admin)
async def remove_node(node_id: str, dispatcher: Dispatcher) -> Response:
    if not await _store(dispatcher).delete(node_id):
        raise NotFoundError(f"no node {node_id!r}")
    return Response(status_code=204)


@router.post("/api/fleet/nodes/{node_id}/detect", dependencies=Admin)
async def detect_again(node_id: str, request: Request, dispatcher: Dispatcher) -> dict[str, Any]:
    node = await detect(await _node(dispatcher, node_id), request.app.state.settings)
    await _store(dispatcher).put(node)
    return _view(node, await _node_beats(dispatcher, node_id))


@router.get("/api/nodes/{node_id}/npu/status", dependencies=Read)
async def npu_status(node_id: str, dispatcher: Dispatcher) -> dict[str, Any]:
    """The seed's shape exactly. Measured values when the node has live workers; else what the last
    detection read; else nulls (never invented defaults)."""
    node, beats = await _node(dispatcher, node_id), await _node_beats(dispatcher, node_id)
    live, detected = _live(beats), node.capabilities or {}
    if beats:
        capabilities = {"models": live["loadedModels"], "maxConcurrent": live["maxConcurrent"],
                        "memoryGB": live["memoryGB"], "deviceType": live["deviceType"],
                        "utilization": live["utilization"]}
    else:
        capabilities = {k: detected.get(k) for k in ("models", "maxConcurrent", "memoryGB", "deviceType",
                                                     "utilization")}
    return {"node_id": node_id, "capabilities": capabilities,
            "loadedModels": live["loadedModels"] if beats else detected.get("loadedModels", []),
            "queueDepth": live["queueDepth"] if beats else 0,
            "lastHealthCheck": max(filter(None, [node.last_health_check, *(b.at for b in beats)]), default=None)}


@router.get("/api/nodes/{node_id}/npu/details", dependencies=Read)
async def npu_details(node_id: str, dispatcher: Dispatcher) -> dict[str, Any]:
    """What the details panel shows: per-model activity, memory, queues, an hour of utilization."""
    node, beats = await _node(dispatcher, node_id), await _node_beats(dispatcher, node_id)
    live, states = _live(beats), by_model(beats)
    models = []
    for name in dispatcher.registry.names:
        counters = [b.counters for b in beats if name in b.models]
        inferences = sum(c.get(f"model:{name}:inferences", 0) for c in counters)
        busy_ms = sum(c.get(f"model:{name}:busy_ms", 0) for c in counters)
        items = sum(c.get(f"model:{name}:items", 0) for c in counters)
        devices = sorted(states[name].devices) if name in states else []
        models.append({"name": name, "task": dispatcher.registry.specs[name].task, "loaded": name in states,
                       "wanted": node.models is None or name in node.models, "device": devices[0] if devices else None,
                       "inferences": inferences,
                       "meanLatencyMs": round(busy_ms / inferences, 2) if inferences else None,
                       "throughputPerS": round(items * 1000 / busy_ms, 1) if busy_ms else None})
    history = await dispatcher.redis.lrange(dispatcher.keys.history(node_id), 0, -1)
    samples = [[float(t), float(u)] for t, u in (h.decode().split(":") for h in reversed(history))]
    return {"node_id": node_id, "models": models, "memoryGB": live["memoryGB"], "utilization": live["utilization"],
            "queueDepth": {m: {"interactive": s.interactive_depth, "bulk": s.bulk_depth} for m, s in states.items()},
            "history": samples}


async def _set_models(dispatcher: Dispatcher, node_id: str, model: str, load: bool) -> dict[str, Any]:
    dispatcher.registry.get(model)  # 404 for an unknown model
    node = await _node(dispatcher, node_id)
    current = node.models if node.models is not None else _live(await _node_beats(dispatcher, node_id))["loadedModels"]
    node.models = sorted(set(current) | {model}) if load else sorted(set(current) - {model})
    await _store(dispatcher).put(node)  # the node's workers apply it on their next heartbeat
    return {"node_id": node_id, "models": node.models}


@router.post("/api/nodes/{node_id}/models/{model}/load", status_code=202, dependencies=Admin)
async def load_model(node_id: str, model: str, dispatcher: Dispatcher) -> dict[str, Any]:
    return await _set_models(dispatcher, node_id, model, load=True)


@router.post("/api/nodes/{node_id}/models/{model}/unload", status_code=202, dependencies=Admin)
async def unload_model(node_id: str, model: str, dispatcher: Dispatcher) -> dict[str, Any]:
    return await _set_models(dispatcher, node_id, model, load=False)


@router.get("/api/npu/load-balancing", dependencies=Read)
async def get_load_balancing(dispatcher: Dispatcher) -> LoadBalancing:
    return await _store(dispatcher).load_balancing()


@router.post("/api/npu/load-balancing", dependencies=Admin)
async def set_load_balancing(body: LoadBalancing, dispatcher: Dispatcher) -> LoadBalancing:
    store = _store(dispatcher)
    nodes = {n.id: n for n in await store.all()}
    beats = _by_node(await live_heartbeats(dispatcher.redis, dispatcher.keys))
    for model, node_ids in body.modelAffinity.items():
        if model not in dispatcher.registry.specs:
            raise InvalidInputError(f"modelAffinity names unknown model {model!r}", code="unknown_model")
        for node_id in node_ids:
            if node_id not in nodes and node_id not in beats:
                raise InvalidInputError(f"modelAffinity names unknown node {node_id!r}", code="unknown_node")
            node = nodes.get(node_id)
            has = {m for b in beats.get(node_id, []) for m in b.models}
            has |= set(node.models or []) | set((node.capabilities or {}).get("models", [])) if node else set()
            if model not in has:
                raise InvalidInputError(f"node {node_id!r} does not serve {model!r}", code="model_not_on_node")
    await store.set_load_balancing(body)
    return body


async def sample_history(dispatcher: AsyncDispatcher) -> None:
    """One utilization sample per node per interval. Facades share the work: the first to claim an
    interval's slot writes it."""
    now, settings = time.time(), dispatcher.settings
    slot, keep = int(now // settings.history_interval_s), settings.history_samples
    for node_id, beats in _by_node(await live_heartbeats(dispatcher.redis, dispatcher.keys)).items():
        claim = f"{dispatcher.keys.history(node_id)}:slot:{slot}"
        if not await dispatcher.redis.set(claim, 1, nx=True, ex=int(3 * settings.history_interval_s) + 1):
            continue
        pipe = dispatcher.redis.pipeline(transaction=False)
        pipe.lpush(dispatcher.keys.history(node_id), f"{now:.0f}:{_live(beats)['utilization']}")
        pipe.ltrim(dispatcher.keys.history(node_id), 0, keep - 1)
        await pipe.execute()
