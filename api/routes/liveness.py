"""`GET /livez`: the one API route without authentication, for load balancers and process supervisors.

It says only that the process answers: no fleet state, no versions, nothing a stranger could use.
Everything else (including `/health`, which the seed's clients call signed) requires credentials; the
only other public routes serve the operator page's static shell (`routes/ui.py`).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..auth import AuthenticatedRoute, public

router = APIRouter(route_class=AuthenticatedRoute, tags=["health"], dependencies=[Depends(public)])


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}
