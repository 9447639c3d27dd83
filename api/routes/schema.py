"""`GET /openapi.json` behind read access.

FastAPI's own schema route and the /docs and /redoc pages would be unauthenticated; they are turned off
in the app factory and the schema is served here instead (`npu-worker call GET /openapi.json`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from ..auth import RESPONSES, AuthenticatedRoute, require_read

router = APIRouter(route_class=AuthenticatedRoute, tags=["meta"], dependencies=[Depends(require_read)],
                   responses=RESPONSES)


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> dict[str, Any]:
    return request.app.openapi()
