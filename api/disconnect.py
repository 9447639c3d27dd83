"""A client that disconnects cancels its request's work: its job is cancelled (the dispatcher takes it off
its stream, or tells the worker running it), never computed for nobody.

Streamed responses need nothing here: Starlette cancels the response's task when the client goes (its
generator, waiting for the next text, gets the cancellation, and the dispatcher's stream with it). A
non-streamed answer (and a stream's first chunk) is awaited while the request's own ASGI channel is watched
for `http.disconnect` (the body was read already, so the next message is that, or the end of the response);
the await is then cancelled. The work runs in the request's own task; only the watch is a task of its own
(one task per request, no Redis command).
"""

from __future__ import annotations

import asyncio
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


async def while_connected(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """`work()`'s result; raises `ClientGone` (after cancelling it) when the client disconnects first.

    The work runs in the request's own task, which the watch cancels: a task for the work too, and a wait
    on both, were two more scheduling hops on every lone request."""
    current = asyncio.current_task()
    assert current is not None
    left = False

    async def watch() -> None:
        nonlocal left
        while (await request.receive())["type"] != "http.disconnect":
            pass
        left = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work()
    except asyncio.CancelledError:
        if not left:
            raise  # cancelled from elsewhere (shutdown): not ours to swallow
        current.uncancel()
        raise ClientGone from None
    finally:
        watcher.cancel()


def gone() -> Response:
    return Response(status_code=GONE)
