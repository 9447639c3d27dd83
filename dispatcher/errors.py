"""Errors callers see. Each carries the stable `error` code and HTTP status the facade answers with."""

from __future__ import annotations

from enum import Enum

import redis


class ErrorCode(str, Enum):
    """Every stable `error` code an answer can carry, in one place: HTTP bodies, worker replies and RQ's
    failure strings all use these values, and clients may test for them."""

    # refusals before any work
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    AUTH_NOT_CONFIGURED = "auth_not_configured"
    NOT_FOUND = "not_found"
    MODEL_NOT_FOUND = "model_not_found"
    CONFLICT = "conflict"
    INVALID_REQUEST = "invalid_request"
    """The body does not fit the endpoint's schema (malformed JSON, a wrong type, an unknown field)."""
    INVALID_INPUT = "invalid_input"
    """The body fits the schema, but the model cannot take it as given."""
    WRONG_TASK = "wrong_task"
    TOO_MANY_TEXTS = "too_many_texts"
    TOO_MANY_MESSAGES = "too_many_messages"
    INPUT_TOO_LARGE = "input_too_large"
    BODY_TOO_LARGE = "body_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    """The request's body did not arrive within NPU_BODY_TIMEOUT_S."""
    INPUT_TOO_LONG = "input_too_long"
    TOO_MANY_TOKENS = "too_many_tokens"
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_NODE = "unknown_node"
    MODEL_NOT_ON_NODE = "model_not_on_node"
    # capacity and availability
    OVERLOADED = "overloaded"
    RATE_LIMITED = "rate_limit_exceeded"
    """The caller's app is over one of its limits (OpenAI's code for the same thing)."""
    KV_CACHE_FULL = "kv_cache_full"
    """A generation needs more KV cache (prompt + max_tokens) than the worker has for the model."""
    UNAVAILABLE = "unavailable"
    REDIS_UNAVAILABLE = "redis_unavailable"
    REDIS_FULL = "redis_full"
    """Redis reached its `maxmemory` and refuses new jobs (nothing is evicted): retry once the queues drain."""
    # a worker took the job and it failed
    JOB_FAILED = "job_failed"
    INFERENCE_FAILED = "inference_failed"
    WORKER_LOST = "worker_lost"
    GENERATION_STALLED = "generation_stalled"
    INTERNAL = "npu_error"

    def __str__(self) -> str:
        return self.value


ECHO_CHARS = 64
"""Most characters of a caller's own value (a model name) an answer repeats: enough to recognise it,
never the caller's megabytes back."""


def echo(value: str) -> str:
    """A caller's value as an answer may quote it: its first `ECHO_CHARS` characters, then "..."."""
    return value if len(value) <= ECHO_CHARS else value[:ECHO_CHARS] + "..."


REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
"""Errors meaning Redis cannot be reached (redis.asyncio raises the same classes)."""


class NPUError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL
    status = 500
    headers: dict[str, str] = {}

    def __init__(self, message: str, **extra: object):
        super().__init__(message)
        self.message = message
        self.extra = extra

    def __str__(self) -> str:
        """With the stable code, so RQ's `exc_string` of a failed bulk job carries it too."""
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, **self.extra}


class ModelNotFoundError(NPUError):
    code = ErrorCode.MODEL_NOT_FOUND
    status = 404

    def __init__(self, model: str, available: list[str]):
        super().__init__(f"unknown model {echo(model)!r}; available: {', '.join(available)}", available=available)
        self.model = model


class NotFoundError(NPUError):
    code = ErrorCode.NOT_FOUND
    status = 404


class ConflictError(NPUError):
    """409: what the request would create exists already."""

    code = ErrorCode.CONFLICT
    status = 409


class InvalidInputError(NPUError):
    """Input the model cannot take as given (empty, wrong kind, longer than the model allows)."""

    code = ErrorCode.INVALID_INPUT
    status = 422

    def __init__(self, message: str, code: ErrorCode | None = None, **extra: object):
        super().__init__(message, **extra)
        if code:
            self.code = code


class InputTooLargeError(InvalidInputError):
    """Input beyond a documented size limit of the service (texts per request, characters)."""

    status = 413


class RequestTimeoutError(NPUError):
    """408: the caller took too long to send its request; the connection is closed after the answer."""

    code = ErrorCode.REQUEST_TIMEOUT
    status = 408
    headers = {"Connection": "close"}


class NPUUnavailableError(NPUError):
    """Neither a worker nor the cloud could answer (no live worker, deadline missed, cloud off or failing)."""

    code = ErrorCode.UNAVAILABLE
    status = 503


class JobFailedError(NPUError):
    """A worker took the job and reported a failure."""

    code = ErrorCode.JOB_FAILED
    status = 500

    def __init__(self, message: str, code: ErrorCode | str | None = None, status: int | None = None,
                 **extra: object):
        super().__init__(message, **extra)
        if code:
            self.code = ErrorCode(code) if code in ErrorCode._value2member_map_ else ErrorCode.JOB_FAILED
        if status:
            self.status = status


class AuthConfigError(NPUError):
    """This process has no key to sign with (or a malformed key set): raised at construction, so nothing
    is ever sent unsigned and a misconfigured facade does not start."""

    code = ErrorCode.AUTH_NOT_CONFIGURED
    status = 500


class UnauthorizedError(NPUError):
    """401. `message` is one of three public phrases; `reason` is the precise cause, for logs and
    metrics only, so a caller cannot probe which part of a credential was wrong."""

    code = ErrorCode.UNAUTHORIZED
    status = 401
    headers = {"WWW-Authenticate": 'HMAC-SHA256 realm="npu-worker", Bearer realm="npu-worker"'}
    MISSING, EXPIRED, INVALID = "missing credentials", "expired signature", "invalid credentials"

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class ForbiddenError(NPUError):
    """403: authenticated, but the role does not allow this route."""

    code = ErrorCode.FORBIDDEN
    status = 403


class OverloadedError(NPUError):
    """The model's queue is full and the cloud may not (or cannot) take the request: retry later."""

    code = ErrorCode.OVERLOADED
    status = 429

    def __init__(self, message: str, retry_after_s: int, **extra: object):
        super().__init__(message, retry_after_s=retry_after_s, **extra)
        self.retry_after_s = retry_after_s
        self.headers = {"Retry-After": str(retry_after_s)}


class RateLimitedError(NPUError):
    """429: the caller's app is over a limit (dispatcher/ratelimit.py); the headers say when to retry."""

    code = ErrorCode.RATE_LIMITED
    status = 429

    def __init__(self, message: str, headers: dict[str, str], **extra: object):
        super().__init__(message, **extra)
        self.headers = headers


class CacheFullError(NPUError):
    """429: the generation's worst case (prompt + max_tokens) does not fit the model's KV cache on a worker;
    fewer max_tokens, a shorter prompt or a larger NPU_KV_CACHE_MB would."""

    code = ErrorCode.KV_CACHE_FULL
    status = 429


class WorkerLostError(JobFailedError):
    """The worker running a generation died after text was already streamed, so it cannot be retried."""

    code = ErrorCode.WORKER_LOST
    status = 503
