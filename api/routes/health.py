"""`GET /health`: can this service answer, and how loaded is it (the seed's fields and more)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from redis.exceptions import RedisError

from dispatcher.fleet import best_device_type, by_model, live_heartbeats, memory_gb

from ..auth import RESPONSES, require_read
from ..deps import Dispatcher
from ..schemas import HealthResponse

router = APIRouter(tags=["health"], dependencies=[Depends(require_read)],
                   responses=RESPONSES)


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(dispatcher: Dispatcher, response: Response) -> HealthResponse:
    """`healthy`: every registered model has a live worker; `degraded`: some requests go to the cloud
    or fail; `unhealthy` (503): nothing can answer."""
    registry, cloud = dispatcher.registry, dispatcher.cloud
    try:
        beats = await live_heartbeats(dispatcher.redis, dispatcher.keys)
        redis_ok = True
    except RedisError:
        beats, redis_ok = [], False
    states = by_model(beats)
    loaded = sorted(m for m in states if m in registry.specs)
    missing = [m for m in registry.names if m not in states]
    fallback = [m for m in missing if cloud.available_for(registry.specs[m])]
    if not redis_ok or (not loaded and not fallback):
        status = "unhealthy"
    elif missing:
        status = "degraded"
    else:
        status = "healthy"
    if status == "unhealthy":
        response.status_code = 503
    max_concurrent = sum(b.max_concurrent for b in beats)
    depth = sum(s.interactive_depth + s.bulk_depth for s in states.values())
    running = sum(b.running for b in beats)
    return HealthResponse(
        status=status, redis="ok" if redis_ok else "unreachable", workers=len(beats),
        max_concurrent=max_concurrent,
        memory_gb=max((b.memory_gb for b in beats), default=memory_gb()),
        utilization=round(min(100.0, 100.0 * (depth + running) / max_concurrent), 1) if max_concurrent else 0.0,
        device_type=best_device_type({d for s in states.values() for d in s.devices}),
        loaded_models=loaded, missing_models=missing, queue_depth=depth,
        cloud_fallback=bool(cloud.base_url))
