"""Capability detection: what a node says about itself, read through signed calls to its facade.

Bounded in time (a dead address answers within `detect_timeout_s`), and a failure is recorded on the
node as such: capabilities are only ever what a node reported, never defaults.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from .nodes import Detection, Node
from .settings import Settings
from .signing import AsyncServiceHTTPClient


async def _probe(node: Node, settings: Settings) -> dict[str, Any]:
    async with AsyncServiceHTTPClient(settings=settings, base_url=node.address or "",
                                      timeout=settings.detect_timeout_s) as client:
        health, models = await asyncio.gather(client.get("/health"), client.get("/models"))
    for name, response in (("/health", health), ("/models", models)):
        # /health answers 503 when the node is unhealthy: still a report, still JSON.
        if response.status_code not in (200, 503):
            raise RuntimeError(f"{name} answered {response.status_code}: {response.text[:200]}")
    h, m = health.json(), models.json()
    return {"models": m.get("available", []), "maxConcurrent": h.get("max_concurrent"),
            "memoryGB": h.get("memory_gb"), "deviceType": h.get("device_type"),
            "utilization": h.get("utilization"), "status": h.get("status"),
            "loadedModels": m.get("loaded_models", [])}


async def detect(node: Node, settings: Settings) -> Node:
    """Probe the node's `/health` and `/models`; the outcome is written into the returned node."""
    now = time.time()
    if not node.address:
        node.detection = Detection(status="error", error="the node has no address to probe", at=now)
        return node
    try:
        capabilities = await asyncio.wait_for(_probe(node, settings), timeout=settings.detect_timeout_s + 1)
    except (httpx.HTTPError, OSError, RuntimeError, ValueError, asyncio.TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        node.detection = Detection(status="error", error=f"{type(exc).__name__}: {reason}"[:300], at=time.time())
        return node
    node.capabilities = capabilities
    node.last_health_check = time.time()
    node.detection = Detection(status="ok", at=node.last_health_check)
    return node
