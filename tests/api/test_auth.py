"""Service signatures and operator tokens on the real facade (real Redis for v2 nonces, a real worker
where an answer matters). The route-table tests walk the app, so a route added later is covered too."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from api.app import create_app
from api.auth import public, require_admin, require_inference, require_models, require_read
from dispatcher.credentials import ensure_generated, outbound_identity
from dispatcher.errors import AuthConfigError
from dispatcher.protocol import Keys
from dispatcher.settings import Settings
from dispatcher.signing import (
    HEADER_ID,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    AsyncServiceHTTPClient,
    ServiceAuth,
    sign_headers,
)
from tests.conftest import (
    ADMIN_TOKEN,
    APP_KEY,
    SERVICE_ID,
    SERVICE_KEY,
    VIEWER_TOKEN,
    WorkerProcess,
    as_operator,
    signed,
)

MODEL = "all-minilm-l6-v2"
PUBLIC = {"/livez", "/readyz", "/fleet", "/fleet/static/{name:path}", "/settings/admin/npu-workers"}
"""Marked `public`: liveness and the operator page's shell (fixed files, no data; see api/routes/ui.py)."""
REQUIREMENTS = {require_read: "read", require_models: "models", require_inference: "inference",
                require_admin: "admin", public: "public"}
JSON = {"content-type": "application/json"}
BODIES = {"/embeddings": {"texts": ["hi"], "model": MODEL}, "/inference": {"prompt": "hi", "max_tokens": 2}}


def admin_probe_router() -> APIRouter:
    """Stands in for the admin routes a later issue adds (role assignment, load-balancing, model
    load/unload), attached the way they will be, so the role tests below cover the admin level now."""
    router = APIRouter(dependencies=[Depends(require_admin)])

    @router.post("/fleet/probe-admin")
    async def probe() -> dict[str, bool]:
        return {"changed": True}

    return router


def build(settings: Settings) -> FastAPI:
    app = create_app(settings)
    app.include_router(admin_probe_router())
    return app


def route_table(app: FastAPI) -> list[tuple[str, str, str | None]]:
    """(path, method, requirement) of every route the app answers, found by walking its route table."""
    try:
        from fastapi.routing import iter_route_contexts

        routes: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:  # FastAPI before lazily included routers: the table is already flat
        routes = list(app.routes)

    def calls(dependant: Any) -> Iterator[Any]:
        for sub in dependant.dependencies:
            yield sub.call
            yield from calls(sub)

    table = []
    for route in routes:
        dependant = getattr(route, "dependant", None)
        found = {REQUIREMENTS[c] for c in calls(dependant) if c in REQUIREMENTS} if dependant else set()
        assert len(found) <= 1, f"{route.path} states more than one requirement: {found}"
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                table.append((route.path, method, found.pop() if len(found) == 1 else None))
    return table


@pytest.fixture
def app_settings(isolated: Settings) -> Settings:
    return isolated


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    with TestClient(build(app_settings)) as c:
        yield c


def call(client: TestClient, path: str, method: str, **kwargs: Any) -> httpx.Response:
    if method == "POST" and "json" not in kwargs and "content" not in kwargs:
        kwargs["json"] = BODIES.get(path, {})
    return client.request(method, path, **kwargs)


def hand_signed(method: str, path: str, key: str = SERVICE_KEY, service_id: str = SERVICE_ID,
                ts: int | None = None) -> dict[str, str]:
    """The seed's v1 exactly as an existing backend writes it, without any of this project's code."""
    stamp = str(int(time.time()) if ts is None else ts)
    signature = hmac.new(key.encode(), f"{service_id}:{method}:{path}:{stamp}".encode(), hashlib.sha256).hexdigest()
    return {"X-Service-ID": service_id, "X-Service-Signature": signature, "X-Service-Timestamp": stamp}


def assert_refused(response: httpx.Response, message: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    if isinstance(body["error"], dict):  # the /v1 routes answer in OpenAI's error shape
        assert response.request.url.path.startswith("/v1/")
        body = {"error": body["error"]["code"], "message": body["error"]["message"]}
    assert body == {"error": "unauthorized", "message": message}
    assert "Bearer" in response.headers["www-authenticate"]


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("npu_auth_failures_total", {"reason": reason}) or 0.0


# --- the contract of section 6


def test_seed_v1_signed_by_hand_interoperates(settings: Settings, worker: WorkerProcess) -> None:
    with TestClient(create_app(settings)) as c:
        health = c.get("/health", headers=hand_signed("GET", "/health"))
        assert health.status_code == 200 and health.json()["status"] == "healthy"
        answer = c.post("/embeddings", json={"texts": ["hi"], "model": MODEL},
                        headers=hand_signed("POST", "/embeddings"))
        assert answer.status_code == 200 and np.asarray(answer.json()["embeddings"]).shape == (1, 384)


def test_v2_from_the_real_async_client(settings: Settings, worker: WorkerProcess) -> None:
    """AsyncServiceHTTPClient over ASGI: the library's client and the facade's check agree on v2."""
    app = create_app(settings)

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app), AsyncServiceHTTPClient(
                settings=settings, v2=True, transport=httpx.ASGITransport(app), base_url="http://facade") as c:
            return [await c.get("/models", params={"b": "2", "a": "1"}),
                    await c.post("/embeddings", json={"texts": ["hi", "there"], "model": MODEL})]

    models, embedded = asyncio.run(run())
    assert models.status_code == 200 and MODEL in models.json()["available"]
    assert embedded.status_code == 200 and embedded.json()["dim"] == 384


