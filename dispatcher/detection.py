"""Capability detection: what a node says about itself, read through signed calls to its facade.

Bounded in time (a dead address answers within `detect_timeout_s`), and a failure is recorded on the
node as such: capabilities are only ever what a node reported, never defaults.

Signed v2, which binds the target host: the address an admin registered may be anyone's, and the
headers sent there must be worth nothing against another facade (v1 headers would be accepted by every
facade that knows our key for the whole window). A replayer chooses the Host header it sends, so what
refuses the replay is a facade that knows its own names, which every facade does by default (its bound
address and configured names, or `NPU_AUTH_HOSTS`: `api/hosts.py`): a v2 signature made for any other
host is refused. (The nonce cannot be spent here before sending: the nodes detection calls
usually share this Redis, and the one it was meant for would then refuse it.) v1 only for a node marked
`legacy_signing` (a facade that accepts nothing else): the documented exception, logged at each probe,
since v1 binds no host and its headers verify at any facade that trusts the key within the window.
An answer is held to our own schema of `/health` and `/models` (`dispatcher.reports`): a node that
reports anything else (a count no encoder takes, an object or markup where a name belongs) is refused
with the first field that does not fit, and nothing of it is stored. A facade without a signing identity of its own
records detection as `not_configured`, and what is stored for viewers is a short reason of ours, never
the remote's text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from .errors import AuthConfigError, echo
from .nodes import Detection, Node
from .reports import HealthResponse, ModelsResponse
from .settings import Settings
from .signing import AsyncServiceHTTPClient

log = logging.getLogger(__name__)


R = TypeVar("R", bound=BaseModel)


class _Refused(Exception):
    """The node answered, but not with a report: the reason is ours (status and route), not its text."""


async def _probe(node: Node, settings: Settings) -> dict[str, Any]:
    if node.legacy_signing:
        log.warning("probing node %s with v1 signatures (legacy_signing): the headers it receives verify at "
                    "any facade that trusts this key, for NPU_AUTH_WINDOW_S (%d s)", node.id, settings.auth_window_s)
    async with AsyncServiceHTTPClient(settings=settings, base_url=node.address or "", v2=not node.legacy_signing,
                                      timeout=settings.detect_timeout_s, follow_redirects=False) as client:
        health, models = await asyncio.gather(client.get("/health"), client.get("/models"))
    for name, response in (("/health", health), ("/models", models)):
        # /health answers 503 when the node is unhealthy: still a report, still JSON.
        if response.status_code not in (200, 503):
            raise _Refused(f"{name} answered HTTP {response.status_code}")
    h = _report(HealthResponse, "/health", health)
    m = _report(ModelsResponse, "/models", models)
    return {"models": m.available, "maxConcurrent": h.max_concurrent, "memoryGB": h.memory_gb,
            "deviceType": h.device_type, "utilization": h.utilization, "status": h.status,
            "loadedModels": m.loaded_models}


def _report(schema: type[R], route: str, response: httpx.Response) -> R:
    """The answer held to our own schema of that route: anything else is refused, with the first field
    that does not fit and why (pydantic's wording, which does not quote the value)."""
    try:
        return schema.model_validate_json(response.content)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "the answer"
        raise _Refused(echo(f"{route} does not fit the schema: {where}: {first['msg']}")) from None


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
