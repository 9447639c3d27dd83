"""A generation whose worker dies (kill -9): its caller notices by the worker's expired heartbeat within
seconds, not after the idle timeout, and retries once or falls back (nothing streamed yet) or gets a
clear error (text already streamed)."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from dispatcher import Dispatcher, WorkerLostError
from dispatcher.settings import Settings
from tests.cloud_server import CloudServer
from tests.conftest import WorkerProcess

LLM = "smollm2-135m-instruct"
LONG = "Write a very long story about a lighthouse keeper, a storm and a ship, with many chapters."


def test_a_dead_generation_worker_costs_seconds_not_the_idle_timeout(isolated: Settings, cloud: CloudServer) -> None:
    s = isolated.model_copy(update={"cloud_base_url": cloud.base_url, "generation_idle_s": 60.0})
    d = Dispatcher(s)
    proc = WorkerProcess(s, models=[LLM])
    try:
        proc.wait_live()
        # Streaming: text already reached the caller, so it cannot be retried: a clear error.
        chunks = d.stream(LONG, LLM, max_tokens=1000)
        for _ in range(3):
            assert not next(chunks).done
        proc.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(WorkerLostError) as err:
            for _ in chunks:
                pass
        assert err.value.status == 503 and err.value.code == "worker_lost"
        assert time.monotonic() - killed < s.heartbeat_ttl_s + s.heartbeat_interval_s + 2

        # Not streaming: nothing reached the caller yet; no other worker lives, so the cloud answers.
        proc = WorkerProcess(s, models=[LLM])
        proc.wait_live()
        threading.Timer(1.0, proc.proc.send_signal, [signal.SIGKILL]).start()
        started = time.monotonic()
        result = d.generate(LONG, LLM, max_tokens=1000)
        assert result.source == "cloud" and result.fallback_reason == "worker_lost"
        assert time.monotonic() - started < 1 + s.heartbeat_ttl_s + s.heartbeat_interval_s + 2
    finally:
        proc.stop()