def test_missing_headers(client: TestClient) -> None:
    assert_refused(client.get("/health"), "missing credentials")
    partial = hand_signed("GET", "/health")
    del partial["X-Service-Signature"]
    assert_refused(client.get("/health", headers=partial), "missing credentials")


def test_unknown_service_and_wrong_key_are_invalid(client: TestClient) -> None:
    assert_refused(client.get("/health", headers=hand_signed("GET", "/health", service_id="nobody")),
                   "invalid credentials")
    assert_refused(client.get("/health", headers=hand_signed("GET", "/health", key="wrong")), "invalid credentials")
    assert_refused(client.get("/models", headers=hand_signed("GET", "/health")), "invalid credentials")


@pytest.mark.parametrize("skew", [-301, 301, -10**6])
def test_timestamp_outside_the_window_is_expired(client: TestClient, skew: int) -> None:
    assert_refused(client.get("/health", headers=hand_signed("GET", "/health", ts=int(time.time()) + skew)),
                   "expired signature")


def test_a_rotated_key_is_accepted_alongside_the_new_one(app_settings: Settings) -> None:
    rotating = app_settings.model_copy(update={"service_keys": {"billing": ["old-key", "new-key"]}})
    with TestClient(build(rotating)) as c:
        for key in ("old-key", "new-key"):
            assert c.get("/models", headers=hand_signed("GET", "/models", key=key, service_id="billing")).status_code \
                == 200
        assert_refused(c.get("/models", headers=hand_signed("GET", "/models", key="older", service_id="billing")),
                       "invalid credentials")


def test_v2_replay_is_refused_and_the_nonce_kept_for_the_window(client: TestClient, app_settings: Settings) -> None:
    headers = sign_headers(SERVICE_ID, SERVICE_KEY, "GET", "/models", v2=True, host="testserver")
    assert client.get("/models", headers=headers).status_code == 200
    assert_refused(client.get("/models", headers=headers), "invalid credentials")
    ttl = app_settings.redis().ttl(Keys(app_settings.key_prefix).nonce(SERVICE_ID, headers[HEADER_NONCE]))
    assert app_settings.auth_window_s - 5 <= ttl <= app_settings.auth_window_s + 1


def test_v2_tampered_body_or_query_is_refused(client: TestClient) -> None:
    body = b'{"texts": ["hi"], "model": "all-minilm-l6-v2"}'
    headers = sign_headers(SERVICE_ID, SERVICE_KEY, "POST", "/embeddings", body=body, v2=True, host="testserver")
    assert_refused(client.post("/embeddings", content=body.replace(b"hi", b"ho"), headers={**headers, **JSON}),
                   "invalid credentials")
    headers = sign_headers(SERVICE_ID, SERVICE_KEY, "GET", "/models", query="verbose=0", v2=True, host="testserver")
    assert_refused(client.get("/models?verbose=1", headers=headers), "invalid credentials")
    headers = sign_headers(SERVICE_ID, SERVICE_KEY, "GET", "/models", query="verbose=0", v2=True, host="testserver")
    assert client.get("/models?verbose=0", headers=headers).status_code == 200


def test_strict_setting_refuses_v1(app_settings: Settings) -> None:
    with signed(TestClient(build(app_settings.model_copy(update={"auth_require_v2": True})))) as c:
        assert_refused(c.get("/models"), "invalid credentials")
        signed(c, ServiceAuth(SERVICE_ID, SERVICE_KEY, v2=True))
        assert c.get("/models").status_code == 200


def test_v2_fails_closed_when_redis_is_gone(app_settings: Settings) -> None:
    gone = app_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with signed(TestClient(build(gone)), ServiceAuth(SERVICE_ID, SERVICE_KEY, v2=True)) as c:
        response = c.get("/models")
        assert response.status_code == 503 and response.json()["error"] == "redis_unavailable"


