"""Logging set-up shared by every process, with a request id that follows a job from facade to worker.

The facade takes `X-Request-ID` (or makes one), the dispatcher puts it in the job, the worker logs
with it; `NPU_LOG_JSON=true` writes one JSON object per line for log collectors.

Logged values often come from callers (a path, a header, a service id): control characters in a message
are written escaped (`\\x1b`, `\\n`), so a caller can neither forge log lines nor send escape codes to an
operator's terminal. Job payloads (texts, prompts) are never logged at INFO, rq's own job lines included.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
from typing import Any

from .settings import CommonSettings

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
access: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("access", default=None)
"""The facade's access-log fields of the current request that only the route knows (model, source)."""


def note_access(**fields: Any) -> None:
    """Add to the current request's access-log line (nothing outside a facade request)."""
    current = access.get()
    if current is not None:
        current.update(fields)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """Control characters (C0, DEL, C1, the Unicode line separators) as Python escapes."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        message = record.getMessage()
        if _CONTROL.search(message):  # rendered once, escaped; tracebacks (exc_info) keep their lines
            record.msg, record.args = escape_controls(message), None
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "pid": record.process,
                 "message": record.getMessage()}
        if rid := getattr(record, "request_id", None):
            entry["request_id"] = rid
        if fields := getattr(record, "access", None):  # an access-log line: its fields as keys of their own
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(settings: CommonSettings) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if settings.log_json:
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    logging.getLogger("rq.worker").setLevel(settings.log_level.upper())  # rq pins its own to INFO on import
