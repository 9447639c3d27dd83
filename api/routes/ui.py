"""The operator page (docs/architecture.md, Operator page): `GET /fleet`, its static files under
`/fleet/static/`, and the old settings URL redirecting to its NPU Workers tab.

These routes are `public`: they serve the same fixed files to everyone, with no data and no secret. The
page asks the operator for a token and reads and changes everything through the protected API with it.
Only files present in `api/ui/` when the app is built are served, by exact name: no path is resolved
from the request.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, RedirectResponse, Response

from dispatcher.errors import NotFoundError

from ..auth import AuthenticatedRoute, public

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
TAB = "/fleet#npu-workers"

# Vue compiles the components' templates in the browser (no build step), which needs 'unsafe-eval';
# no inline script runs, and the page talks to this origin only.
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' "
                               "'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}

router = APIRouter(route_class=AuthenticatedRoute, tags=["ui"], dependencies=[Depends(public)], include_in_schema=False)


def _assets() -> dict[str, Path]:
    return {p.relative_to(UI_DIR).as_posix(): p for p in sorted(UI_DIR.rglob("*"))
            if p.is_file() and p.name != "index.html"}


ASSETS = _assets()


def _file(path: Path) -> Response:
    media = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "text/plain"
    return FileResponse(path, media_type=media, headers=HEADERS)


@router.get("/fleet")
async def page() -> Response:
    return _file(UI_DIR / "index.html")


@router.get("/fleet/static/{name:path}")
async def asset(name: str) -> Response:
    path = ASSETS.get(name)
    if path is None:
        raise NotFoundError("no such file")
    return _file(path)


@router.get("/settings/admin/npu-workers")
async def old_settings_page() -> Response:
    """The seed's settings route: moved for good to the page's NPU Workers tab."""
    return RedirectResponse(TAB, status_code=308)
