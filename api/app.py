"""The facade's application factory: `uvicorn --factory api.app:create_app`."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from redis.exceptions import RedisError

from dispatcher.client import AsyncDispatcher
from dispatcher.fleet import Fleet
from dispatcher.settings import FacadeSettings

from . import errors
from .auth import Authenticator
from .batches.driver import Driver
from .limiting import limiter
from .metrics import cancelled as count_cancelled
from .middleware import AccessLogMiddleware, BodyLimitMiddleware, NoSniffMiddleware, RequestIdMiddleware
from .openapi import document_limits
from .responses import ORJSONResponse
from .routes import (
    batches,
    embeddings,
    files,
    fleet,
    health,
    inference,
    liveness,
    metrics,
    models,
    openai,
    schema,
    ui,
    whoami,
)
from .server import HeaderDeadlineProtocol

log = logging.getLogger(__name__)


async def _sample_history(fleet: Fleet) -> None:
    """Utilization history for the operator page, every `history_interval_s`, while the facade runs."""
    while True:
        try:
            await fleet.sample_history()
        except RedisError as exc:
            log.debug("history sample skipped: %s", exc)
        await asyncio.sleep(fleet.settings.history_interval_s)


async def _publish_apps(app: FastAPI, dispatcher: AsyncDispatcher) -> None:
    """The configured apps' weights, for the workers (`Keys.apps`); an app first seen later (a service, an
    operator role) is named by the dispatcher with weight 1 when it sends its first job."""
    weights = {a.name: a.weight for a in app.state.auth.apps.values()}
    if not weights:
        return
    try:
        dispatcher.app_weights.update(weights)
        await dispatcher.redis.hset(dispatcher.keys.apps, mapping=weights)
        for name in weights:
            dispatcher.named(name)
    except RedisError as exc:
        log.warning("could not publish the apps' weights (%s): each counts as weight 1 until then", exc)


def server_options(settings: FacadeSettings) -> dict[str, Any]:
    """uvicorn options every way of serving the facade passes: X-Forwarded-For (the caller's address in
    logs) is believed only from NPU_TRUSTED_PROXIES; uvicorn's own default trusts 127.0.0.1, which would
    let any local process write the address our logs report. The protocol bounds the time a request's
    headers may take (`api/server.py`)."""
    trusted = settings.trusted_proxies
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": ",".join(trusted) if trusted else None,
            "server_header": False,
            # a partial, not a subclass made here: uvicorn's worker processes receive it pickled
            "http": functools.partial(HeaderDeadlineProtocol, header_timeout_s=settings.header_timeout_s)}


def create_app(settings: FacadeSettings | None = None) -> FastAPI:
    settings = settings or FacadeSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A job whose HTTP client left is cancelled as `client_gone` (api/disconnect.py), and counted.
        dispatcher = app.state.dispatcher = AsyncDispatcher(settings, cancel_reason="client_gone",
                                                            on_cancel=count_cancelled)
        await _publish_apps(app, dispatcher)
        app.state.limiter = limiter(dispatcher.redis, dispatcher.keys, app.state.auth.apps, settings.deadline_s + 60)
        app.state.fleet = Fleet(dispatcher.redis, dispatcher.keys, settings, dispatcher.registry)
        sampler = asyncio.create_task(_sample_history(app.state.fleet))
        driver = app.state.batch_driver = Driver(settings, dispatcher.registry)
        driving = asyncio.create_task(driver.run())  # steps the Batch API's batches (api/batches/driver.py)
        yield
        sampler.cancel()
        driving.cancel()
        await asyncio.gather(driving, return_exceptions=True)
        driver.close()
        await app.state.dispatcher.aclose()

    # FastAPI's own schema and docs routes would be unauthenticated: off; `routes/schema.py` serves the
    # schema behind read access instead.
    app = FastAPI(title="npu-worker", version="0.1.0", lifespan=lifespan, default_response_class=ORJSONResponse,
                  openapi_url=None, docs_url=None, redoc_url=None,
                  # Starlette's slash redirects build an absolute URL from the Host header: a caller's Host
                  # would choose where the answer sends the next one. A path is served as written, or 404.
                  redirect_slashes=False,
                  description="Embeddings and generation on local accelerators through OpenVINO workers, "
                              "with a cloud fallback. Every endpoint but `/livez`, `/readyz` (and the operator page's "
                              "static files) needs a service signature or an operator token.")
    app.state.settings = settings
    app.state.auth = Authenticator(settings)  # here, not in lifespan: missing credentials fail the build
    # Each router declares its own requirement (api/auth.py); liveness and the page's shell are `public`.
    for module in (liveness, health, models, schema, embeddings, inference, openai, files, batches, fleet, whoami, ui):
        app.include_router(module.router)
    app.include_router(batches.operator)
    app.include_router(metrics.router(settings))
    document_limits(app, settings)
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(RequestIdMiddleware)  # outermost but one, so the access line has the request id
    app.add_middleware(NoSniffMiddleware)  # outermost of ours: on every answer the app sends
    errors.install(app)
    return app
