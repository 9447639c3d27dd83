"""Who is calling, and may they: dependencies every router declares (docs/architecture.md, Authentication).

No middleware and no list of exempt paths: a route is protected because its router names what it needs
(`require_read`, `require_inference`, `require_admin`), and a route without one stands out in the route
table, which the tests walk. A route that is meant to be open says so with `public` instead: `GET /livez`,
`GET /readyz` (`/metrics` too with NPU_METRICS_PUBLIC), and the operator page's shell (`/fleet`, its static
files, the old settings URL's redirect), which hold no
data and no secret; the page asks for an operator token and reads everything through the protected API.

A caller is a service (valid `X-Service-*` signature), an operator or an application (`Authorization:
Bearer` token). Roles: a service may call inference and read; a viewer may only read; an admin may do
everything; an app key may run inference and list models, nothing else: it is what an application using
the official `openai` client holds (that client sends a bearer token, it cannot sign), so such an
application needs neither the admin token nor a view of the fleet.
Viewers may not run inference: reading status should not spend the accelerator or reach the cloud.
A request that carries any `X-Service-*` header is judged by its signature alone, never by a token too.

Credentials come before the body: FastAPI reads and parses a body before it runs a route's dependencies,
so every router is built with `route_class=AuthenticatedRoute`, which runs the route's own requirements
(the same ones it declares as dependencies, found in its dependency tree: no path list) before anything
reads the body. A stranger hears 401 without a byte of the body read or parsed; a caller who may call the
route then has its body read, capped as it streams in (`api/middleware.py`, 413).

A v2 signature covers the body, so its check must read it; everything else is checked first (format,
window, host, a known service, a nonce not yet spent), so made-up headers are refused unread. The body is
then hashed as it streams and kept only up to the cap; past it, only hashed: a caller whose signature does
not verify hears 401 whatever the size, and only a verified one hears 413 (a stranger never learns the cap).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from dispatcher import apps
from dispatcher.apps import parse_apps
from dispatcher.credentials import accepted
from dispatcher.errors import ErrorCode, ForbiddenError, InputTooLargeError, UnauthorizedError
from dispatcher.limits import check_json_text
from dispatcher.protocol import Keys
from dispatcher.settings import FacadeSettings
from dispatcher.signing import AUTH_HEADERS, HEADER_ID, HEADER_NONCE, raw_path, verify, verify_headers

from .hosts import ServedHosts
from .limiting import limited
from .metrics import AUTH_FAILURES
from .middleware import UNCAPPED
from .schemas import ErrorResponse

log = logging.getLogger(__name__)

Role = Literal["service", "viewer", "admin", "app"]

RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse, "description": "missing credentials, expired signature or invalid credentials"},
    403: {"model": ErrorResponse, "description": "authenticated, but the role may not call this endpoint"},
}
"""For each protected router's OpenAPI answers."""


@dataclass(frozen=True)
class Principal:
    role: Role
    name: str
    """Service id, or the operator role: what logs may say about a caller."""
    app: str = ""
    """The app it counts as (dispatcher/apps.py): its app key's app, its service id, its operator role."""


