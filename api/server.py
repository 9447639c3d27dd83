"""The connection protocol uvicorn serves the facade with: uvicorn's own (httptools when installed, else
h11), plus a bound on the time a client may take to send a request's headers.

uvicorn has none: its keep-alive timer runs only between requests and stops at the first byte, so a
client that sends part of its headers and then trickles or holds them keeps a connection (and a file
descriptor) forever. Here a connection must complete each request's headers within
`NPU_HEADER_TIMEOUT_S` of connecting, or of its previous answer, or it is closed; the body's time is
bounded by `api.middleware.BodyLimitMiddleware`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from dispatcher.settings import get_settings

if TYPE_CHECKING:
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Protocol
else:
    from uvicorn.protocols.http.auto import AutoHTTPProtocol as _Protocol

log = logging.getLogger(__name__)


class HeaderDeadlineProtocol(_Protocol):
    """`header_timeout_s` None: NPU_HEADER_TIMEOUT_S, read in the serving process (one of several, maybe)."""

    def __init__(self, *args: Any, header_timeout_s: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._timeout = header_timeout_s or get_settings().header_timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_after: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._timer is not None and self.cycle is not self._waiting_after:  # a new request's headers are in
            self._cancel()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._await_headers()  # kept alive, no pipelined request in flight: the next headers are due

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._cancel()
        self._waiting_after = self.cycle
        self._timer = self.loop.call_later(self._timeout, self._late)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _late(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            log.info("closed a connection from %s: no complete request headers within %g s", client, self._timeout)
            self.transport.close()
