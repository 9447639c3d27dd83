"""Per-app limits on the inference routes: admitted or 429 before the body is parsed, with OpenAI's headers.

`api.auth.AuthenticatedRoute` calls `limited` around an inference route's handler once the caller is known,
so a refused request costs one Redis round trip and no parsing. A running slot (`concurrent`) is held until
the answer is sent, a streamed one's last chunk included. When Redis cannot be asked, the request goes on:
a limit must not turn a Redis hiccup into refusals of its own (the request will meet Redis anyway).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dispatcher.apps import App
from dispatcher.errors import REDIS_DOWN, RateLimitedError
from dispatcher.logs import request_id
from dispatcher.protocol import new_id
from dispatcher.ratelimit import RateLimiter

log = logging.getLogger(__name__)
_charging: set[asyncio.Task[None]] = set()
_admitted: contextvars.ContextVar[tuple[RateLimiter, str] | None] = contextvars.ContextVar("admitted", default=None)
"""The limiter and app of the current request, when its app has a token budget (read by `charge`)."""


def limiter(redis: Any, keys: Any, apps: dict[str, App], hold_s: float) -> RateLimiter | None:
    """The facade's limiter, or None when no app has a limit (then nothing is asked of Redis)."""
    limits = {a.name: a.limits for a in apps.values()}
    return RateLimiter(redis, keys, limits, hold_s) if any(v.model_fields_set for v in limits.values()) else None


async def limited(request: Request, app: str, handler: Callable[[Request], Awaitable[Response]]) -> Response:
    rl: RateLimiter | None = getattr(request.app.state, "limiter", None)
    limits = rl.applies(app) if rl is not None else None
    if rl is None or limits is None:
        return await handler(request)
    member = f"{request_id.get() or ''}:{new_id()}"
    try:
        verdict = await rl.acquire(app, limits, member, time.time())
    except REDIS_DOWN as exc:
        log.warning("limits of app %s not checked: %s", app, exc)
        return await handler(request)
    if limits.tokens_per_minute is not None:
        _admitted.set((rl, app))
    if not verdict.ok:
        raise RateLimitedError(f"app {app!r} is over its {verdict.limit} limit; retry after "
                               f"{verdict.retry_after_s:.1f}s", verdict.headers(), limit=verdict.limit)
    try:
        response = await handler(request)
    except BaseException:
        await _release(rl, app, member)
        raise
    response.headers.update(verdict.headers())
    if isinstance(response, StreamingResponse):
        response.body_iterator = _releasing(response.body_iterator, rl, app, member)
    else:
        await _release(rl, app, member)
    return response


async def _releasing(body: AsyncIterable[Any], rl: RateLimiter, app: str, member: str) -> AsyncIterator[Any]:
    try:
        async for chunk in body:
            yield chunk
    finally:
        await _release(rl, app, member)


async def _release(rl: RateLimiter, app: str, member: str) -> None:
    if rl.applies(app) is None or rl.limits[app].concurrent is None:
        return
    try:
        await rl.release(app, member)
    except REDIS_DOWN as exc:  # the slot expires by itself
        log.warning("running slot of app %s not released: %s", app, exc)


def charge(tokens: int) -> None:
    """Count an answered request's tokens against its app's minute, without holding up the answer."""
    admitted = _admitted.get()
    if admitted is None or tokens <= 0:
        return
    rl, app = admitted
    task = asyncio.get_running_loop().create_task(_charge(rl, app, tokens))
    _charging.add(task)
    task.add_done_callback(_charging.discard)


async def _charge(rl: RateLimiter, app: str, tokens: int) -> None:
    try:
        await rl.charge(app, tokens, time.time())
    except REDIS_DOWN as exc:
        log.warning("tokens of app %s not counted: %s", app, exc)
