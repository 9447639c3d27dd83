"""The dispatch policy (fallback, retry, deadline), pinned once for both drivers.

Every test body runs twice, against `Dispatcher` and `AsyncDispatcher` (`caller` fixture), with real
Redis, real worker processes and the test cloud. `test_flow.py` drives the same policy by hand, with no
I/O and a fake clock, to pin what is hard to stage with processes (the budget across a retry).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dispatcher import AsyncDispatcher, Dispatcher, NPUUnavailableError, WorkerLostError
from dispatcher.protocol import Keys
from dispatcher.results import EmbedResult, GenerateResult, StreamChunk
from dispatcher.settings import Settings
from tests.cloud_server import CloudServer
from tests.conftest import WorkerProcess

MODEL = "all-minilm-l6-v2"
LLM = "smollm2-135m-instruct"
LONG = "Write a very long story about a lighthouse keeper, a storm and a ship, with many chapters."


class Caller:
    """One dispatcher behind a blocking surface: the sync driver as it is, or the async driver run on an
    event loop of its own, so one test body exercises both."""

    def __init__(self, kind: str, settings: Settings):
        self.kind = kind
        self.loop = asyncio.new_event_loop() if kind == "async" else None
        self.d: Dispatcher | AsyncDispatcher = Dispatcher(settings) if kind == "sync" else AsyncDispatcher(settings)

    def _run(self, awaitable: Any) -> Any:
        assert self.loop is not None
        return self.loop.run_until_complete(awaitable)

    def embed(self, texts: list[str], model: str, **options: Any) -> EmbedResult:
        result = self.d.embed(texts, model, **options)
        return result if self.loop is None else self._run(result)  # type: ignore[return-value]

    def generate(self, prompt: str, model: str, **options: Any) -> GenerateResult:
        result = self.d.generate(prompt, model, **options)
        return result if self.loop is None else self._run(result)  # type: ignore[return-value]

    def stream(self, prompt: str, model: str, **options: Any) -> Iterator[StreamChunk]:
        chunks = self.d.stream(prompt, model, **options)
        if self.loop is None:
            yield from chunks  # type: ignore[misc]
            return
        while True:
            try:
                yield self._run(anext(chunks))  # type: ignore[arg-type]
            except StopAsyncIteration:
                return

    def close(self) -> None:
        if isinstance(self.d, AsyncDispatcher):
            self._run(self.d.aclose())
            assert self.loop is not None
            self.loop.close()
        else:
            self.d.close()


@pytest.fixture(params=["sync", "async"])
def caller(request: pytest.FixtureRequest) -> Iterator[Callable[[Settings], Caller]]:
    made: list[Caller] = []

    def make(settings: Settings) -> Caller:
        made.append(Caller(request.param, settings))
        return made[-1]

    yield make
    for c in made:
        c.close()


def with_cloud(s: Settings, cloud: CloudServer, **more: Any) -> Settings:
    return s.model_copy(update={"cloud_base_url": cloud.base_url, "cloud_api_key": "sk-test", **more})


def test_no_live_worker_falls_back_to_the_cloud_without_waiting(caller: Callable[[Settings], Caller],
                                                                isolated: Settings, cloud: CloudServer) -> None:
    d = caller(with_cloud(isolated, cloud))
    started = time.monotonic()
    result = d.embed(["private? no, this one may go out"], MODEL, deadline_s=20)
    assert time.monotonic() - started < 2  # no worker: no waiting for the deadline
    assert result.source == "cloud" and result.fallback_reason == "no_worker" and result.vectors.shape == (1, 384)
    assert cloud.calls[-1]["auth"] == "Bearer sk-test" and cloud.calls[-1]["body"]["model"] == MODEL
    text = d.generate("hello", LLM)
    assert text.source == "cloud" and text.text == "cloud answer to: hello"
    assert isolated.redis().xlen(Keys(isolated.key_prefix).stream(MODEL)) == 0  # nothing left queued for nobody


def test_allow_cloud_false_keeps_data_on_premises(caller: Callable[[Settings], Caller], isolated: Settings,
                                                  cloud: CloudServer) -> None:
    d = caller(with_cloud(isolated, cloud))
    calls = len(cloud.calls)
    with pytest.raises(NPUUnavailableError) as err:
        d.embed(["secret"], MODEL, allow_cloud=False)
    assert err.value.status == 503 and len(cloud.calls) == calls


def test_no_worker_and_no_cloud_is_unavailable(caller: Callable[[Settings], Caller], isolated: Settings) -> None:
    with pytest.raises(NPUUnavailableError, match="no cloud fallback is configured"):
        caller(isolated).generate("hi", LLM)


def test_cloud_vectors_of_another_dimension_are_refused(caller: Callable[[Settings], Caller], isolated: Settings,
                                                        wrong_dim_cloud: CloudServer) -> None:
    with pytest.raises(NPUUnavailableError) as err:
        caller(with_cloud(isolated, wrong_dim_cloud)).embed(["x"], MODEL)
    assert err.value.extra["reason"] == "cloud_dimension_mismatch"


def test_a_slow_cloud_is_cut_at_the_end_of_the_budget(caller: Callable[[Settings], Caller], isolated: Settings) -> None:
    slow = CloudServer(dim=384, delay_s=5).start()
    try:
        d = caller(with_cloud(isolated, slow))
        started = time.monotonic()
        with pytest.raises(NPUUnavailableError, match="unreachable"):
            d.embed(["x"], MODEL, deadline_s=1.0)
        assert time.monotonic() - started < 1.5  # the cloud's own 30 s timeout did not apply
    finally:
        slow.stop()


def test_stalled_worker_hits_the_deadline_then_drops_the_late_job(caller: Callable[[Settings], Caller],
                                                                  isolated: Settings, cloud: CloudServer) -> None:
    """A worker that is alive (fresh heartbeat) but does not answer in time: the caller gets the cloud's
    answer within its budget (the wait for the worker ends early enough to leave the cloud its share),
    and the worker, once it runs again, drops the late job without running it."""
    proc = WorkerProcess(isolated, models=[MODEL])
    try:
        proc.wait_live()
        s = with_cloud(isolated, cloud)
        d = caller(s)
        assert d.embed(["warm"], MODEL).source == "npu"
        proc.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        result = d.embed(["too late for the worker"], MODEL, deadline_s=1.0)
        waited = time.monotonic() - started
        assert result.source == "cloud" and result.fallback_reason == "deadline"
        assert 1.0 * (1 - s.cloud_share) - 0.05 <= waited < 1.0, waited
        proc.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            beat = proc.beat()
            if beat and beat.counters.get("dropped_late"):
                break
            time.sleep(0.3)
        assert beat and beat.counters.get("dropped_late") == 1 and beat.counters.get("jobs") == 1
        assert isolated.redis().xlen(Keys(isolated.key_prefix).stream(MODEL)) == 0  # acked, not left behind
    finally:
        proc.stop()


def test_a_dead_generation_worker_costs_seconds_not_the_idle_timeout(caller: Callable[[Settings], Caller],
                                                                     isolated: Settings, cloud: CloudServer) -> None:
    """Its caller notices by the worker's expired heartbeat within seconds, and retries once or falls back
    (nothing streamed yet) or gets a clear error (text already streamed)."""
    s = with_cloud(isolated, cloud, generation_idle_s=60.0)
    d = caller(s)
    proc = WorkerProcess(s, models=[LLM])
    try:
        proc.wait_live()
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

        proc = WorkerProcess(s, models=[LLM])
        proc.wait_live()
        threading.Timer(1.0, proc.proc.send_signal, [signal.SIGKILL]).start()
        started = time.monotonic()
        result = d.generate(LONG, LLM, max_tokens=1000)
        assert result.source == "cloud" and result.fallback_reason == "worker_lost"
        assert time.monotonic() - started < 1 + s.heartbeat_ttl_s + s.heartbeat_interval_s + 2
    finally:
        proc.stop()
