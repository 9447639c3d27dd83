"""Shared by the security tests: an app on the session's credentials, and requests as each caller."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI

from api.app import create_app, server_options
from dispatcher.settings import Settings
from tests.cloud_server import ThreadedServer
from tests.conftest import SERVICE_ID, SERVICE_KEY

MODEL = "all-minilm-l6-v2"
CHAT_MODEL = "smollm2-135m-instruct"
JSON = {"content-type": "application/json"}


def app(settings: Settings, **changes: Any) -> FastAPI:
    return create_app(settings.model_copy(update=changes) if changes else settings)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def seed_v1(method: str, path: str, key: str = SERVICE_KEY, service_id: str = SERVICE_ID,
            ts: int | None = None) -> dict[str, str]:
    """The seed's v1 as an existing backend writes it (no code of this project): over the path it sends."""
    stamp = str(int(time.time()) if ts is None else ts)
    signature = hmac.new(key.encode(), f"{service_id}:{method}:{path}:{stamp}".encode(), hashlib.sha256).hexdigest()
    return {"X-Service-ID": service_id, "X-Service-Signature": signature, "X-Service-Timestamp": stamp}


class Counting:
    """ASGI wrapper counting the request body bytes the app pulled: what "never read" is measured by."""

    def __init__(self, inner: Any):
        self.inner, self.received = inner, 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def counted() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            self.received += len(message.get("body", b""))
            return message

        await self.inner(scope, counted, send)


def served(settings: Settings, asgi: Any = None) -> ThreadedServer:
    """The facade (or `asgi`, wrapping it) under uvicorn with the options `npu-worker serve` and `up` pass
    (server_options), logging to the root logger as they do."""
    server = ThreadedServer(asgi or create_app(settings))
    config = uvicorn.Config(server.server.config.app, host="127.0.0.1", port=server.port, log_level="info",
                            log_config=None, **server_options(settings))
    server.server = uvicorn.Server(config)
    server.thread = threading.Thread(target=server.server.run, daemon=True)
    return server.start()
