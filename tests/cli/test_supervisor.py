"""The worker supervisor of `npu-worker up`, driven directly with real worker processes (as rq tests its
`WorkerPool`): restart order, drain on stop, a worker that dies during a rolling restart, a replacement
that never comes up."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from dispatcher.settings import Settings
from npu_worker.supervisor import Event, Supervisor
from tests.conftest import live_beats, worker_env

EMBED = "all-minilm-l6-v2"


@pytest.fixture
def supervise(isolated: Settings) -> Iterator[type[Supervisor]]:
    started: list[Supervisor] = []

    class Tracked(Supervisor):
        def __init__(self, count: int) -> None:  # type: ignore[override]
            super().__init__(count, isolated, env=worker_env(isolated, NPU_MODELS=f'["{EMBED}"]'),
                             say=lambda _: None)
            started.append(self)

    yield Tracked
    for s in started:
        s.stop()


def live_pids(settings: Settings, count: int, timeout: float = 180) -> set[int]:
    deadline = time.monotonic() + timeout
    while len(pids := {b.pid for b in live_beats(settings)}) != count:
        assert time.monotonic() < deadline, pids
        time.sleep(0.2)
    return pids


def at(history: list[Event], kind: str, pid: int) -> int:
    return next(i for i, e in enumerate(history) if e.kind == kind and e.pid == pid)


def test_rolling_restart_one_at_a_time_then_drain_on_stop(isolated: Settings,
                                                             supervise: type[Supervisor]) -> None:
    sup = supervise(2)
    sup.start()
    first = live_pids(isolated, 2)
    old = [p.pid for p in sup.procs]
    sup.request_restart()
    assert sup.wait_restarted(timeout=300)
    new = [p.pid for p in sup.procs]
    assert not set(new) & set(old) and live_pids(isolated, 2) == set(new), (first, new)
    h = sup.history
    for i in range(2):
        # the replacement is live before its predecessor is stopped, which drains and exits 0
        assert at(h, "spawned", new[i]) < at(h, "live", new[i]) < at(h, "stopped", old[i])
        assert h[at(h, "stopped", old[i])].code == 0
    # one at a time: the second replacement starts only once the first worker has drained
    assert at(h, "stopped", old[0]) < at(h, "spawned", new[1])
    sup.stop()
    assert [e.code for e in sup.history if e.kind == "stopped" and e.pid in new] == [0, 0]
    assert not live_beats(isolated)  # deregistered on the way out, not left to expire


def test_a_worker_killed_during_its_rolling_restart_is_replaced_once(isolated: Settings,
                                                                   supervise: type[Supervisor]) -> None:
    sup = supervise(1)
    sup.start()
    live_pids(isolated, 1)
    old = sup.procs[0].pid
    sup.request_restart()
    deadline = time.monotonic() + 30
    while sum(e.kind == "spawned" for e in sup.history) < 2:  # the replacement is loading
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(old, signal.SIGKILL)
    assert sup.wait_restarted(timeout=300)
    new = sup.procs[0].pid
    assert live_pids(isolated, 1) == {new} and new != old
    assert sup.history[at(sup.history, "stopped", old)].code == -signal.SIGKILL
    assert sum(e.kind == "spawned" for e in sup.history) == 2  # not also revived by the supervisor


def test_a_replacement_that_never_comes_up_keeps_the_old_worker(isolated: Settings,
                                                               supervise: type[Supervisor]) -> None:
    sup = supervise(1)
    sup.start()
    live_pids(isolated, 1)
    old = sup.procs[0]
    sup.command = [sys.executable, "-c", "raise SystemExit(3)"]  # a replacement that dies while loading
    sup.request_restart()
    assert sup.wait_restarted(timeout=60)
    gave_up = [e for e in sup.history if e.kind == "gave_up"]
    assert len(gave_up) == 1 and sup.procs[0] is old and old.poll() is None
    assert {b.pid for b in live_beats(isolated)} == {old.pid}
