"""`GET /metrics`: Prometheus text format, the facade's own counters plus the fleet's state from Redis.

It needs read access (a viewer token, say) unless `NPU_METRICS_PUBLIC=true`. It never fails because Redis
does: the fleet's part is read within `SCRAPE_REDIS_S`, else left out (`npu_fleet_up 0`).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from dispatcher.settings import FacadeSettings

from .. import metrics
from ..auth import RESPONSES, AuthenticatedRoute, public, require_read
from ..deps import Fleet

log = logging.getLogger(__name__)

SCRAPE_REDIS_S = 1.0
"""Longest a scrape waits for the fleet's state; Prometheus's default scrape timeout is 10 s."""


async def prometheus(fleet: Fleet) -> Response:
    async def read() -> metrics.FleetState:
        beats = await fleet.heartbeats()
        return metrics.FleetState(beats, await fleet.queue_depths(beats))

    state: metrics.FleetState | None
    try:
        state = await asyncio.wait_for(read(), SCRAPE_REDIS_S)
    except (RedisError, asyncio.TimeoutError) as exc:
        log.debug("metrics without the fleet's state: %r", exc)
        state = None
    return Response(metrics.render(state), media_type=CONTENT_TYPE_LATEST)


def router(settings: FacadeSettings) -> APIRouter:
    """Built per app, as `metrics_public` decides whether the route is `public` or needs read access."""
    if settings.metrics_public:
        built = APIRouter(route_class=AuthenticatedRoute, tags=["metrics"], dependencies=[Depends(public)])
    else:
        built = APIRouter(route_class=AuthenticatedRoute, tags=["metrics"], dependencies=[Depends(require_read)],
                          responses=RESPONSES)
    built.add_api_route("/metrics", prometheus, methods=["GET"], response_class=Response)
    return built
