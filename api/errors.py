"""Error answers: JSON with a stable `error` code and a message; OpenAI's shape on the `/v1` routes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
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
        # OpenAI answers a request it cannot take with 400 (its clients raise BadRequestError), never 422.
        status = 400 if status == 422 else status
        kind = "invalid_request_error" if status == 400 else str(code)
        param = extra.pop("param", None) or extra.get("field")  # the field our own checks name
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "code": code, "param": param, **extra}}
    else:
        body = {"error": code, "message": message, **extra}
    return ORJSONResponse(body, status_code=status, headers=headers)


_EXPECTED = {"string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
             "float_type": "a number", "float_parsing": "a number", "bool_type": "a boolean",
             "bool_parsing": "a boolean", "list_type": "an array", "dict_type": "an object",
             "model_type": "an object", "model_attributes_type": "an object"}


def _param(error: Any) -> str | None:
    loc = [p for p in error.get("loc", ()) if p != "body"]
    # pydantic adds a union member's name (`str`, `list[str]`, `constrained-str`) to the location: not a field
    loc = [p for p in loc if isinstance(p, int) or not ("[" in p or "-" in p or p in ("str", "int", "float", "bool"))]
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None


def openai_validation(errors: Sequence[Any]) -> tuple[str | None, str]:
    """The first problem of a `/v1` body as OpenAI words it, with `param` the field's path
    (`messages[0].content`), rather than pydantic's wording. Union members each report a problem for the
    same field: the field is what matters."""
    if not errors:
        return None, "Invalid request body."
    params = [_param(e) for e in errors]
    # Of the field's problems, one that is not "wrong type": a union member of the input's own type
    # (a list of stop strings that is too long) says more than the member it is not (a string).
    # (An item's problem counts for its list: a too long `stop[0]` says more than "stop is not a string".)
    top = params[0]
    first, param = next(((e, p) for e, p in zip(errors, params, strict=True)
                         if p is not None and top is not None and (p == top or p.startswith(top + "["))
                         and not str(e.get("type", "")).endswith("_type")), (errors[0], top))
    kind, ctx = first.get("type", ""), first.get("ctx") or {}
    if param is None:
        return None, "We could not parse the JSON body of your request. Send a JSON object."
    if kind == "missing":
        return param, f"Missing required parameter: '{param}'."
    if kind in _EXPECTED:
        return param, f"Invalid type for '{param}': expected {_EXPECTED[kind]}."
    if kind in ("too_short", "string_too_short"):
        return param, f"Invalid '{param}': too short (at least {ctx.get('min_length', 1)})."
    if kind in ("too_long", "string_too_long"):
        return param, f"Invalid '{param}': too long (at most {ctx.get('max_length')})."
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bound = next((f"{op} {v}" for op, k in ((">=", "ge"), ("<=", "le"), (">", "gt"), ("<", "lt"))
                      if (v := ctx.get(k)) is not None), "")
        return param, f"Invalid '{param}': must be {bound}."
    if kind in ("literal_error", "enum"):
        return param, f"Invalid value for '{param}': expected one of {ctx.get('expected', '')}."
    if kind == "value_error":
        return param, f"Invalid '{param}': {ctx.get('error', 'invalid value')}."
    return param, f"Invalid value for '{param}'."


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
        if request.url.path.startswith("/v1/"):
            param, message = openai_validation(errors)
            return error_response(request, 400, ErrorCode.INVALID_REQUEST, message, param=param)
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
        return error_response(request, exc.status_code, code, str(exc.detail),
                              headers=dict(exc.headers) if exc.headers else None)

    @app.exception_handler(RedisOutOfMemoryError)
    async def redis_full(request: Request, exc: Exception) -> Response:
        log.warning("redis full: %s", exc)
        return error_response(request, 503, ErrorCode.REDIS_FULL, "the job store is full (its maxmemory); retry "
                              "once the queues drain", headers={"Retry-After": "2"})

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def redis_down(request: Request, exc: Exception) -> Response:
        log.warning("redis unavailable: %s", exc)
        return error_response(request, 503, ErrorCode.REDIS_UNAVAILABLE, "the job store is unreachable; retry",
                              headers={"Retry-After": "2"})
