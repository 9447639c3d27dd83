"""ASGI middleware of the facade (plain ASGI, not BaseHTTPMiddleware: it costs nothing on the hot path)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import ClientDisconnect

from dispatcher.errors import ErrorCode, InputTooLargeError, RequestTimeoutError
from dispatcher.logs import access, request_id

access_log = logging.getLogger("npu.access")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""A caller's `X-Request-ID` is kept only in this shape: it is written into plain-text log lines, where a
space or a newline would let a caller forge fields (`x caller=admin:admin`) or whole lines."""

UNCAPPED = "npu.body_uncapped"
"""Scope flag: while set, `BodyLimitMiddleware` passes the body on past the cap, for a reader that only
hashes it (a v2 signature check, `api/auth.py`), so a caller who cannot verify never learns the cap."""


class RequestIdMiddleware:
    """Takes the caller's `X-Request-ID` (or makes one), keeps it for the job and the logs, echoes it back."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        rid = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
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
        except ClientDisconnect:
            status = status or 499  # the caller left mid-request (nginx's code): this line says so, no traceback
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
    """Caps a request body while it streams in, in size and in time: the read that would pass `max_bytes`
    (or the first read, when Content-Length already says so) raises 413 `body_too_large`, so nothing larger
    is ever buffered; a body still incomplete `timeout_s` after the request began raises 408
    `request_timeout` (a client that trickles or holds its body is not kept forever).

    Only a cap, no policy: it acts when someone reads the body, and `api.auth.AuthenticatedRoute` reads
    it only after the caller's credentials and role passed, so a stranger hears 401 whatever the size.
    (Starlette's RequestBodyLimitMiddleware would also turn that 401 into a plain-text 413 whenever
    Content-Length is too large: the stranger would learn about the cap before the credentials.)
    Once the body is complete, reads (Starlette listening for a disconnect) pass through unbounded.
    """

    def __init__(self, app: Any, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    def _too_large(self) -> InputTooLargeError:
        return InputTooLargeError(f"the request body is over {self.max_bytes} bytes",
                                  code=ErrorCode.BODY_TOO_LARGE, limit=self.max_bytes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        over = declared.isdigit() and int(declared) > self.max_bytes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        received, complete = 0, False

        async def capped() -> dict[str, Any]:
            nonlocal received, complete
            if complete:
                return dict(await receive())
            uncapped = scope.get(UNCAPPED, False)
            if over and not uncapped:
                raise self._too_large()
            try:  # a timeout scope, not `wait_for`: on Python 3.11 that makes a task per read
                async with asyncio.timeout_at(deadline):
                    message: dict[str, Any] = await receive()
            except TimeoutError:
                raise RequestTimeoutError(f"the request body did not arrive within {self.timeout_s:g} s",
                                          limit=self.timeout_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not uncapped:
                    raise self._too_large()
            return message

        await self.app(scope, capped, send)


class NoSniffMiddleware:
    """`X-Content-Type-Options: nosniff` on every answer: a browser never reads a JSON error that quotes a
    caller's input as HTML or script."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-content-type-options" for k, _ in headers):
                    headers.append((b"x-content-type-options", b"nosniff"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_nosniff)