def test_header_override_attempts_get_nothing(client: TestClient) -> None:
    forged = {HEADER_ID: "admin", HEADER_SIGNATURE: "0" * 64, HEADER_TIMESTAMP: str(int(time.time()))}
    signed(client)  # a signing client: the caller's forged auth headers are replaced, not sent
    assert client.get("/models", headers=forged).status_code == 200
    client.auth = None
    # No header grants a role or skips the check: not a role claim, a forwarded user or a rewritten URL.
    spoof = {"X-Service-Role": "admin", "X-Role": "admin", "X-Forwarded-User": "admin", "X-Auth-Bypass": "1",
             "X-Original-URL": "/livez", "X-Rewrite-URL": "/livez", "X-Forwarded-Prefix": "/livez",
             "X-Admin-Token": ADMIN_TOKEN}
    assert_refused(client.get("/models", headers=spoof), "missing credentials")
    viewer = {**spoof, "Authorization": f"Bearer {VIEWER_TOKEN}"}
    assert client.post("/embeddings", json=BODIES["/embeddings"], headers=viewer).status_code == 403
    assert client.post("/fleet/probe-admin", headers=viewer).status_code == 403
    # Service headers present: the signature alone decides, a valid admin token beside a bad one is no way in.
    assert_refused(client.get("/models", headers={**forged, "Authorization": f"Bearer {ADMIN_TOKEN}"}),
                   "invalid credentials")
    # The same auth header twice (a proxy and the facade might pick different ones) is refused.
    doubled = [(k, v) for k, v in hand_signed("GET", "/models").items()] + [(HEADER_ID, "other")]
    assert_refused(client.get("/models", headers=doubled), "invalid credentials")


def test_a_signed_caller_still_hears_what_is_wrong_with_a_broken_body(client: TestClient) -> None:
    body = b'{"texts": ['
    headers = {**sign_headers(SERVICE_ID, SERVICE_KEY, "POST", "/embeddings", body=body, v2=True, host="testserver"),
               **JSON}
    response = client.post("/embeddings", content=body, headers=headers)
    assert response.status_code == 422 and response.json()["error"] == "invalid_request"
    assert_refused(client.post("/embeddings", content=body, headers=headers), "invalid credentials")  # replay


def test_malformed_bearer_and_unknown_token(client: TestClient) -> None:
    for value in (f"Basic {ADMIN_TOKEN}", "Bearer", "Bearer not-a-token", ADMIN_TOKEN):
        assert_refused(client.get("/health", headers={"Authorization": value}), "invalid credentials")


# --- the route table


def test_every_route_states_its_requirement_and_only_livez_and_the_page_are_public(client: TestClient) -> None:
    table = route_table(client.app)
    assert [(path, method) for path, method, requirement in table if requirement is None] == []
    assert {path for path, _, requirement in table if requirement == "public"} == PUBLIC
    assert {method for _, method, requirement in table if requirement == "public"} == {"GET"}
    assert {"/health", "/models", "/embeddings", "/inference", "/metrics", "/openapi.json",
            "/api/whoami"} <= {p for p, _, _ in table}
    assert client.get("/livez").json() == {"status": "ok"}
    # The page's shell answers without credentials and holds nothing but its fixed files.
    page = client.get("/fleet")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get("/fleet/static/app.js").status_code == 200
    assert client.get("/settings/admin/npu-workers", follow_redirects=False).headers["location"] == \
        "/fleet#npu-workers"


def test_every_protected_route_refuses_unsigned_and_bad_credentials(client: TestClient) -> None:
    checked = 0
    for path, method, requirement in route_table(client.app):
        if requirement == "public":
            continue
        assert_refused(call(client, path, method), "missing credentials")
        assert_refused(call(client, path, method, headers={"Authorization": "Bearer nope"}), "invalid credentials")
        assert_refused(call(client, path, method, headers=hand_signed(method, path, key="nope")),
                       "invalid credentials")
        if method == "POST":  # FastAPI parses a body before dependencies: a broken one must not get ahead
            assert_refused(call(client, path, method, content=b'{"texts": [', headers=JSON), "missing credentials")
        checked += 1
    assert checked >= 7


@pytest.mark.parametrize("path", [
    "/livez/", "/livez/../health", "/livez/%2E%2E/health", "/livez%2F..%2Fhealth", "//health", "/health/",
    "/HEALTH", "/livez;/health", "/livez?/health", "/docs", "/redoc", "/docs/oauth2-redirect", "/openapi.json",
    "/health?livez", "/./health", "/health%00", "/fleet/../health", "/fleet/static/../../health",
    "/fleet/static/%2E%2E/%2E%2E/health", "/fleet/static/..%2F..%2Froutes%2Fui.py", "/fleet/static//etc/passwd",
    "/fleet/static/%2Fetc%2Fpasswd", "/fleet/static/index.html/../../../auth.py", "/fleet/health",
    "/settings/admin/npu-workers/../../../health",
])
def test_no_path_trick_reaches_a_protected_route_unauthenticated(client: TestClient, path: str) -> None:
    response = client.get(path, follow_redirects=True)
    assert response.status_code in (401, 404, 405) or response.json() == {"status": "ok"}, (path, response.text)


