"""Where service keys and operator tokens come from: the settings, a keys file, or a generated local set.

With nothing configured, `npu-worker up` / `serve` generate one set (`credentials.json` in the state
directory, mode 0600: a service key, an admin token and an app key): the facade is never open by default,
on the same machine `npu-worker call` and `ServiceHTTPClient` find the key without any configuration, and
an application using the official `openai` client has an app key rather than the admin token. As soon as
anything is configured the generated file is ignored, so an operator's configuration is the whole truth.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from .errors import AuthConfigError
from .settings import FacadeSettings

log = logging.getLogger(__name__)

LOCAL_SERVICE_ID = "local"
"""Service id of the generated key."""
FILE_NAME = "credentials.json"


@dataclass(frozen=True)
class Accepted:
    """What a facade accepts: keys per service (several while one is rotated) and operator tokens."""

    service_keys: dict[str, tuple[str, ...]] = field(repr=False)
    admin_tokens: tuple[str, ...] = field(repr=False)
    viewer_tokens: tuple[str, ...] = field(repr=False)
    source: str
    app_keys: tuple[str, ...] = field(default=(), repr=False)
    """Bearer tokens of applications: inference and model lists only."""

    def summary(self) -> str:
        """For the start-up log: counts and names, never a secret."""
        return (f"{len(self.service_keys)} service(s) ({', '.join(sorted(self.service_keys)) or 'none'}), "
                f"{len(self.admin_tokens)} admin and {len(self.viewer_tokens)} viewer token(s), "
                f"{len(self.app_keys)} app key(s), from {self.source}")


def credentials_path(settings: FacadeSettings) -> Path:
    return settings.state_dir / FILE_NAME


def configured(settings: FacadeSettings) -> bool:
    """Whether the operator configured any accepted credential (then nothing is generated or read)."""
    return bool(settings.service_keys or settings.service_keys_file or settings.admin_tokens
                or settings.viewer_tokens or settings.api_keys or settings.apps)


def _secret(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _key_map(raw: Any, where: str) -> dict[str, tuple[str, ...]]:
    """Validates `{service id: key | [keys]}`; messages name the service, never a key."""
    if not isinstance(raw, dict):
        raise AuthConfigError(f"{where}: expected a JSON object of service id -> key or list of keys")
    keys: dict[str, tuple[str, ...]] = {}
    for service_id, value in raw.items():
        values = tuple(_secret(v) for v in (value if isinstance(value, list) else [value]))
        if not service_id or ":" in service_id or not service_id.isprintable():
            raise AuthConfigError(f"{where}: service id {service_id!r} must be non-empty, printable, without ':'")
        if not values or not all(isinstance(v, str) and v for v in values):
            raise AuthConfigError(f"{where}: service {service_id!r} needs non-empty string keys")
        keys[service_id] = values
    return keys


def _read_generated(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AuthConfigError(f"cannot read {path}: {exc.__class__.__name__}") from None
    if not all(isinstance(data.get(k), str) and data[k] for k in ("service_id", "service_key", "admin_token")):
        raise AuthConfigError(f"{path} lacks service_id, service_key or admin_token; delete it to regenerate")
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; chmod 600 it", path)
    return {k: str(v) for k, v in data.items()}


def ensure_generated(settings: FacadeSettings) -> Path | None:
    """With nothing configured, create the local set once and reuse it on later starts.

    Written to a private temporary file and hard-linked into place, so a concurrent start never sees a
    half-written file and never replaces one already in use. A file from before app keys gains one (its
    other secrets kept). Returns its path, or None when configured.
    """
    if configured(settings):
        return None
    path = credentials_path(settings)
    private_dir(path.parent)
    if not path.exists():
        _write(path, {"service_id": LOCAL_SERVICE_ID, "service_key": secrets.token_hex(32),
                      "admin_token": secrets.token_urlsafe(32), "app_key": secrets.token_urlsafe(32)})
    data = _read_generated(path)
    if not data.get("app_key"):
        _write(path, {**data, "app_key": secrets.token_urlsafe(32)}, replace=True)
    return path


def private_dir(directory: Path) -> None:
    """The state directory: created, and kept, readable by its owner only (0700)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if directory.stat().st_mode & 0o077:
        directory.chmod(0o700)


def _write(path: Path, data: dict[str, str], replace: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        pass  # another start won the race: use its file
    finally:
        tmp.unlink(missing_ok=True)


def accepted(settings: FacadeSettings) -> Accepted:
    """The credentials a facade built from these settings accepts; raises if there are none at all."""
    if not configured(settings):
        path = credentials_path(settings)
        if not path.exists():
            raise AuthConfigError(
                f"no service keys or operator tokens configured and no {path}: set NPU_SERVICE_KEYS and/or "
                "NPU_ADMIN_TOKENS, or start with `npu-worker up` / `npu-worker serve`, which generate it")
        data = _read_generated(path)
        return Accepted({data["service_id"]: (data["service_key"],)}, (data["admin_token"],), (), str(path),
                        (data["app_key"],) if data.get("app_key") else ())
    keys = _key_map(settings.service_keys, "NPU_SERVICE_KEYS")
    if settings.service_keys_file:
        try:
            raw = json.loads(settings.service_keys_file.read_text())
        except (OSError, ValueError) as exc:
            raise AuthConfigError(f"cannot read {settings.service_keys_file}: {exc.__class__.__name__}") from None
        for service_id, values in _key_map(raw, str(settings.service_keys_file)).items():
            keys[service_id] = keys.get(service_id, ()) + values
    admin = tuple(t.get_secret_value() for t in settings.admin_tokens)
    viewer = tuple(t.get_secret_value() for t in settings.viewer_tokens)
    apps = tuple(t.get_secret_value() for t in settings.api_keys)
    if not all(admin + viewer + apps):
        raise AuthConfigError("operator tokens and app keys must not be empty")
    return Accepted(keys, admin, viewer, "settings", apps)


def outbound_identity(settings: FacadeSettings) -> tuple[str, str]:
    """Service id and key this process signs with: NPU_SERVICE_ID / NPU_SERVICE_KEY, else (only when
    nothing is configured) the generated local set; never an empty key."""
    key = settings.service_key.get_secret_value() if settings.service_key else ""
    if settings.service_id or key:
        if not (settings.service_id and key):
            raise AuthConfigError("NPU_SERVICE_ID and NPU_SERVICE_KEY must be set together")
        return settings.service_id, key
    path = credentials_path(settings)
    if not configured(settings) and path.exists():
        data = _read_generated(path)
        return data["service_id"], data["service_key"]
    raise AuthConfigError("no key to sign requests with: set NPU_SERVICE_ID and NPU_SERVICE_KEY "
                          "(on the facade's own machine, `npu-worker up` generates a local one)")
