"""Settings for RQ's own command-line tools (`rq info -c dispatcher.rq_settings`), read from the same
environment as every other process: the Sentinel deployment when `NPU_REDIS_SENTINELS` is set (RQ
asks the sentinels for the master), else the Redis `RedisSettings.redis_address` names."""

from __future__ import annotations

from typing import Any

from .settings import RedisSettings

_settings = RedisSettings()

if _settings.redis_sentinels:
    _data: dict[str, Any] = _settings._data_options()
    SENTINEL: dict[str, Any] = {
        "INSTANCES": _settings.sentinel_addresses,
        "MASTER_NAME": _settings.redis_sentinel_master,
        "DB": _data.get("db", 0),
        "USERNAME": _data.get("username"),
        "PASSWORD": _data.get("password"),
        "SOCKET_TIMEOUT": 10,
        "SENTINEL_KWARGS": _settings._sentinel_options(),
    }
else:
    REDIS_URL = _settings.redis_address
