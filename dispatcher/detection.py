"""Capability detection: what a node says about itself, read through signed calls to its facade.

Bounded in time (a dead address answers within `detect_timeout_s`), and a failure is recorded on the
node as such: capabilities are only ever what a node reported, never defaults.

Signed v2, which binds the target host: the address an admin registered may be anyone's, and the
headers sent there must be worth nothing against another facade (v1 headers would be accepted by every
facade that knows our key for the whole window). A replayer chooses the Host header it sends, so what
refuses the replay is a facade that knows its own names: with `NPU_AUTH_HOSTS` set, a v2 signature made
for any other host is refused. (The nonce cannot be spent here before sending: the nodes detection calls
usually share this Redis, and the one it was meant for would then refuse it.) v1 only for a node marked
`legacy_signing` (a facade that accepts nothing else). A facade without a signing identity of its own
records detection as `not_configured`, and what is stored for viewers is a short reason of ours, never
the remote's text.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from .errors import AuthConfigError
from .nodes import Detection, Node
from .settings import Settings
from .signing import AsyncServiceHTTPClient


class _Refused(Exception):
    """The node answered, but not with a report: the reason is ours (status and route), not its text."""


async def _probe(node: Node, settings: Settings) -> dict[str, Any]:
    async with AsyncServiceHTTPClient(settings=settings, base_url=node.address or "", v2=not node.legacy_signing,
                                      timeout=settings.detect_timeout_s, follow_redirects=False) as client:
        health, models = await asyncio.gather(client.get("/health"), client.get("/models"))
    for name, response in (("/health", health), ("/models", models)):
        # /health answers 503 when the node is unhealthy: still a report, still JSON.
        if response.status_code not in (200, 503):
            raise _Refused(f"{name} answered HTTP {response.status_code}")
    try:
        h, m = health.json(), models.json()
    except ValueError:
        raise _Refused("the answer is not JSON") from None
    if not (isinstance(h, dict) and isinstance(m, dict)):
        raise _Refused("the answer is not a JSON object")
    return {"models": m.get("available", []), "maxConcurrent": h.get("max_concurrent"),
            "memoryGB": h.get("memory_gb"), "deviceType": h.get("device_type"),
            "utilization": h.get("utilization"), "status": h.get("status"),
            "loadedModels": m.get("loaded_models", [])}


def _reason(exc: BaseException) -> str:
    """Short and ours: an exception's class says what went wrong (ConnectError, ReadTimeout) without
    carrying what a remote sent."""
    if isinstance(exc, _Refused):
        return str(exc)
    if isinstance(exc, (asyncio.TimeoutError, httpx.TimeoutException)):
        return "timed out"
    return f"unreachable ({type(exc).__name__})"


async def detect(node: Node, settings: Settings) -> Node:
    """Probe the node's `/health` and `/models`; the outcome is written into the returned node."""
    now = time.time()
    if not node.address:
        node.detection = Detection(status="error", error="the node has no address to probe", at=now)
        return node
    try:
        capabilities = await asyncio.wait_for(_probe(node, settings), timeout=settings.detect_timeout_s + 1)
    except AuthConfigError:
        node.detection = Detection(status="not_configured", at=now, error=(
            "this facade has no signing identity (NPU_SERVICE_ID / NPU_SERVICE_KEY): it cannot sign the probe"))
        return node
    except (httpx.HTTPError, OSError, _Refused, ValueError, asyncio.TimeoutError) as exc:
        node.detection = Detection(status="error", error=_reason(exc), at=time.time())
        return node
    node.capabilities = capabilities
    node.last_health_check = time.time()
    node.detection = Detection(status="ok", at=node.last_health_check)
    return node
