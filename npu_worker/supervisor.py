"""Keeps N worker processes running for `npu-worker up`, as rq's `WorkerPool` does for RQ workers.

A worker that dies is started again: at once if it had run a while; one that keeps dying young (a broken
model, a bad setting) after a growing pause instead of in a tight loop. A rolling restart replaces the
workers one at a time, each only once its successor is live, so capacity never drops below N.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

from dispatcher.protocol import Keys
from dispatcher.settings import Settings

WORK = [sys.executable, "-m", "npu_worker", "work"]


@dataclass(frozen=True)
class Event:
    """One thing the supervisor did, in order: `spawned`, `live`, `stopped` (with the exit code) or
    `gave_up` (a replacement that never came live). Tests and logs read the history, not the console."""

    kind: str
    pid: int
    code: int | None = None


class Supervisor(threading.Thread):
    POLL_S = 0.25
    READY_S = 300.0
    """Longest wait for a replacement to load its models during a rolling restart."""
    DRAIN_S = 120.0
    """Longest wait for a stopped worker to finish what it holds (generations included)."""
    STABLE_S = 10.0
    """A worker that lived this long got past loading its models: restart it without a pause."""
    MAX_PAUSE_S = 30.0

    def __init__(self, count: int, settings: Settings, command: list[str] | None = None,
                 env: Mapping[str, str] | None = None, say: Callable[[str], None] = print):
        super().__init__(name="supervisor", daemon=True)
        self.count = count
        self.settings = settings
        self.command = command or WORK
        self.env = dict(env) if env is not None else None
        self.say = say
        self.procs: list[subprocess.Popen[bytes]] = []
        self.history: list[Event] = []
        self._born: list[float] = []
        self._pause: list[float] = []
        self._due: list[float | None] = []
        self._replacing: int | None = None
        self._restart = threading.Event()
        self._restarted = threading.Event()
        self.stopping = threading.Event()

    # --- what `up` (and a test) calls

    def request_restart(self) -> None:
        """A rolling restart, done by the supervisor's own thread (SIGHUP calls this)."""
        self._restarted.clear()
        self._restart.set()

    def wait_restarted(self, timeout: float | None = None) -> bool:
        return self._restarted.wait(timeout)

    def stop(self) -> None:
        """Drain: SIGTERM every worker (it leaves routing and finishes what it holds), wait up to
        `DRAIN_S` for each, and kill only one that does not exit by then."""
        self.stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=self.POLL_S * 8)
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            self._reap(proc)

    # --- the supervisor's thread

    def run(self) -> None:
        self.procs = [self._spawn() for _ in range(self.count)]
        self._born = [time.monotonic()] * self.count
        self._pause = [0.0] * self.count
        self._due = [None] * self.count
        while not self.stopping.wait(self.POLL_S):
            if self._restart.is_set():
                self._restart.clear()
                self._rolling_restart()
                self._restarted.set()
            self._revive()

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, env=self.env)
        self.history.append(Event("spawned", proc.pid))
        return proc

    def _reap(self, proc: subprocess.Popen[bytes]) -> int:
        try:
            code = proc.wait(timeout=self.DRAIN_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if not any(e.kind == "stopped" and e.pid == proc.pid for e in self.history):
            self.history.append(Event("stopped", proc.pid, code))
        return code

    def _revive(self) -> None:
        """Start again each worker that died, except the one a rolling restart is replacing right now."""
        for i, proc in enumerate(self.procs):
            # Exit code 0 is a requested stop (Ctrl-C reaches the whole process group): not restarted.
            if i == self._replacing or proc.poll() in (None, 0) or self.stopping.is_set():
                continue
            now = time.monotonic()
            if self._due[i] is None:
                self.history.append(Event("stopped", proc.pid, proc.returncode))
                lived = now - self._born[i]
                self._pause[i] = 0.0 if lived >= self.STABLE_S else min(max(1.0, 2 * self._pause[i]),
                                                                       self.MAX_PAUSE_S)
                self._due[i] = now + self._pause[i]
                self.say(f"[yellow]worker {proc.pid} exited with {proc.returncode} after {lived:.0f}s; "
                         f"restarting in {self._pause[i]:.0f}s")
            if now >= (self._due[i] or 0.0):
                try:
                    self.procs[i] = self._spawn()
                except OSError as exc:
                    self.say(f"[red]could not start a worker: {exc}")
                    self._due[i] = None
                    continue
                self._born[i], self._due[i] = now, None

    def _rolling_restart(self) -> None:
        """One worker after the other: start its replacement, wait until it is live (models loaded, first
        heartbeat), then SIGTERM the old one, which leaves routing and drains. Capacity never drops below
        N, so steady traffic sees no error and no cloud fallback. A worker that dies meanwhile is started
        again as usual; the one being replaced is simply replaced."""
        self.say(f"rolling restart of {len(self.procs)} worker(s)")
        for i in range(len(self.procs)):
            if self.stopping.is_set():
                return
            self._replacing, old = i, self.procs[i]
            try:
                new = self._spawn()
                if not self._wait_live(new):
                    self.say(f"[red]replacement worker {new.pid} did not come up; keeping {old.pid}")
                    self.history.append(Event("gave_up", new.pid))
                    new.terminate()
                    self._reap(new)
                    continue
                self.procs[i], self._born[i], self._due[i] = new, time.monotonic(), None
            finally:
                self._replacing = None
            if old.poll() is None:
                old.terminate()
            code = self._reap(old)
            self.say(f"worker {old.pid} drained (exit {code}); {new.pid} serves in its place")
        self.say("rolling restart done")

    def _wait_live(self, proc: subprocess.Popen[bytes]) -> bool:
        r, keys = self.settings.redis(), Keys(self.settings.key_prefix)
        end = time.monotonic() + self.READY_S
        try:
            while time.monotonic() < end and proc.poll() is None and not self.stopping.is_set():
                try:
                    live = cast("list[bytes]", r.zrangebyscore(keys.workers, time.time(), "+inf"))
                    if any(f":{proc.pid}:" in w.decode() for w in live):
                        self.history.append(Event("live", proc.pid))
                        return True
                except Exception as exc:  # Redis away for a moment: keep waiting
                    self.say(f"[yellow]waiting for worker {proc.pid}: {exc}")
                self._revive()
                time.sleep(0.2)
            return False
        finally:
            r.close()
