"""`GET /health`: can this service answer, and how loaded is it (the seed's fields and more)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from redis.exceptions import RedisError

from dispatcher.fleet import Load, placements
from dispatcher.protocol import memory_gb

from ..auth import RESPONSES, AuthenticatedRoute, require_read
from ..deps import AsyncDispatcherDep, Fleet
from ..schemas import HealthResponse

router = APIRouter(route_class=AuthenticatedRoute, tags=["health"], dependencies=[Depends(require_read)],
                   responses=RESPONSES)


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(dispatcher: AsyncDispatcherDep, fleet: Fleet, response: Response) -> HealthResponse:
    """`healthy`: every registered model has a live worker; `degraded`: some requests go to the cloud
    or fail; `unhealthy` (503): nothing can answer."""
    registry, cloud = dispatcher.registry, dispatcher.cloud
    try:
        beats = await fleet.heartbeats()
        redis_ok = True
    except RedisError:
        beats, redis_ok = [], False
    load = Load.of(beats)
    loaded = [m for m in load.loaded_models if m in registry.specs]
    missing = [m for m in registry.names if m not in load.models]
    fallback = [m for m in missing if cloud.available_for(registry.specs[m])]
    if not redis_ok or (not loaded and not fallback):
        status = "unhealthy"
    elif missing:
        status = "degraded"
    else:
        status = "healthy"
    if status == "unhealthy":
        response.status_code = 503
    return HealthResponse(
        status=status, redis="ok" if redis_ok else "unreachable", workers=load.workers,
        max_concurrent=load.max_concurrent,
        memory_gb=load.memory_gb if load.memory_gb is not None else memory_gb(),
        utilization=load.utilization, device_type=load.device_type,
        loaded_models=loaded, missing_models=missing, queue_depth=load.queued,
        cloud_fallback=bool(cloud.base_url), placements=placements(beats))
