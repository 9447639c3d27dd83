"""ASGI middleware of the facade (plain ASGI, not BaseHTTPMiddleware: it costs nothing on the hot path)."""

from __future__ import annotations

import uuid
from typing import Any

from dispatcher.errors import ErrorCode, InputTooLargeError
from dispatcher.logs import request_id


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
