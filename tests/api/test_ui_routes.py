"""The operator page's shell: served without credentials, fixed files only, with safe headers; the vendored
files are the ones scripts/vendor-ui records; /api/whoami tells the page its role."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.routes.ui import ASSETS, UI_DIR
from dispatcher.settings import Settings
from tests.conftest import ADMIN_TOKEN, VIEWER_TOKEN, signed

COMPONENTS = ("NPUWorkersTab", "NPUNodeCard", "NPUDetailsPanel", "AssignNPURoleModal")


@pytest.fixture
def client(isolated: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(isolated)) as c:
        yield c


def test_page_and_assets_are_served_with_their_types_and_headers(client: TestClient) -> None:
    page = client.get("/fleet")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] == "no-cache"
    for src in ("fleet/static/vendor/vue.global.prod.js", "fleet/static/vendor/uPlot.iife.min.js",
                "fleet/static/app.js", "fleet/static/style.css"):
        assert src in page.text
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css"),
                       ("vendor/vue.global.prod.js", "text/javascript"), ("vendor/VERSIONS", "text/plain")]:
        response = client.get(f"/fleet/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), name
        assert response.content == (UI_DIR / name).read_bytes()


def test_only_the_page_files_are_served(client: TestClient) -> None:
    assert set(ASSETS) == {p.relative_to(UI_DIR).as_posix() for p in UI_DIR.rglob("*")
                           if p.is_file() and p.name != "index.html"}
    # Names that reach the route (the client does not fold them away): none resolves to a file.
    for name in ("index.html", "missing.js", "%2E%2E/%2E%2E/auth.py", "..%2Froutes%2Fui.py", "vendor", "vendor/",
                 "%2Fetc%2Fpasswd", "/etc/passwd", "APP.JS", "app.js%00"):
        response = client.get(f"/fleet/static/{name}")
        assert response.status_code == 404, name
        assert response.json()["error"] == "not_found", name


def test_components_carry_the_seed_names() -> None:
    source = "\n".join(p.read_text() for p in UI_DIR.glob("*.js"))
    for name in COMPONENTS:
        assert f'name: "{name}"' in source, name


def test_vendored_files_match_their_recorded_versions() -> None:
    vendor = UI_DIR / "vendor"
    rows = [line.split() for line in (vendor / "VERSIONS").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert {row[0] for row in rows} == {"vue", "uplot"}
    for package, version, _, name, digest in rows:
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, (package, version, name)
    assert {p.name for p in vendor.iterdir()} == {"VERSIONS", *(row[3] for row in rows)}


def test_whoami_names_the_role(client: TestClient) -> None:
    assert client.get("/api/whoami").status_code == 401
    for token, role in ((ADMIN_TOKEN, "admin"), (VIEWER_TOKEN, "viewer")):
        assert client.get("/api/whoami", headers={"Authorization": f"Bearer {token}"}).json() == \
            {"role": role, "name": role}
    assert signed(client).get("/api/whoami").json() == {"role": "service", "name": "tests"}


def test_the_package_ships_the_page() -> None:
    pyproject = (Path(UI_DIR).parents[1] / "pyproject.toml").read_text()
    assert 'api = ["ui/*", "ui/**/*"]' in pyproject