def role_cases(client: TestClient) -> Iterator[tuple[str, str, str, set[str]]]:
    allowed = {"read": {"service", "viewer", "admin"}, "models": {"service", "viewer", "admin", "app"},
               "inference": {"service", "admin", "app"}, "admin": {"admin"}}
    for path, method, requirement in route_table(client.app):
        if requirement != "public":
            yield path, method, requirement, allowed[requirement]


def test_roles_on_every_protected_route(client: TestClient) -> None:
    callers: dict[str, Callable[[TestClient], TestClient]] = {
        "service": signed, "viewer": lambda c: as_operator(c, VIEWER_TOKEN),
        "admin": lambda c: as_operator(c, ADMIN_TOKEN), "app": lambda c: as_operator(c, APP_KEY)}
    seen = set()
    for role, become in callers.items():
        client.auth = None
        client.headers.pop("Authorization", None)
        become(client)
        for path, method, requirement, allowed in role_cases(client):
            seen.add(requirement)
            status = call(client, path, method).status_code
            if role in allowed:
                assert status not in (401, 403), (role, method, path, status)
            else:
                assert status == 403, (role, method, path, status)
    assert seen == {"read", "models", "inference", "admin"}


def test_admin_only_routes_refuse_a_viewer_token(client: TestClient) -> None:
    admin_routes = [(p, m) for p, m, requirement in route_table(client.app) if requirement == "admin"]
    assert admin_routes
    for path, method in admin_routes:
        response = call(client, path, method, headers={"Authorization": f"Bearer {VIEWER_TOKEN}"})
        assert response.status_code == 403 and response.json()["error"] == "forbidden"
        # An admin gets past authorization (the route may still refuse the placeholder body or path: 404/422).
        assert call(client, path, method, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code not in (
            401, 403)


# --- failures are counted and logged; secrets appear nowhere


def test_failures_are_counted_and_logged_without_secrets(client: TestClient,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    before = {r: failures(r) for r in ("bad_signature", "bad_token", "forbidden", "missing_headers")}
    bad = hand_signed("GET", "/models", key="wrong-key")
    with caplog.at_level(logging.WARNING, logger="api.auth"):
        client.get("/models", headers=bad)
        client.get("/models", headers={"Authorization": "Bearer guessed-token-value"})
        client.post("/embeddings", json=BODIES["/embeddings"], headers={"Authorization": f"Bearer {VIEWER_TOKEN}"})
        client.get("/models")
    for reason in before:
        assert failures(reason) == before[reason] + 1, reason
    text = caplog.text
    assert all(reason in text for reason in before)
    for secret in (bad[HEADER_SIGNATURE], "guessed-token-value", VIEWER_TOKEN, SERVICE_KEY):
        assert secret not in text
    exposition = as_operator(client, VIEWER_TOKEN).get("/metrics")
    assert exposition.status_code == 200 and 'npu_auth_failures_total{reason="bad_token"}' in exposition.text


def test_no_endpoint_returns_a_secret(client: TestClient) -> None:
    as_operator(client, ADMIN_TOKEN)
    for path, method, _ in route_table(client.app):
        body = call(client, path, method).text
        for secret in (SERVICE_KEY, ADMIN_TOKEN, VIEWER_TOKEN):
            assert secret not in body, path


# --- where the facade's credentials come from


def test_a_facade_with_no_credentials_does_not_start(tmp_path: Path, app_settings: Settings) -> None:
    bare = Settings(state_dir=tmp_path, redis_url=app_settings.redis_url, key_prefix=app_settings.key_prefix)
    with pytest.raises(AuthConfigError):
        create_app(bare)


def test_generated_credentials_work_for_service_and_admin(tmp_path: Path, app_settings: Settings) -> None:
    local = Settings(state_dir=tmp_path, redis_url=app_settings.redis_url, key_prefix=app_settings.key_prefix)
    ensure_generated(local)
    with TestClient(build(local)) as c:
        service_id, key = outbound_identity(local)
        assert service_id == "local"
        assert signed(c, ServiceAuth(service_id, key, v2=True)).get("/models").status_code == 200
        c.auth = None
        token = json.loads((tmp_path / "credentials.json").read_text())["admin_token"]
        assert as_operator(c, token).post("/fleet/probe-admin").json() == {"changed": True}
