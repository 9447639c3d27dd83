"""How far one Redis carries: K worker processes on one Redis, K = 1, 2, 4, 8, 16, 32. A benchmark, not a test.

Starts its own Redis (embedded, on a free port) and K workers whose only model is a stand-in with a fixed
latency (`standin`, `--latency-ms` per batch, one job per batch: a worker's capacity is exactly
1000 / latency jobs/s). The stand-in is registered by this script alone, in a registry file of its own
temporary state directory; it is never in the shipped registry. Caller processes (asyncio, the facade's
`AsyncDispatcher`) keep 2K single-text jobs in flight. Per K it prints jobs/s, the fraction of linear
(K x the one-worker rate), Redis's CPU seconds per 1000 jobs (`INFO cpu`), Redis commands per job
(`INFO stats`), the latency added to the stand-in's own, and where the CPU went (Redis, workers, callers,
from /proc), so Redis's own cost is told apart from the CPU the callers and workers compete for.
Then it projects, from Redis's cost per job, the jobs/s one Redis core carries and so the NPU nodes it
feeds at the bundled embedding model's rate (measured here on this machine's CPU, batch 32).

    .venv/bin/python -m scripts.scale [--ks 1,2,4,8,16,32] [--seconds 5] [--latency-ms 5] [--json scale.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from dispatcher.protocol import Keys
from npu_worker.redis_server import EmbeddedRedis
from scripts.harness import ROOT, SENTENCES, clean_env, cpu_seconds, machine_busy, markdown_table, stop_processes

MODEL = "standin"
DIM = 8
PREFIX = "scale"


# --- the stand-in worker (runs in the worker processes: `scale.py --worker`)


def run_worker() -> None:
    from dispatcher.settings import get_settings
    from worker.main import Worker
    from worker.pipelines import TextEmbeddingEngine

    latency_s = float(os.environ["SCALE_LATENCY_MS"]) / 1000

    class StandIn(TextEmbeddingEngine):
        """An embedding model that takes a fixed time per batch and no OpenVINO."""

        def __init__(self, spec: Any) -> None:  # no super(): nothing to compile
            self.spec, self.device = spec, "CPU"

        def count_tokens(self, texts: list[str]) -> list[int]:
            return [len(t.split()) for t in texts]

        def embed(self, texts: list[str]) -> np.ndarray:
            time.sleep(latency_s)
            return np.ones((len(texts), DIM), dtype=np.float32) / np.sqrt(DIM)

    class StandInWorker(Worker):
        def _load(self, name: str) -> None:
            self.served.add(name, StandIn(self.registry.get(name)))

    worker = StandInWorker(get_settings())
    worker.install_signal_handlers()
    worker.run()


# --- the callers (`scale.py --caller`): jobs answered within a wall-clock window, and their latencies


async def _callers(concurrency: int, window: tuple[float, float], out: Path) -> None:
    from dispatcher.client import AsyncDispatcher

    d = AsyncDispatcher()
    start, end = window
    latencies: list[float] = []
    errors = 0

    async def one(n: int) -> None:
        nonlocal errors
        i = 0
        while time.time() < end:
            sent = time.perf_counter()
            try:
                await d.embed([f"caller {os.getpid()} task {n} job {i}"], MODEL, allow_cloud=False, deadline_s=10)
            except Exception:
                errors += 1
                continue
            finally:
                i += 1
            if start <= time.time() < end:
                latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(one(n) for n in range(concurrency)))
    await d.aclose()
    out.write_text(json.dumps({"latencies": latencies, "errors": errors}))


# --- the conductor


def redis_counters(r: redis.Redis) -> tuple[float, int]:
    cpu, stats = r.info("cpu"), r.info("stats")
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"], stats["total_commands_processed"]


def measure_node_rate(seconds: float = 3.0) -> float:
    """The bundled embedding model, raw, batch 32, on this machine: sentences/s of one node."""
    from dispatcher.models import Registry
    from dispatcher.settings import Settings
    from worker.devices import parse_chain
    from worker.pipelines import TextEmbeddingEngine

    s = Settings()
    spec = Registry.load(s).get("all-minilm-l6-v2")
    embedder = TextEmbeddingEngine(spec, parse_chain(s.devices))
    sentences = SENTENCES.read_text().split("\n")[:32]
    embedder.embed(sentences)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        embedder.embed(sentences)
        done += len(sentences)
    return done / (time.perf_counter() - started)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="1,2,4,8,16,32")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured window per K")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--latency-ms", type=float, default=5.0)
    ap.add_argument("--caller-procs", type=int, default=2)
    ap.add_argument("--node-rate", type=float, default=None, help="sentences/s of one node (default: measured)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--caller", nargs=4, metavar=("CONC", "START", "END", "OUT"), help=argparse.SUPPRESS)
    return ap.parse_args()


def scale_env(workdir: Path, redis_url: str, latency_ms: float) -> dict[str, str]:
    """The workers' and callers' environment: the stand-in's registry alone, one job per batch."""
    (workdir / "models.toml").write_text(f'[models.{MODEL}]\ntask = "embedding"\npath = "standin"\ndim = {DIM}\n')
    return {**clean_env(), "REDIS_URL": redis_url, "NPU_KEY_PREFIX": PREFIX, "NPU_STATE_DIR": str(workdir),
            "NPU_MODELS_FILE": str(workdir / "models.toml"), "NPU_MODELS": f'["{MODEL}"]',
            "NPU_BATCH_MAX": "1", "NPU_MAX_QUEUE": "100000", "NPU_LOG_LEVEL": "WARNING",
            "SCALE_LATENCY_MS": str(latency_ms), "PYTHONPATH": str(ROOT)}


