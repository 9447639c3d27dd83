"""Error answers: JSON with a stable `error` code and a message; OpenAI's shape on the `/v1` routes."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException

from dispatcher.errors import ErrorCode, NPUError, UnauthorizedError

from . import metrics
from .auth import authenticate
from .responses import ORJSONResponse

log = logging.getLogger(__name__)


def error_response(request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> Response:
    route = request.scope.get("route")
    metrics.refused(getattr(route, "path", "unmatched"), status)
    if request.url.path.startswith("/v1/"):
        body: dict[str, Any] = {"error": {"message": message, "type": code, "code": code, "param": None, **extra}}
    else:
        body = {"error": code, "message": message, **extra}
    return ORJSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(NPUError)
    async def npu_error(request: Request, exc: NPUError) -> Response:
        headers = dict(exc.headers)
        if exc.status == 503:  # no worker, deadline, worker lost: worth retrying soon, like a 429
            headers.setdefault("Retry-After", str(request.app.state.settings.retry_after_s))
        return error_response(request, exc.status, exc.code, exc.message, headers=headers or None, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI parses a JSON body before it runs the routers' dependencies, so a malformed body lands
        # here unauthenticated: credentials are checked first, and a stranger hears only the 401. (The
        # `public` routes take no input but a free-form path; one added with some would answer 401 here.)
        if not hasattr(request.state, "principal"):
            try:
                await authenticate(request)
            except UnauthorizedError as refused:
                return await npu_error(request, refused)
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        return error_response(request, 422, ErrorCode.INVALID_REQUEST, message, detail=detail)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        """Starlette's own refusals in our error shape. A body that cannot even be decoded (FastAPI's 400)
        is malformed input like bad JSON: 422 `invalid_request`, as documented."""
        if exc.status_code == 400:
            return error_response(request, 422, ErrorCode.INVALID_REQUEST, f"malformed body: {exc.detail}")
        try:
            code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        except ValueError:
            code = "http_error"
        return error_response(request, exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def redis_down(request: Request, exc: Exception) -> Response:
        log.warning("redis unavailable: %s", exc)
        return error_response(request, 503, ErrorCode.REDIS_UNAVAILABLE, "the job store is unreachable; retry",
                              headers={"Retry-After": "2"})
