"""ASGI middleware of the facade (plain ASGI, not BaseHTTPMiddleware: it costs nothing on the hot path)."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from dispatcher.errors import ErrorCode, InputTooLargeError
from dispatcher.logs import access, request_id

access_log = logging.getLogger("npu.access")


class RequestIdMiddleware:
    """Takes the caller's `X-Request-ID` (or makes one), keeps it for the job and the logs, echoes it back."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        rid = given[:64] or uuid.uuid4().hex[:16]
        token = request_id.set(rid)

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class AccessLogMiddleware:
    """One INFO line per request once its answer is sent: method, route template, status, duration, request
    id, caller, and for inference the model and source. Never a body, a query string or a credential.

    Inside `RequestIdMiddleware`, so the line carries the request id. The routes fill in model and source
    (`dispatcher.logs.access`, through `api.metrics.observe`); the caller is the principal auth stored.
    A refused or unrouted request (401, 404, 429, 503) is logged like any other.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        fields: dict[str, Any] = {}
        token = access.set(fields)
        status = 0

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            status = status or 500
            raise
        finally:
            access.reset(token)
            route = scope.get("route")
            principal = scope.get("state", {}).get("principal")
            entry = {"method": scope["method"],
                     "route": getattr(route, "path", None) or f"unmatched:{scope['path'][:120]}",
                     "status": status, "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                     "request_id": request_id.get(),
                     "caller": f"{principal.role}:{principal.name}" if principal else "-",
                     "app": principal.app if principal else None,
                     "model": fields.get("model"), "source": fields.get("source")}
            access_log.info("%s %s %s %.1fms rid=%s caller=%s app=%s model=%s source=%s", entry["method"],
                            entry["route"], status, entry["duration_ms"], entry["request_id"], entry["caller"],
                            entry["app"] or "-", entry["model"] or "-", entry["source"] or "-",
                            extra={"access": entry})


class BodyLimitMiddleware:
    """Caps a request body while it streams in: the read that would pass `max_bytes` (or the first read,
    when Content-Length already says so) raises 413 `body_too_large`, so nothing larger is ever buffered.

    Only a cap, no policy: it acts when someone reads the body, and `api.auth.AuthenticatedRoute` reads
    it only after the caller's credentials and role passed, so a stranger hears 401 whatever the size.
    (Starlette's RequestBodyLimitMiddleware would also turn that 401 into a plain-text 413 whenever
    Content-Length is too large: the stranger would learn about the cap before the credentials.)
    """

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self) -> InputTooLargeError:
        return InputTooLargeError(f"the request body is over {self.max_bytes} bytes",
                                  code=ErrorCode.BODY_TOO_LARGE, limit=self.max_bytes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        over = declared.isdigit() and int(declared) > self.max_bytes
        received = 0

        async def capped() -> dict[str, Any]:
            nonlocal received
            if over:
                raise self._too_large()
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, capped, send)
