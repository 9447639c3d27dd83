"""The node registry and the load-balancing setting, both kept in Redis.

A node is a host running workers (and usually a facade). Workers register their node on their first
heartbeat; an admin adds nodes by address. The record also carries what capability detection found
and which models an operator wants the node to serve.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson
import redis
import redis.asyncio as aredis
from pydantic import BaseModel, ConfigDict, Field

from .protocol import Keys

NPU_ROLE = "npu-worker"


class Detection(BaseModel):
    status: Literal["pending", "ok", "error", "not_configured"]
    error: str | None = None
    at: float | None = None


class Node(BaseModel):
    id: str
    name: str
    address: str | None = Field(None, description="Base URL of the node's facade, for capability probes.")
    legacy_signing: bool = Field(False, description="The node's facade accepts only v1 signatures: detection "
                                 "signs v1 for it (replayable within the window) instead of host-bound v2.")
    roles: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    capabilities: dict[str, object] | None = None
    """What the last successful detection read from the node's /health and /models (seed field names)."""
    last_health_check: float | None = None
    detection: Detection | None = None
    models: list[str] | None = None
    """Models the operator wants loaded on this node; None: whatever its workers were started with."""


class LoadBalancing(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # an unknown key is a mistake to name, not to drop
    strategy: Literal["round-robin", "least-loaded", "model-affinity"] = "least-loaded"
    modelAffinity: dict[str, list[str]] = Field(default_factory=dict)  # noqa: N815 (the seed's name)


def _dump(model: BaseModel) -> bytes:
    return orjson.dumps(model.model_dump())


class NodeStore:
    """Async access, for the fleet service (`dispatcher.fleet.Fleet`)."""

    def __init__(self, r: aredis.Redis, keys: Keys):
        self.r, self.keys = r, keys

    async def get(self, node_id: str) -> Node | None:
        raw = await self.r.get(self.keys.node(node_id))
        return Node.model_validate_json(raw) if raw else None

    async def all(self) -> list[Node]:
        members: Any = await self.r.smembers(self.keys.nodes)
        ids = sorted(i.decode() for i in members)
        raws = await self.r.mget([self.keys.node(i) for i in ids]) if ids else []
        return [Node.model_validate_json(raw) for raw in raws if raw]

    async def put(self, node: Node) -> Node:
        node.updated = time.time()
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.keys.node(node.id), _dump(node))
        pipe.sadd(self.keys.nodes, node.id)
        await pipe.execute()
        return node

    async def delete(self, node_id: str) -> bool:
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.keys.node(node_id), self.keys.history(node_id))
        pipe.srem(self.keys.nodes, node_id)
        return bool((await pipe.execute())[0])

    async def load_balancing(self) -> LoadBalancing:
        raw = await self.r.get(self.keys.load_balancing)
        return LoadBalancing.model_validate_json(raw) if raw else LoadBalancing()

    async def set_load_balancing(self, setting: LoadBalancing) -> None:
        await self.r.set(self.keys.load_balancing, _dump(setting))


def register_node(r: redis.Redis, keys: Keys, node_id: str, address: str | None) -> Node:
    """A worker's node joins the registry with the npu-worker role, once: an admin's later changes
    (a removed role, a rename) are not overwritten by the next heartbeat."""
    node = Node(id=node_id, name=node_id, address=address, roles=[NPU_ROLE])
    pipe = r.pipeline(transaction=True)
    pipe.set(keys.node(node_id), _dump(node), nx=True)
    pipe.sadd(keys.nodes, node_id)
    pipe.get(keys.node(node_id))
    return Node.model_validate_json(pipe.execute()[2])


def read_node(r: redis.Redis, keys: Keys, node_id: str) -> Node | None:
    raw = r.get(keys.node(node_id))
    return Node.model_validate_json(raw) if raw else None


def read_load_balancing(raw: bytes | None) -> LoadBalancing:
    return LoadBalancing.model_validate_json(raw) if raw else LoadBalancing()
