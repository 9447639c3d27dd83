"""Errors callers see. Each carries the stable `error` code and HTTP status the facade answers with."""

from __future__ import annotations

import redis

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
"""Errors meaning Redis cannot be reached (redis.asyncio raises the same classes)."""


class NPUError(Exception):
    code = "npu_error"
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
    code = "model_not_found"
    status = 404

    def __init__(self, model: str, available: list[str]):
        super().__init__(f"unknown model {model!r}; available: {', '.join(available)}", available=available)
        self.model = model


class NotFoundError(NPUError):
    code = "not_found"
    status = 404


class InvalidInputError(NPUError):
    """Input the model cannot take as given (empty, wrong kind, longer than the model allows)."""

    code = "invalid_input"
    status = 422

    def __init__(self, message: str, code: str | None = None, **extra: object):
        super().__init__(message, **extra)
        if code:
            self.code = code


class InputTooLargeError(InvalidInputError):
    """Input beyond a documented size limit of the service (texts per request, characters)."""

    status = 413


class NPUUnavailableError(NPUError):
    """Neither a worker nor the cloud could answer (no live worker, deadline missed, cloud off or failing)."""

    code = "unavailable"
    status = 503


class JobFailedError(NPUError):
    """A worker took the job and reported a failure."""

    code = "job_failed"
    status = 500

    def __init__(self, message: str, code: str | None = None, status: int | None = None, **extra: object):
        super().__init__(message, **extra)
        if code:
            self.code = code
        if status:
            self.status = status


class AuthConfigError(NPUError):
    """This process has no key to sign with (or a malformed key set): raised at construction, so nothing
    is ever sent unsigned and a misconfigured facade does not start."""

    code = "auth_not_configured"
    status = 500


class UnauthorizedError(NPUError):
    """401. `message` is one of three public phrases; `reason` is the precise cause, for logs and
    metrics only, so a caller cannot probe which part of a credential was wrong."""

    code = "unauthorized"
    status = 401
    headers = {"WWW-Authenticate": 'HMAC-SHA256 realm="npu-worker", Bearer realm="npu-worker"'}
    MISSING, EXPIRED, INVALID = "missing credentials", "expired signature", "invalid credentials"

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class ForbiddenError(NPUError):
    """403: authenticated, but the role does not allow this route."""

    code = "forbidden"
    status = 403


class OverloadedError(NPUError):
    """The model's queue is full and the cloud may not (or cannot) take the request: retry later."""

    code = "overloaded"
    status = 429

    def __init__(self, message: str, retry_after_s: int, **extra: object):
        super().__init__(message, retry_after_s=retry_after_s, **extra)
        self.retry_after_s = retry_after_s
        self.headers = {"Retry-After": str(retry_after_s)}


class WorkerLostError(JobFailedError):
    """The worker running a generation died after text was already streamed, so it cannot be retried."""

    code = "worker_lost"
    status = 503
