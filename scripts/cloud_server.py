"""A small OpenAI-compatible server that the tests and `scripts.chaos` start as the "cloud" of the fallback.

It lives here, not under tests/, so the chaos script does not depend on the test suite (tests/ import it
from here). It is the far side of an HTTP contract, not the thing under test: vectors are deterministic
per text (seeded by a hash) and unit-norm, chat answers echo the prompt, and every request is recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request

from npu_worker.redis_server import free_port


def create_cloud_app(dim: int, calls: list[dict[str, Any]], delay_s: float = 0.0) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, Any]:
        body = await request.json()
        await asyncio.sleep(delay_s)  # a slow cloud, for deadline tests
        calls.append({"path": "/v1/embeddings", "body": body, "auth": request.headers.get("authorization")})
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, text in enumerate(inputs):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(dim)
            data.append({"object": "embedding", "index": i, "embedding": (v / np.linalg.norm(v)).tolist()})
        return {"object": "list", "data": data, "model": body["model"],
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        await asyncio.sleep(delay_s)  # a slow cloud, for deadline tests
        calls.append({"path": "/v1/chat/completions", "body": body, "auth": request.headers.get("authorization")})
        prompt = body["messages"][-1]["content"]
        return {"id": "cmpl-test", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": f"cloud answer to: {prompt}"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}

    return app


class ThreadedServer:
    """An ASGI app served by uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, app: Any):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class CloudServer(ThreadedServer):
    def __init__(self, dim: int = 384, delay_s: float = 0.0):
        self.calls: list[dict[str, Any]] = []
        super().__init__(create_cloud_app(dim, self.calls, delay_s))

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"
