"""`GET /livez` and `GET /readyz`: the API routes without authentication, for load balancers, process
supervisors and Kubernetes probes.

`/livez` says only that the process answers. `/readyz` says whether this facade can serve: Redis reachable
and, for each model it advertises, at least one live worker (known from heartbeats); per model, so an
orchestrator (or an operator) sees which one is missing. Both are cheap: `/readyz` is two Redis reads,
bounded by `READY_TIMEOUT_S`, so a hung Redis makes it answer 503, never hang the probe. Neither carries
versions, keys or fleet figures beyond model names and worker counts. Everything else requires
credentials; the only other public routes serve the operator page's static shell (`routes/ui.py`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from redis.exceptions import RedisError

from dispatcher.errors import ErrorCode, echo
from dispatcher.fleet import by_model

from ..auth import AuthenticatedRoute, public
from ..deps import AsyncDispatcherDep, Fleet
from ..responses import ORJSONResponse

router = APIRouter(route_class=AuthenticatedRoute, tags=["health"], dependencies=[Depends(public)])

READY_TIMEOUT_S = 1.0
"""Longest a readiness probe waits for Redis; probes usually time out after 1 s themselves."""


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis unreachable, or a model without a live worker"}})
async def readyz(dispatcher: AsyncDispatcherDep, fleet: Fleet, model: str | None = None) -> Response:
    """200 when Redis answers and every advertised model (or `?model=NAME`) has a live worker, else 503;
    `models` gives each model's live workers and, when not ready, why."""
    names = dispatcher.registry.names
    if model is not None and model not in names:
        return ORJSONResponse({"status": "not_ready", "error": ErrorCode.MODEL_NOT_FOUND,
                               "message": f"unknown model {echo(model)!r}", "available": names}, status_code=404)
    wanted = [model] if model is not None else names
    try:
        beats = await asyncio.wait_for(fleet.heartbeats(), READY_TIMEOUT_S)
    except (RedisError, asyncio.TimeoutError) as exc:
        return ORJSONResponse({"status": "not_ready", "redis": "unreachable", "reason": ErrorCode.REDIS_UNAVAILABLE,
                               "message": f"Redis did not answer: {type(exc).__name__}"},
                              status_code=503, headers={"Retry-After": "2"})
    states = by_model(beats)
    models: dict[str, dict[str, Any]] = {}
    for name in wanted:
        workers = states[name].workers if name in states else 0
        models[name] = {"ready": workers > 0, "workers": workers}
        if not workers:
            models[name]["reason"] = "no_worker"  # the fallback reason a request would get
            models[name]["message"] = f"no live worker serves {name!r}"
    ready = all(m["ready"] for m in models.values())
    return ORJSONResponse({"status": "ready" if ready else "not_ready", "redis": "ok", "models": models},
                          status_code=200 if ready else 503,
                          headers=None if ready else {"Retry-After": str(dispatcher.settings.retry_after_s)})
