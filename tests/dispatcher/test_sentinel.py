"""Sentinel settings: how the addresses are read, what the clients are built with, RQ's tools against
Sentinel, and the bulk lane's wait for a replica."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.sentinel import SentinelConnectionPool

from dispatcher import Dispatcher
from dispatcher.errors import NPUUnavailableError
from dispatcher.settings import Settings
from tests.conftest import ROOT
from tests.sentinel import MASTER, SentinelCluster

MODEL = "all-minilm-l6-v2"


def test_sentinel_addresses_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPU_REDIS_SENTINELS", " 10.0.0.1:26379, sentinel-b:26380,[::1]:26381 ")
    monkeypatch.setenv("NPU_REDIS_SENTINEL_MASTER", "prod")
    monkeypatch.setenv("NPU_REDIS_SENTINEL_PASSWORD", "s3cret")
    monkeypatch.setenv("REDIS_URL", "redis://:datapass@ignored:1/3")
    s = Settings()
    assert s.sentinel_addresses == [("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", 26381)]
    client = s.redis()
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "prod"
    assert pool.connection_kwargs["password"] == "datapass" and pool.connection_kwargs["db"] == 3
    assert pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["password"] == "s3cret"
    assert s.bulk_wait_replicas == 1  # under Sentinel a bulk job waits for a replica unless told otherwise
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize("bad", ["sentinel-a", "host:port", ":26379"])
def test_a_malformed_sentinel_address_is_refused(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("NPU_REDIS_SENTINELS", f"127.0.0.1:26379,{bad}")
    with pytest.raises(ValidationError, match="host:port"):
        Settings()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    with SentinelCluster(tmp_path_factory.mktemp("sentinel")) as c:
        yield c


def test_rq_info_finds_the_master_through_sentinel(cluster: SentinelCluster, isolated: Settings) -> None:
    s = isolated.model_copy(update={"redis_sentinels": cluster.sentinels.split(","), "redis_sentinel_master": MASTER})
    job = Dispatcher(s).submit_embed(["queued behind sentinel"], MODEL)  # no worker: it stays queued
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_") and k != "REDIS_URL"}
    env.update({"NPU_REDIS_SENTINELS": cluster.sentinels, "NPU_REDIS_SENTINEL_MASTER": MASTER,
                "PYTHONPATH": str(ROOT)})
    rq = Path(sys.executable).parent / "rq"
    out = subprocess.run([str(rq), "info", "-c", "dispatcher.rq_settings", "-S",
                          "dispatcher.protocol.MsgpackSerializer", "--only-queues"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{s.key_prefix}:{MODEL}" in out.stdout and job.get_status() == "queued"


def test_bulk_submit_refuses_visibly_when_no_replica_confirms(isolated: Settings) -> None:
    """The test Redis has no replica: with one required, the job is queued but the submitter is told."""
    s = isolated.model_copy(update={"bulk_replicas": 1, "bulk_replica_timeout_ms": 50})
    started = time.monotonic()
    with pytest.raises(NPUUnavailableError) as caught:
        Dispatcher(s).submit_embed(["unreplicated"], MODEL)
    assert time.monotonic() - started < 2
    assert caught.value.status == 503 and caught.value.extra["reason"] == "not_replicated"
    assert caught.value.extra["job_id"]
    assert Dispatcher(isolated).submit_embed(["no replica asked for"], MODEL).id  # default without Sentinel: 0
