"""`GET /api/whoami`: the caller's role, so the operator page can check a token at sign-in and grey out
what a viewer may not do (the API refuses it anyway)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from ..auth import RESPONSES, AuthenticatedRoute, Principal, require_read

router = APIRouter(route_class=AuthenticatedRoute, prefix="/api", tags=["meta"], responses=RESPONSES)


@router.get("/whoami")
async def whoami(principal: Annotated[Principal, Depends(require_read)]) -> dict[str, str]:
    return {"role": principal.role, "name": principal.name}
