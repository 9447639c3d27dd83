"""`npu-worker call`'s side of HTTP: which facade to talk to, and one signed request to it."""

from __future__ import annotations

import httpx

from dispatcher.settings import Settings

from .stack import announced_facade, facade_url


class NoFacade(Exception):
    """No --url, no facade announced in the state directory and no NPU_HOST / NPU_PORT set: calling
    the default port would reach whatever happens to listen there."""


def base_url(settings: Settings, url: str | None = None) -> str:
    """--url; else NPU_HOST / NPU_PORT when either is set explicitly; else the facade a running `up` (or a
    lone `serve`) announced in the state directory."""
    if url:
        return url
    if {"host", "port"} & settings.model_fields_set:
        return facade_url(settings.host, settings.port)
    if announced := announced_facade(settings):
        return announced
    raise NoFacade(f"no facade: no `npu-worker up` or `serve` is running with state directory {settings.state_dir} "
                   "(start one, set NPU_STATE_DIR to its directory, or pass --url)")


def signed_request(settings: Settings, method: str, path: str, base: str, content: bytes | None = None,
                   v1: bool = False, timeout: float = 60.0) -> httpx.Response:
    """Signed as NPU_SERVICE_ID / NPU_SERVICE_KEY, or with the credentials `up` / `serve` generated."""
    from dispatcher.signing import ServiceHTTPClient

    headers = {"content-type": "application/json"} if content is not None else None
    with ServiceHTTPClient(settings=settings, v2=not v1, base_url=base, timeout=timeout) as client:
        return client.request(method.upper(), path, content=content, headers=headers)