def _service_principal(service_id: str) -> Principal:
    """A signed service counts as the app of its service id (configured, so bounded); an id that is no app
    name counts as the app `service`."""
    return Principal("service", service_id, service_id if apps.NAME.match(service_id) else "service")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    """One per app: the accepted keys and tokens, read once when the app is built (a bad set fails then)."""

    def __init__(self, settings: FacadeSettings):
        self.accepted = accepted(settings)
        self.window_s = settings.auth_window_s
        self.require_v2 = settings.auth_require_v2
        self.hosts = ServedHosts(settings)
        self.max_body_bytes = settings.max_body_bytes
        self.keys = Keys(settings.key_prefix)
        # Compared as digests: equal lengths, so the comparison time says nothing about a token's length.
        self._admin = [_digest(t) for t in self.accepted.admin_tokens]
        self._viewer = [_digest(t) for t in self.accepted.viewer_tokens]
        self.apps = parse_apps(settings.apps, self.accepted.app_keys)
        self._app = [(_digest(key), a.name) for a in self.apps.values() for key in a.keys]
        log.info("auth: accepting %s%s", self.accepted.summary(), "; v2 signatures only" if self.require_v2 else "")

    async def authenticate(self, request: Request) -> Principal:
        if any(name in request.headers for name in AUTH_HEADERS):
            return await self._service(request)
        return self._operator(request)

    async def _service(self, request: Request) -> Principal:
        headers: dict[str, str] = {}
        for name in AUTH_HEADERS:
            values = request.headers.getlist(name)
            if len(values) > 1:  # two values may be read differently by a proxy and by us: refuse
                raise UnauthorizedError(UnauthorizedError.INVALID, "duplicate_header")
            if values:
                headers[name] = values[0]
        hosts = request.headers.getlist("host")
        if len(hosts) > 1:
            raise UnauthorizedError(UnauthorizedError.INVALID, "duplicate_header")
        host = hosts[0] if hosts else ""
        # The raw path as sent (percent-encoding kept), not the decoded one: see dispatcher/signing.py.
        path = raw_path(request.scope.get("raw_path") or request.scope["path"].encode("latin-1"))
        query = request.scope.get("query_string", b"")
        keys = self.accepted.service_keys
        if HEADER_NONCE not in headers:  # v1 signs no body: nothing is read
            verified = verify(headers, request.method, path, query, b"", keys, window_s=self.window_s,
                              require_v2=self.require_v2, host=host)
            return _service_principal(verified.service_id)
        # v2: every check that needs no body first, so a request that cannot verify is refused unread
        service_id, _, _, nonce = verify_headers(headers, window_s=self.window_s)
        if host.lower() not in self.hosts.accepted(request.scope):
            raise UnauthorizedError(UnauthorizedError.INVALID, "other_host")
        if service_id not in keys:
            raise UnauthorizedError(UnauthorizedError.INVALID, "unknown_service")
        redis = request.app.state.dispatcher.redis
        nonce_key = self.keys.nonce(service_id, nonce or "")
        if await redis.exists(nonce_key):
            raise UnauthorizedError(UnauthorizedError.INVALID, "replayed_nonce")
        over, digest = await self._hash_body(request)
        verified = verify(headers, request.method, path, query, b"", keys, window_s=self.window_s,
                          require_v2=self.require_v2, host=host, body_sha256=digest)
        fresh = await redis.set(nonce_key, b"1", nx=True, ex=verified.nonce_ttl(self.window_s))
        if not fresh:
            raise UnauthorizedError(UnauthorizedError.INVALID, "replayed_nonce")
        if over:  # only a caller who proved its key hears about the cap
            raise InputTooLargeError(f"the request body is over {self.max_body_bytes} bytes",
                                     code=ErrorCode.BODY_TOO_LARGE, limit=self.max_body_bytes)
        return _service_principal(verified.service_id)

    async def _hash_body(self, request: Request) -> tuple[bool, str]:
        """The body's SHA-256, hashed as it streams in; kept for the route (`request.body()` finds it) up to
        the cap, and past it only hashed, never held: whether the body was over the cap is told only once
        the signature over it verified. (Its time is bounded by `BodyLimitMiddleware`.)"""
        sha, chunks, size = hashlib.sha256(), [], 0
        request.scope[UNCAPPED] = True
        try:
            async for chunk in request.stream():
                sha.update(chunk)
                size += len(chunk)
                if size <= self.max_body_bytes:
                    chunks.append(chunk)
                else:
                    chunks.clear()
        finally:
            request.scope[UNCAPPED] = False
        over = size > self.max_body_bytes
        if not over:
            request._body = b"".join(chunks)
        return over, sha.hexdigest()

    def _operator(self, request: Request) -> Principal:
        values = request.headers.getlist("authorization")
        if not values:
            raise UnauthorizedError(UnauthorizedError.MISSING, "missing_headers")
        scheme, _, token = values[0].partition(" ")
        if len(values) > 1 or scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError(UnauthorizedError.INVALID, "malformed_authorization")
        digest = _digest(token.strip())
        admin = viewer = False
        app = ""
        for known in self._admin:  # no early exit: timing does not tell which token (or role) matched
            admin |= hmac.compare_digest(digest, known)
        for known in self._viewer:
            viewer |= hmac.compare_digest(digest, known)
        for known, name in self._app:
            if hmac.compare_digest(digest, known):
                app = name
        if admin:
            return Principal("admin", "admin", "admin")
        if viewer:
            return Principal("viewer", "viewer", "viewer")
        if app:
            return Principal("app", "app", app)
        raise UnauthorizedError(UnauthorizedError.INVALID, "bad_token")


