"""What the benchmark and chaos scripts share: a stack of Redis and npu-worker processes, waits, CPU readings,
tables.

The scripts run as modules from the checkout's root (`.venv/bin/python -m scripts.bench`), so `scripts`,
`dispatcher`, `worker` and `npu_worker` import as packages, with no edits of `sys.path`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import redis

from dispatcher.protocol import Keys
from npu_worker.redis_server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = ROOT / "scripts" / "data" / "sentences.txt"
TICK = os.sysconf("SC_CLK_TCK")


def clean_env() -> dict[str, str]:
    """This process's environment without any NPU_* setting or REDIS_URL: a stack configured only by its script."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NPU_") and k != "REDIS_URL"}


class Stack:
    """An embedded Redis (or the one at `redis_url`) and the npu-worker processes started on it, all under a
    key prefix of their own, stopped and cleaned up together."""

    def __init__(self, workdir: Path, name: str, env: dict[str, str], redis_url: str | None = None,
                 persist: bool = False, token: str | None = None):
        self.persist = persist
        self.redis_server = None if redis_url else EmbeddedRedis(workdir / "redis", persist=persist).start()
        self.redis_url = redis_url or self.redis_server.url  # type: ignore[union-attr]
        self.prefix, self.port = f"{name}{os.getpid()}", free_port()
        self.keys = Keys(self.prefix)
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.env = {**env, "REDIS_URL": self.redis_url, "NPU_KEY_PREFIX": self.prefix, "PYTHONPATH": str(ROOT)}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, **popen: object) -> subprocess.Popen[bytes]:
        """`npu-worker ARGS` on this stack (`work`, `serve --port P`, `up ...`)."""
        proc = subprocess.Popen([sys.executable, "-m", "npu_worker", *args], env=self.env, cwd=ROOT,
                                **popen)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def stop_redis(self) -> None:
        assert self.redis_server is not None, "only an embedded Redis is stopped"
        self.redis_server.stop()

    def start_redis(self) -> None:
        """The embedded Redis again, on the same port and data directory."""
        assert self.redis_server is not None, "only an embedded Redis is started"
        self.redis_server = EmbeddedRedis(self.redis_server.directory, port=self.redis_server.port,
                                          persist=self.persist).start()

    def stop(self, timeout: float = 30) -> None:
        stop_processes(self.procs, timeout)
        if self.redis_server:
            self.redis_server.stop()
            return
        r = redis.Redis.from_url(self.redis_url)  # someone else's Redis: leave it as it was
        for key in r.scan_iter(match=f"*{self.prefix}*", count=1000):
            r.delete(key)


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """SIGTERM to each (a worker drains), then wait; one that outlives `timeout` is killed."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_healthy(url: str, headers: dict[str, str] | None = None, timeout: float = 180) -> None:
    """Until `GET /health` answers `"status": "healthy"` (a facade with a live worker, or a bare server)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            r = httpx.get(f"{url}/health", headers=headers, timeout=2)
            if r.status_code == 200 and r.json().get("status") == "healthy":
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not become healthy in {timeout:.0f}s")


def wait_quiet(pids: list[int], timeout: float = 180) -> None:
    """Until these processes use under 5% of a core for a second: a worker is healthy once its first model
    is served, and loading and warming up the others would otherwise run during the raw references."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        before = cpu_seconds(pids)
        time.sleep(1.0)
        if cpu_seconds(pids) - before < 0.05:
            return
    print(f"  (the stack was still busy after {timeout:.0f}s; measuring anyway)", flush=True)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far, from /proc (an exited one counts 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return total / TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICK, sum(values) / TICK


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB, from /proc; None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, as docs/benchmarks.md keeps the figures."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
