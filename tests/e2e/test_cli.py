"""`npu-worker` without tracebacks: expected failures are one line and a non-zero exit; help and status read well."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.settings import Settings
from tests.conftest import ROOT, SERVICE_ID, SERVICE_KEY, WorkerProcess, worker_env


def cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "npu_worker", *args], env={**worker_env(settings), **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def one_line_failure(out: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: ") and words in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_version_and_help_without_type_tags(isolated: Settings) -> None:
    out = cli(isolated, "--version")
    assert out.returncode == 0 and out.stdout.startswith("npu-worker ")
    for command in ("up", "serve", "work", "status", "prepare-models", "export", "call"):
        text = cli(isolated, command, "--help", COLUMNS="80").stdout
        assert "Usage" in text and "<bool>" not in text and "BOOLEAN" not in text and "--no-" not in text, text


def test_unknown_model_bad_url_and_unreachable_redis(isolated: Settings) -> None:
    one_line_failure(cli(isolated, "work", "--model", "nope"), 2, "unknown model 'nope'")
    one_line_failure(cli(isolated, "status", REDIS_URL="foo://x"), 2, "bad REDIS_URL")
    for command in ("status", "work"):
        one_line_failure(cli(isolated, command, REDIS_URL="redis://127.0.0.1:1/0"), 1, "cannot reach Redis")


def test_busy_port(isolated: Settings) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for command in ("serve", "up"):
            one_line_failure(cli(isolated, command, "--port", port, "--workers", "0") if command == "up"
                             else cli(isolated, command, "--port", port), 1, f"cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize("columns", [80, 200])
def test_status_fits_its_terminal(settings: Settings, worker: WorkerProcess, columns: int) -> None:
    out = cli(settings, "status", COLUMNS=str(columns))
    assert out.returncode == 0, out.stderr
    assert settings.node_id in out.stdout and "all-minilm-l6-v2 (CPU, text-embedding)" in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= columns
    if columns == 80:
        assert "worker(s) on cpu" in out.stdout and "queued" in out.stdout


def test_alive_finds_a_workers_own_heartbeat(settings: Settings, worker: WorkerProcess) -> None:
    out = cli(settings, "alive", "--pid", str(worker.proc.pid))
    assert out.returncode == 0 and "alive" in out.stdout, out.stderr
    one_line_failure(cli(settings, "alive", "--pid", "1"), 1, "no live heartbeat from worker pid 1")


def test_without_a_running_stack_nothing_guesses_a_redis_or_a_facade(isolated: Settings, tmp_path: Path) -> None:
    """No REDIS_URL and a state directory without a running `up`: say so and fail, never use whatever
    listens on localhost:6379 or :8081."""
    env = {k: v for k, v in worker_env(isolated, NPU_STATE_DIR=str(tmp_path)).items() if k != "REDIS_URL"}
    for command in ("status", "alive", "work"):
        one_line_failure(subprocess.run([sys.executable, "-m", "npu_worker", command], env=env, cwd=ROOT,
                                        capture_output=True, text=True, timeout=120), 1, "no Redis")
    signing = {"NPU_SERVICE_ID": SERVICE_ID, "NPU_SERVICE_KEY": SERVICE_KEY}
    call = [sys.executable, "-m", "npu_worker", "call", "GET", "/health"]
    one_line_failure(subprocess.run(call, env={**env, **signing}, cwd=ROOT, capture_output=True, text=True,
                                    timeout=120), 1, "no facade")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    # a facade that is not there is not bad input: exit 1, one `error:` line
    one_line_failure(subprocess.run([*call, "--url", url], env={**env, **signing}, cwd=ROOT, capture_output=True,
                                    text=True, timeout=120), 1, url)