def grow_to(k: int, workers: list[subprocess.Popen[bytes]], env: dict[str, str], r: redis.Redis) -> None:
    """Start workers until there are K, and wait until K heartbeats are live."""
    while len(workers) < k:
        workers.append(subprocess.Popen([sys.executable, "-m", "scripts.scale", "--worker"], env=env, cwd=ROOT))
    live = Keys(PREFIX).live(MODEL)
    deadline = time.monotonic() + 120
    while r.zcount(live, time.time(), "+inf") < k:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {r.zcount(live, time.time(), '+inf')} of {k} workers live")
        time.sleep(0.2)


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker()
        return
    if args.caller:
        conc, start, end, out = args.caller
        asyncio.run(_callers(int(conc), (float(start), float(end)), Path(out)))
        return

    ks = [int(k) for k in args.ks.split(",")]
    node_rate = args.node_rate or measure_node_rate()
    workdir = Path(tempfile.mkdtemp(prefix="npu-scale-"))
    server = EmbeddedRedis(workdir / "redis", persist=False).start()
    env = scale_env(workdir, server.url, args.latency_ms)
    os.environ.update({k: v for k, v in env.items() if k.startswith("NPU_") or k == "REDIS_URL"})
    r = redis.Redis.from_url(server.url)
    workers: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    try:
        for k in ks:
            grow_to(k, workers, env, r)
            rows.append(run_k(k, args, env, r, workers, workdir))
            print(format_row(rows[-1], rows[0]), flush=True)
    finally:
        stop_processes(workers, timeout=15)
        server.stop()
    report(rows, node_rate, args)


