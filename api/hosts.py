"""The Host header values a v2 signature may be made for here: the names this facade serves as.

A v2 signature binds the host it was made for, so a request signed for another server (a node that
capability detection probed, say) is refused here even if its replayer sends that Host. That only
works when the facade knows its own names, so it does by default: `NPU_AUTH_HOSTS` when set, else
every name that reaches this process on the port the connection came in on (the address it is bound
to, `localhost` and the loopback addresses, this machine's host name, NPU_HOST, and NPU_NODE_ADDRESS
as written). A caller that reaches the facade by another name (a proxy passing its own Host, a mapped
port) needs NPU_AUTH_HOSTS.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from dispatcher.settings import Settings

_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
_WILDCARD = ("", "0.0.0.0", "::")
_DEFAULT_PORTS = (80, 443)
"""Ports a client leaves out of its Host header."""


def _name(host: str) -> str:
    """A host as a Host header writes it: lowercase, an IPv6 address in brackets."""
    host = host.lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class ServedHosts:
    """The accepted Host values: NPU_AUTH_HOSTS as given, or this facade's own names (see the module)."""

    def __init__(self, settings: Settings):
        self.configured = frozenset(h.lower() for h in settings.auth_hosts)
        names = {*_LOOPBACK, _name(socket.gethostname())}
        if settings.host not in _WILDCARD:
            names.add(_name(settings.host))
        self.names = frozenset(names)
        self.default_port = settings.port
        self.node_address = urlsplit(settings.node_address).netloc.lower() if settings.node_address else None

    def accepted(self, scope: Mapping[str, Any]) -> frozenset[str]:
        if self.configured:
            return self.configured
        server = scope.get("server")  # (host, port) the connection came in on; the port is None on an ASGI
        bound_host, port = (str(server[0]), server[1]) if server else ("", self.default_port)  # transport
        if port is None:
            port = 443 if scope.get("scheme") == "https" else 80
        return self._served(bound_host, int(port))

    @lru_cache(maxsize=16)  # noqa: B019 (one instance per app, a handful of bound addresses)
    def _served(self, bound_host: str, port: int) -> frozenset[str]:
        names = set(self.names)
        if bound_host not in _WILDCARD:
            names.add(_name(bound_host))
        hosts = {f"{n}:{port}" for n in names}
        if port in _DEFAULT_PORTS:
            hosts |= names
        if self.node_address:
            hosts.add(self.node_address)
        return frozenset(hosts)
