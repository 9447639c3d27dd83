"""ASGI middleware of the facade (plain ASGI, not BaseHTTPMiddleware: it costs nothing on the hot path)."""

from __future__ import annotations

import uuid
from typing import Any

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
