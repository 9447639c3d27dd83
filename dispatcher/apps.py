"""Apps: who shares the device. An app key belongs to a named app, with a weight and optional limits.

The app a job belongs to travels on it (`Job.app`), and the worker serves apps' queued work in proportion
to their weights (`worker/fair.py`). App names come from configuration only (`NPU_APPS`, or the names
given to a bare `NPU_API_KEYS` list), never from a request, so logs and metrics labelled by app stay
bounded. Callers without an app key count as apps too: a signed service under its service id, an
operator under its role.

A backend using the dispatcher directly names its app with `as_app("indexer")` around its calls.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Priority = Literal["normal", "low"]
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""What an app name may be: it is part of Redis key names and metric labels."""

app: contextvars.ContextVar[str | None] = contextvars.ContextVar("app", default=None)
"""The app of the current call: the facade sets it from the caller's credentials, a backend with `as_app`."""
priority: contextvars.ContextVar[Priority] = contextvars.ContextVar("priority", default="normal")
"""The current call's priority inside its app."""


@contextlib.contextmanager
def as_app(name: str | None, level: Priority = "normal") -> Iterator[None]:
    """Jobs sent inside belong to app `name` (at `level` inside it); tasks started inside inherit it."""
    if name is not None:
        check_name(name)
    tokens = app.set(name), priority.set(level)
    try:
        yield
    finally:
        app.reset(tokens[0])
        priority.reset(tokens[1])


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise ValueError(f"app name {name!r}: use 1-64 letters, digits, '_', '.' or '-'")
    return name


class AppLimits(BaseModel):
    """Per-app limits, shared by every facade (counted in Redis); None: no limit."""

    model_config = ConfigDict(extra="forbid")

    concurrent: int | None = Field(None, ge=1, description="Requests running at once.")
    requests_per_second: float | None = Field(None, gt=0)
    tokens_per_minute: int | None = Field(None, ge=1, description="Prompt + completion tokens (generation), "
                                                                  "input tokens (embeddings).")


class App(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    keys: list[str] = Field(default_factory=list)
    weight: float = Field(1.0, gt=0, le=1000)
    limits: AppLimits = Field(default_factory=AppLimits)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)


def key_id(key: str) -> str:
    """The name a bare key's app gets: a short, stable, non-secret id of the key."""
    import hashlib

    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def parse_apps(raw: str | Mapping[str, object] | None, bare_keys: Sequence[str] = ()) -> dict[str, App]:
    """Apps from `NPU_APPS` (JSON `{"name": {"keys": [...], "weight": 2, "limits": {...}}}`, or the path
    of a TOML file holding the same tables) plus one app per bare `NPU_API_KEYS` key (named by its key id).
    A key given to two apps is refused: a request would not know whose it is."""
    tables: Mapping[str, object]
    if raw is None or raw == "":
        tables = {}
    elif isinstance(raw, str):
        text = raw.strip()
        if text.startswith("{"):
            tables = json.loads(text)
        else:
            import tomllib

            tables = tomllib.loads(Path(text).read_text())
    else:
        tables = raw
    apps: dict[str, App] = {}
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            raise ValueError(f"app {name!r}: expected a table of keys, weight and limits")
        apps[name] = App(name=name, **table)
    for key in bare_keys:
        if not any(key in a.keys for a in apps.values()):
            name = key_id(key)
            apps[name] = App(name=name, keys=[key])
    owners: dict[str, str] = {}
    for a in apps.values():
        for key in a.keys:
            if owners.setdefault(key, a.name) != a.name:
                raise ValueError(f"a key is given to two apps: {owners[key]!r} and {a.name!r}")
    return apps
