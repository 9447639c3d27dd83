"""Rolling restarts: a worker stopped with SIGTERM leaves routing, finishes what it holds and exits 0;
`npu-worker up` restarts its workers one after the other on SIGHUP while traffic flows, with no error
and no cloud fallback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from dispatcher import Dispatcher
from dispatcher.errors import NPUError
from dispatcher.protocol import Keys
from dispatcher.settings import Settings
from npu_worker.redis_server import free_port
from tests.cloud_server import CloudServer
from tests.conftest import ROOT, WorkerProcess, live_beats

EMBED = "all-minilm-l6-v2"
GENERATE = "smollm2-135m-instruct"


def test_sigterm_drains_a_running_generation_and_exits_0(isolated: Settings) -> None:
    proc = WorkerProcess(isolated, models=[GENERATE])
    try:
        beat = proc.wait_live()
        d = Dispatcher(isolated)
        chunks = d.stream("Count from one to one hundred in words.", GENERATE, max_tokens=96, allow_cloud=False,
                          deadline_s=30)
        first = next(chunks)  # the generation runs on the worker now
        proc.proc.send_signal(signal.SIGTERM)
        r, keys = isolated.redis(), Keys(isolated.key_prefix)
        deadline = time.monotonic() + 5
        while r.zscore(keys.live(GENERATE), beat.worker_id) is not None:  # out of routing at once
            assert time.monotonic() < deadline, "the stopping worker stayed in routing"
            time.sleep(0.05)
        assert proc.proc.poll() is None, "the worker exited before finishing its generation"
        rest = list(chunks)
        result = rest[-1].result
        assert result is not None and result.source == "npu" and result.completion_tokens > 10
        assert first.delta and not first.done
        assert proc.proc.wait(timeout=30) == 0
        assert not r.exists(keys.worker(beat.worker_id))  # deregistered, not left to expire
        assert r.zscore(keys.workers, beat.worker_id) is None
    finally:
        proc.stop()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _load(s: Settings, stop: threading.Event, outcomes: Counter[str], n: int) -> None:
    d = Dispatcher(s)
    i = 0
    while not stop.is_set():
        try:
            result = d.embed([f"steady load {n} {i}"], EMBED, deadline_s=10)
            outcomes[result.source if result.source == "npu" else f"cloud {result.fallback_reason}"] += 1
        except NPUError as exc:
            outcomes[f"{exc.status} {exc.code}"] += 1
        except Exception as exc:
            outcomes[type(exc).__name__] += 1
        i += 1
        time.sleep(0.01)
    d.close()


def test_up_restarts_its_workers_on_sighup_without_errors(isolated: Settings, cloud: CloudServer,
                                                            tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "models").symlink_to(isolated.models_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_") and k != "REDIS_URL"}
    env.update({"REDIS_URL": isolated.redis_address, "NPU_KEY_PREFIX": isolated.key_prefix,
                "NPU_NODE_ID": isolated.node_id, "NPU_STATE_DIR": str(state), "NPU_LOG_LEVEL": "WARNING",
                "NPU_MODELS": f'["{EMBED}"]', "PYTHONPATH": str(ROOT)})
    s = isolated.model_copy(update={"cloud_base_url": cloud.base_url})
    log = tmp_path / "up.log"
    with log.open("w") as out:
        up = subprocess.Popen([sys.executable, "-m", "npu_worker", "up", "--port", str(free_port()), "--workers", "2"],
                              env=env, cwd=ROOT, start_new_session=True, stdin=subprocess.DEVNULL, stderr=out)
    stop, outcomes = threading.Event(), Counter[str]()
    threads = [threading.Thread(target=_load, args=(s, stop, outcomes, n)) for n in range(4)]
    try:
        deadline = time.monotonic() + 120
        while len(first := {b.pid for b in live_beats(isolated)}) < 2:
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        for t in threads:
            t.start()
        time.sleep(2)
        up.send_signal(signal.SIGHUP)
        # Done when two new workers are live and both old ones have exited (the order and the exit codes
        # are the supervisor's own tests, tests/cli/test_supervisor.py).
        while len(after := {b.pid for b in live_beats(isolated)}) != 2 or after & first or any(map(_exists, first)):
            assert up.poll() is None and time.monotonic() < deadline + 120, log.read_text()
            time.sleep(0.2)
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(timeout=20)
        print(f"\nsteady load through a rolling restart: {dict(outcomes)}")
        assert set(outcomes) == {"npu"}, outcomes  # no error, no cloud fallback
        assert outcomes["npu"] > 200
    finally:
        stop.set()
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
