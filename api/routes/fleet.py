"""Fleet endpoints (seed contracts): nodes, the npu-worker role with capability detection, per-node
status and details, model load/unload, and the load-balancing setting that routing obeys.

Thin: each route parses its input and asks `dispatcher.fleet.Fleet`, which the CLI uses too."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from dispatcher.nodes import LoadBalancing

from ..auth import RESPONSES, AuthenticatedRoute, require_admin, require_read
from ..deps import Fleet

router = APIRouter(route_class=AuthenticatedRoute, tags=["fleet"], responses=RESPONSES)
Read = [Depends(require_read)]
Admin = [Depends(require_admin)]


class NodeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Default: made from the name.")
    name: str = Field(min_length=1, max_length=128)
    address: str | None = Field(None, pattern=r"^https?://", description="Base URL of the node's facade.")
    legacy_signing: bool = Field(False, description="Its facade accepts only v1 signatures (detection signs v1).")
    roles: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)


class NodeUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str | None = Field(None, min_length=1, max_length=128)
    address: str | None = Field(None, pattern=r"^https?://")
    legacy_signing: bool | None = None
    roles: list[str] | None = None
    labels: dict[str, str] | None = None


@router.get("/api/fleet/nodes", dependencies=Read)
async def list_nodes(fleet: Fleet, role: Annotated[str | None, Query()] = None) -> dict[str, Any]:
    return {"nodes": await fleet.nodes(role)}


@router.post("/api/fleet/nodes", status_code=201, dependencies=Admin, responses={409: {"description": "Exists"}})
async def add_node(body: NodeCreate, fleet: Fleet) -> dict[str, Any]:
    return await fleet.add(body.name, body.id, body.address, body.roles, body.labels,
                           legacy_signing=body.legacy_signing)


@router.patch("/api/fleet/nodes/{node_id}", dependencies=Admin)
async def update_node(node_id: str, body: NodeUpdate, fleet: Fleet) -> dict[str, Any]:
    return await fleet.update(node_id, body.model_dump(exclude_none=True))


@router.delete("/api/fleet/nodes/{node_id}", status_code=204, dependencies=Admin)
async def remove_node(node_id: str, fleet: Fleet) -> Response:
    await fleet.remove(node_id)
    return Response(status_code=204)


@router.post("/api/fleet/nodes/{node_id}/detect", dependencies=Admin)
async def detect_again(node_id: str, fleet: Fleet) -> dict[str, Any]:
    return await fleet.detect(node_id)


@router.get("/api/nodes/{node_id}/npu/status", dependencies=Read)
async def npu_status(node_id: str, fleet: Fleet) -> dict[str, Any]:
    return await fleet.status(node_id)


@router.get("/api/nodes/{node_id}/npu/details", dependencies=Read)
async def npu_details(node_id: str, fleet: Fleet) -> dict[str, Any]:
    return await fleet.details(node_id)


@router.post("/api/nodes/{node_id}/models/{model}/load", status_code=202, dependencies=Admin)
async def load_model(node_id: str, model: str, fleet: Fleet) -> dict[str, Any]:
    return await fleet.want_model(node_id, model, loaded=True)


@router.post("/api/nodes/{node_id}/models/{model}/unload", status_code=202, dependencies=Admin)
async def unload_model(node_id: str, model: str, fleet: Fleet) -> dict[str, Any]:
    return await fleet.want_model(node_id, model, loaded=False)


@router.get("/api/npu/load-balancing", dependencies=Read)
async def get_load_balancing(fleet: Fleet) -> LoadBalancing:
    return await fleet.load_balancing()


@router.post("/api/npu/load-balancing", dependencies=Admin)
async def set_load_balancing(body: LoadBalancing, fleet: Fleet) -> LoadBalancing:
    return await fleet.set_load_balancing(body)