def _refused(request: Request, reason: str, who: str) -> None:
    """Counted and logged with the precise cause; never a signature, key or token."""
    AUTH_FAILURES.labels(reason=reason).inc()
    client = request.client.host if request.client else "-"
    # scope["path"], the routed path: `request.url.path` goes through urlsplit, which drops newlines and tabs
    log.warning("auth refused %s %s: %s (caller %s, from %s)", request.method, request.scope["path"], reason,
                who[:64], client)


async def authenticate(request: Request) -> Principal:
    """The caller, verified once per request: by `AuthenticatedRoute` before the body, then kept (a v2
    nonce must be spent once, and FastAPI's dependency cache does not reach outside the dependencies)."""
    known: Principal | None = getattr(request.state, "principal", None)
    if known is not None:
        return known
    try:
        principal = await request.app.state.auth.authenticate(request)
    except UnauthorizedError as exc:
        _refused(request, exc.reason, request.headers.get(HEADER_ID) or "-")
        raise
    request.state.principal = principal
    apps.app.set(principal.app)  # the jobs this request sends belong to its app (dispatcher/flow.py)
    return principal


def _permit(request: Request, principal: Principal, roles: frozenset[Role]) -> None:
    if principal.role not in roles:
        _refused(request, "forbidden", f"{principal.role}:{principal.name}")
        raise ForbiddenError(f"the {principal.role} role may not call this endpoint")


def _requirement(name: str, roles: frozenset[Role]) -> Callable[..., Awaitable[Principal]]:
    async def requirement(request: Request, principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        _permit(request, principal, roles)
        return principal

    requirement.__name__ = requirement.__qualname__ = name
    setattr(requirement, "roles", roles)  # read by AuthenticatedRoute  # noqa: B010
    return requirement


def requirements(dependant: Any) -> list[frozenset[Role]]:
    """The role sets a route's dependency tree asks for (router- and route-level alike)."""
    found = []
    for sub in dependant.dependencies:
        roles = getattr(sub.call, "roles", None)
        if roles is not None:
            found.append(roles)
        found.extend(requirements(sub))
    return found


def read_then(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        check_json_text(await request.body())  # read now, under the cap; FastAPI's own read finds it
        return await handler(request)

    return run


class AuthenticatedRoute(APIRoute):
    """A route that checks its declared requirements before its body is read (see the module's text)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        needed = requirements(self.dependant)
        if not needed:
            return handler  # `public`: takes no body

        async def credentials_first(request: Request) -> Response:
            principal = await authenticate(request)
            for roles in needed:
                _permit(request, principal, roles)
            if INFERENCE in needed:  # the app's limits, before the body is read (api/limiting.py)
                return await limited(request, principal.app, read_then(handler))
            return await read_then(handler)(request)

        return credentials_first


require_read = _requirement("require_read", frozenset({"service", "viewer", "admin"}))
"""Status and listings: health, models, metrics, the API schema."""
require_models = _requirement("require_models", frozenset({"service", "viewer", "admin", "app"}))
"""The model lists (`/models`, `/v1/models`): readers, and apps, which pick a model from them."""
INFERENCE: frozenset[Role] = frozenset({"service", "admin", "app"})
require_inference = _requirement("require_inference", INFERENCE)
"""Work on the accelerators (or the cloud): embeddings, generation."""
require_admin = _requirement("require_admin", frozenset({"admin"}))
"""Changes: role assignment, load-balancing, model load/unload."""


async def public() -> None:
    """The explicit mark of a route that needs no credentials: it must carry no data, no secret, and take
    no input beyond its path. `tests/api/test_auth.py` pins the set of such routes."""
