"""`GET /metrics`: Prometheus text format, the facade's own counters plus the fleet's heartbeats,
for a scraper holding a viewer token."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from .. import metrics
from ..auth import RESPONSES, AuthenticatedRoute, require_read
from ..deps import Fleet

router = APIRouter(route_class=AuthenticatedRoute, tags=["metrics"], dependencies=[Depends(require_read)],
                   responses=RESPONSES)


@router.get("/metrics", response_class=Response)
async def prometheus(fleet: Fleet) -> Response:
    beats = await fleet.heartbeats()
    return Response(metrics.render(beats), media_type=CONTENT_TYPE_LATEST)