def run_k(k: int, args: argparse.Namespace, env: dict[str, str], r: redis.Redis,
          workers: list[subprocess.Popen[bytes]], workdir: Path) -> dict[str, Any]:
    start = time.time() + args.warmup + 1.0  # the callers' start-up happens before the window
    end = start + args.seconds
    per_proc = max(1, (2 * k + args.caller_procs - 1) // args.caller_procs)  # 2 jobs in flight per worker
    outs = [workdir / f"callers-{k}-{i}.json" for i in range(args.caller_procs)]
    callers = [subprocess.Popen([sys.executable, "-m", "scripts.scale", "--caller", str(per_proc), str(start),
                                 str(end), str(out)], env=env, cwd=ROOT) for out in outs]
    time.sleep(max(0.0, start - time.time()))
    pids = {"workers": [p.pid for p in workers], "callers": [p.pid for p in callers]}
    redis_pid = [server_pid(r)]
    before = (redis_counters(r), cpu_seconds(redis_pid), cpu_seconds(pids["workers"]), cpu_seconds(pids["callers"]),
              machine_busy())
    time.sleep(max(0.0, end - time.time()))
    after = (redis_counters(r), cpu_seconds(redis_pid), cpu_seconds(pids["workers"]), cpu_seconds(pids["callers"]),
             machine_busy())
    for proc in callers:
        proc.wait(timeout=60)
    latencies: list[float] = []
    errors = 0
    for out in outs:
        data = json.loads(out.read_text())
        latencies += data["latencies"]
        errors += data["errors"]
    jobs = len(latencies)
    window = args.seconds
    redis_cpu = after[0][0] - before[0][0]
    commands = after[0][1] - before[0][1]
    machine = (after[4][0] - before[4][0]) / (after[4][1] - before[4][1])
    ms = sorted(x * 1000 - args.latency_ms for x in latencies)
    return {"k": k, "jobs": jobs, "errors": errors, "jobs_per_s": jobs / window,
            "redis_cpu_s_per_1000": 1000 * redis_cpu / max(jobs, 1), "commands_per_job": commands / max(jobs, 1),
            "added_p50_ms": statistics.median(ms) if ms else None,
            "added_p99_ms": float(np.percentile(ms, 99)) if ms else None,
            "cpu_share": {"machine_busy": round(machine, 3), "redis": round(redis_cpu / window, 3),
                          "workers": round((after[2] - before[2]) / window, 3),
                          "callers": round((after[3] - before[3]) / window, 3)},
            "in_flight": per_proc * args.caller_procs}


def server_pid(r: redis.Redis) -> int:
    return int(r.info("server")["process_id"])


def format_row(row: dict[str, Any], first: dict[str, Any]) -> str:
    linear = row["jobs_per_s"] / (row["k"] * first["jobs_per_s"] / first["k"])
    row["fraction_of_linear"] = linear
    c = row["cpu_share"]
    return (f"K={row['k']:>2}  {row['jobs_per_s']:7.0f} jobs/s  {linear:5.2f} of linear  "
            f"redis {row['redis_cpu_s_per_1000']:.3f} CPU s/1000 jobs  {row['commands_per_job']:.2f} cmd/job  "
            f"added p50 {row['added_p50_ms']:.2f} ms p99 {row['added_p99_ms']:.2f} ms  "
            f"CPU cores: redis {c['redis']:.2f} workers {c['workers']:.2f} callers {c['callers']:.2f} "
            f"(machine {c['machine_busy'] * 100:.0f}% busy)  errors {row['errors']}")


def report(rows: list[dict[str, Any]], node_rate: float, args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    header = ["K", "jobs/s", "of linear", "Redis CPU s / 1000 jobs", "Redis commands / job", "added p50 / p99 ms",
              f"CPU cores: Redis / workers / callers (machine busy, {cores} cores)"]
    lines = [[str(row["k"]), f"{row['jobs_per_s']:.0f}", f"{row['fraction_of_linear']:.2f}",
              f"{row['redis_cpu_s_per_1000']:.3f}", f"{row['commands_per_job']:.2f}",
              f"{row['added_p50_ms']:.2f} / {row['added_p99_ms']:.2f}",
              f"{row['cpu_share']['redis']:.2f} / {row['cpu_share']['workers']:.2f} / "
              f"{row['cpu_share']['callers']:.2f} ({row['cpu_share']['machine_busy'] * 100:.0f}%)"] for row in rows]
    print("\n" + markdown_table(header, lines))
    best = max(rows, key=lambda row: row["jobs_per_s"])
    stops = next((row for row in rows if row["fraction_of_linear"] < 0.8), None)
    # Redis's cost per job where it was busiest (its fixed costs, heartbeats and idle polls, spread thinnest).
    cost = best["redis_cpu_s_per_1000"] / 1000
    per_core = 1 / cost if cost > 0 else float("inf")
    print(f"\nscaling: best {best['jobs_per_s']:.0f} jobs/s at K={best['k']}; "
          + (f"below 0.8 of linear from K={stops['k']} (machine {stops['cpu_share']['machine_busy'] * 100:.0f}% "
             f"busy, Redis itself {stops['cpu_share']['redis']:.2f} of a core)" if stops else "linear throughout"))
    print(f"projection: Redis spends {cost * 1e6:.0f} us of CPU per job -> one Redis core carries about "
          f"{per_core:.0f} jobs/s; one node of the bundled model runs {node_rate:.0f} single-text jobs/s "
          f"(raw, batch 32, this CPU) -> about {per_core / node_rate:.0f} such nodes per Redis core")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "node_rate": node_rate, "redis_jobs_per_core": per_core,
                                         "nodes_per_core": per_core / node_rate}, indent=2))


if __name__ == "__main__":
    main()
