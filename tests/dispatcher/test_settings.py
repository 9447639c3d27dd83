"""Settings by role: each role parses only its own variables, under the names they always had."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dispatcher import Dispatcher
from dispatcher.settings import CallerSettings, FacadeSettings, RedisSettings, Settings, WorkerSettings


def test_a_backend_that_only_enqueues_parses_no_facade_or_worker_setting(
        monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("NPU_SERVICE_KEYS", "{not json")  # the facade's
    monkeypatch.setenv("NPU_MAX_CONCURRENT", "0")  # the worker's, out of range
    with pytest.raises(ValidationError):
        Settings()
    dispatcher = Dispatcher()  # reads CallerSettings from the environment, as `dispatcher.embed` does
    try:
        assert type(dispatcher.settings) is CallerSettings
        assert dispatcher.redis.ping()
    finally:
        dispatcher.close()


@pytest.mark.parametrize(("variable", "value", "role", "field", "expected"), [
    ("REDIS_URL", "redis://127.0.0.1:6390/2", RedisSettings, "redis_url", "redis://127.0.0.1:6390/2"),
    ("NPU_KEY_PREFIX", "other", RedisSettings, "key_prefix", "other"),
    ("NPU_DEADLINE_S", "7", CallerSettings, "deadline_s", 7.0),
    ("NPU_MAX_NEW_TOKENS", "99", CallerSettings, "max_new_tokens", 99),
    ("NPU_MAX_NEW_TOKENS", "99", WorkerSettings, "max_new_tokens", 99),
    ("NPU_BATCH_WINDOW_MS", "3", WorkerSettings, "batch_window_ms", 3.0),
    ("NPU_NODE_ID", "", WorkerSettings, "node_id", WorkerSettings().node_id),
    ("NPU_AUTH_HOSTS", "a:1, b", FacadeSettings, "auth_hosts", ["a:1", "b"]),
    ("NPU_MAX_QUEUE", "5", FacadeSettings, "max_queue", 5),
    ("NPU_WORKERS", "3", Settings, "workers", 3),
])
def test_each_role_reads_its_variables_under_their_names(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str, role: type[RedisSettings], field: str,
        expected: object) -> None:
    monkeypatch.setenv(variable, value)
    assert getattr(role(), field) == expected
    assert getattr(Settings(), field) == expected  # the all-roles class the CLI and older backends use


def test_settings_is_every_role_at_once() -> None:
    s = Settings()
    assert all(isinstance(s, role) for role in (RedisSettings, CallerSettings, WorkerSettings, FacadeSettings))
    roles = set(CallerSettings.model_fields) | set(WorkerSettings.model_fields) | set(FacadeSettings.model_fields)
    assert set(Settings.model_fields) - roles == {"workers", "api_workers", "redis_maxmemory_mb"}
    assert not {"service_keys", "auth_hosts", "node_id", "max_concurrent"} & set(CallerSettings.model_fields)
