"""A client that disconnects cancels its request's work: its job is cancelled (the dispatcher takes it off
its stream, or tells the worker running it), never computed for nobody.

Streamed responses need nothing here: Starlette cancels the response's task when the client goes (its
generator, waiting for the next text, gets the cancellation, and the dispatcher's stream with it). A
non-streamed answer (and a stream's first chunk) is awaited while the request's own ASGI channel is watched
for `http.disconnect` (the body was read already, so the next message is that, or the end of the response);
the await is then cancelled. This costs one task per request, no Redis command.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import Response

T = TypeVar("T")
GONE = 499
"""Status logged for a request whose client left before its answer (nginx's "client closed request");
nobody receives it."""


class ClientGone(Exception):
    """The client disconnected before its answer; its work was cancelled."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def while_connected(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """`work()`'s result; raises `ClientGone` (after cancelling it) when the client disconnects first."""
    task = asyncio.ensure_future(work())
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise ClientGone
    return task.result()


def gone() -> Response:
    return Response(status_code=GONE)
