"""Fair share between apps, measured: app B sends one single-text request at a time while app A floods.

Starts a stack (an embedded Redis, one worker, the facade) with two app keys, A's and B's, and runs:

    B solo            B's latency alone (p50/p99), and one 32-text request's (a batch's inference)
    A solo / A + B    for each of A's floods, A's throughput alone, then with B's requests alongside:
      http-256        256 single-text HTTP requests in flight
      http-8x32       8 HTTP requests of 32 texts in flight
      backend-2000    2,000 single-text jobs from a Python backend through the AsyncDispatcher

and prints B's p50/p99 under each flood against its target (2x its solo p50 plus a batch's time) and A's
throughput with B against A's alone minus B's share (target >= 0.90). B runs in a process of its own, so
the load generator's CPU does not weigh on its latencies more than the machine's load does. Not a test:
it asserts nothing, it reports; figures go to docs/benchmarks.md.

    .venv/bin/python -m scripts.fairness [--seconds 10] [--json fairness.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from dispatcher.settings import Settings
from scripts.harness import SENTENCES, Stack, markdown_table, wait_quiet

MODEL = "all-minilm-l6-v2"
KEY_A, KEY_B, ADMIN = "fairness-app-a-key", "fairness-app-b-key", "fairness-admin-token"
ERRORS: list[str] = []
"""A's requests that failed (reported, not retried)."""


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def stack(workdir: Path) -> Stack:
    env = {**os.environ, "NPU_NODE_ID": "fair", "NPU_LOG_LEVEL": "WARNING", "NPU_DEADLINE_S": "120",
           "NPU_ADMIN_TOKENS": json.dumps([ADMIN]), "NPU_MAX_QUEUE": "100000",
           "NPU_APPS": json.dumps({"a": {"keys": [KEY_A]}, "b": {"keys": [KEY_B]}}),
           "NPU_API_KEYS": json.dumps([KEY_A, KEY_B])}  # what a release without apps reads
    s = Stack(workdir, "fair", env, token=ADMIN)
    s.start("work", "--model", MODEL)
    s.start("serve", "--port", str(s.port))
    wait_serving(s.url, s.headers, timeout=180)
    wait_quiet([p.pid for p in s.procs])
    return s


def wait_serving(url: str, headers: dict[str, str], timeout: float) -> None:
    """Until the facade reports a live worker with the model (`/health` says degraded: the stack serves
    one model of the registry's two)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            if MODEL in httpx.get(f"{url}/health", headers=headers, timeout=2).json().get("loaded_models", []):
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not serve {MODEL} in {timeout:.0f}s")


# --- B: one request at a time, in a process of its own


def _b_loop(url: str, texts: list[str], start_at: float, stop_at: float, stop: Any, out: Any) -> None:
    latencies: list[float] = []
    time.sleep(max(0.0, start_at - time.time()))
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY_B}"}, timeout=120) as client:
        i = 0
        while time.time() < stop_at and not stop.is_set():
            started = time.perf_counter()
            client.post("/embeddings", json={"texts": [texts[i % len(texts)]], "model": MODEL}).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
            i += 1
    out.put(latencies)


class B:
    """B's requests from `start_at` until `stop_at` (wall clock), in a child process."""

    def __init__(self, url: str, texts: list[str], start_at: float, stop_at: float):
        self.out: Any = multiprocessing.Queue()
        self.stop = multiprocessing.Event()
        self.proc = multiprocessing.Process(target=_b_loop, args=(url, texts, start_at, stop_at, self.stop, self.out))
        self.proc.start()

    def latencies(self) -> list[float]:
        """Stops B now if it still runs, and returns its latencies."""
        self.stop.set()
        got: list[float] = self.out.get(timeout=300)
        self.proc.join()
        return got


# --- A's floods: each returns the texts A had answered per second


async def http_flood(url: str, texts: list[str], in_flight: int, per_request: int, warm: float,
                     seconds: float) -> float:
    """A's texts answered per second, counted after `warm` seconds (every connection open, queues full)."""
    limits = httpx.Limits(max_connections=in_flight + 8, max_keepalive_connections=in_flight + 8)
    done: list[float] = []
    t0 = time.time()
    end = t0 + warm + seconds
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=300,
                                 limits=limits) as client:
        async def caller(n: int) -> None:
            i = n
            while time.time() < end:
                batch = [texts[(i + k) % len(texts)] for k in range(per_request)]
                i += per_request
                try:
                    (await client.post("/embeddings", json={"texts": batch, "model": MODEL})).raise_for_status()
                except httpx.HTTPError as exc:  # counted, not fatal: the machine is shared and may drop one
                    ERRORS.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                done.append(time.time())

        await asyncio.gather(*[caller(n * 7) for n in range(in_flight)])
    return sum(t0 + warm <= t <= end for t in done) * per_request / seconds


@contextlib.contextmanager
def backend_app(name: str) -> Iterator[None]:
    """The backend's calls belong to app `name` (a release without apps: no app)."""
    try:
        from dispatcher.apps import as_app
    except ImportError:
        yield
        return
    with as_app(name):
        yield


async def backend_flood(settings: Settings, texts: list[str], jobs: int) -> tuple[float, float]:
    """(texts/s, seconds) of `jobs` single-text jobs sent at once through one AsyncDispatcher."""
    from dispatcher import AsyncDispatcher

    d = AsyncDispatcher(settings)
    try:
        await d.embed([texts[0]], MODEL)
        with backend_app("a-backend"):
            started = time.perf_counter()
            await asyncio.gather(*[d.embed([texts[i % len(texts)]], MODEL) for i in range(jobs)])
            took = time.perf_counter() - started
    finally:
        await d.aclose()
    return jobs / took, took


class Depth:
    """Jobs waiting in Redis for the model (every stream of it, shared, routed, per app), sampled every 0.1 s
    while a flood runs: says where A's requests wait (in Redis, or before it, in the facade)."""

    def __init__(self, s: Stack):
        import redis as redis_

        self.redis, self.pattern = redis_.Redis.from_url(s.redis_url), f"{s.prefix}:stream:{MODEL}*"
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Depth:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            keys = list(self.redis.scan_iter(match=self.pattern, count=1000))
            self.samples.append(sum(self.redis.xlen(k) for k in keys))

    def summary(self) -> dict[str, float]:
        xs = self.samples or [0]
        return {"depth_mean": statistics.mean(xs), "depth_max": max(xs)}


# --- the run


def b_solo(url: str, texts: list[str], seconds: float) -> list[float]:
    b = B(url, texts, time.time(), time.time() + seconds)
    time.sleep(seconds)
    return b.latencies()


def batch_ms(url: str, texts: list[str]) -> float:
    out = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY_B}"}, timeout=60) as client:
        for _ in range(6):
            started = time.perf_counter()
            client.post("/embeddings", json={"texts": texts[:32], "model": MODEL}).raise_for_status()
            out.append((time.perf_counter() - started) * 1000)
    return statistics.median(out[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--backend-jobs", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", action="append", default=[], help="run only these floods (http-256, "
                        "http-8x32, backend-2000)")
    args = parser.parse_args()
    texts = [t for t in SENTENCES.read_text().splitlines() if t.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        s = stack(Path(tmp))
        try:
            results = run(s, texts, args.seconds, args.backend_jobs, args.only)
        finally:
            s.stop()
    print(report(results))
    if ERRORS:
        print(f"{len(ERRORS)} of A's requests failed, e.g. {ERRORS[0]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def run(s: Stack, texts: list[str], seconds: float, backend_jobs: int, only: list[str]) -> dict[str, Any]:
    settings = Settings(redis_url=s.redis_url, key_prefix=s.prefix, deadline_s=120, max_queue=100000)
    b_solo(s.url, texts, 2)  # warm-up
    solo = b_solo(s.url, texts, seconds)
    one_batch = batch_ms(s.url, texts)
    results: dict[str, Any] = {"b_solo_p50": pct(solo, 50), "b_solo_p99": pct(solo, 99), "b_solo_n": len(solo),
                               "batch_ms": one_batch, "floods": {}}
    floods = {name: flood for name, flood in {"http-256": (256, 1), "http-8x32": (8, 32)}.items()
              if not only or name in only}
    warm = 4.0
    for name, (in_flight, per) in floods.items():
        alone = asyncio.run(http_flood(s.url, texts, in_flight, per, warm, seconds))
        b = B(s.url, texts, time.time() + warm, time.time() + warm + seconds)
        with Depth(s) as depth:
            with_b = asyncio.run(http_flood(s.url, texts, in_flight, per, warm, seconds))
        lat = b.latencies()
        results["floods"][name] = {"a_alone": alone, "a_with_b": with_b, "b_p50": pct(lat, 50),
                                   "b_p99": pct(lat, 99), "b_n": len(lat), "b_rate": len(lat) / seconds,
                                   **depth.summary()}
        print(name, results["floods"][name], flush=True)
    if only and "backend-2000" not in only:
        return results
    alone, _ = asyncio.run(backend_flood(settings, texts, backend_jobs))
    b = B(s.url, texts, time.time(), time.time() + 3600)
    time.sleep(1)
    with Depth(s) as depth:
        with_b, took = asyncio.run(backend_flood(settings, texts, backend_jobs))
    lat = b.latencies()  # B stops with the flood
    results["floods"]["backend-2000"] = {"a_alone": alone, "a_with_b": with_b, "b_p50": pct(lat, 50),
                                         "b_p99": pct(lat, 99), "b_n": len(lat), "b_rate": len(lat) / took,
                                         **depth.summary()}
    print("backend-2000", results["floods"]["backend-2000"], flush=True)
    return results


def report(results: dict[str, Any]) -> str:
    target = 2 * results["b_solo_p50"] + results["batch_ms"]
    rows = [["B alone", f"{results['b_solo_p50']:.1f}", f"{results['b_solo_p99']:.1f}", "", "", "", "", ""]]
    for name, f in results["floods"].items():
        share = f["a_alone"] - f["b_rate"]  # B's single texts per second
        ratio = f["a_with_b"] / share if share > 0 else float("nan")
        rows.append([f"A {name}", f"{f['b_p50']:.1f}", f"{f['b_p99']:.1f}",
                     "yes" if f["b_p50"] <= target else "no", f"{f['a_alone']:.0f}", f"{f['a_with_b']:.0f}",
                     f"{ratio:.2f}", f"{f.get('depth_mean', 0):.0f} / {f.get('depth_max', 0)}"])
    head = (f"B's target: p50 <= 2 x {results['b_solo_p50']:.1f} + one batch {results['batch_ms']:.1f} = "
            f"{target:.1f} ms; A's: with B >= 0.90 of (alone - B's rate)\n")
    return head + markdown_table(["run", "B p50 ms", "B p99 ms", "B on target", "A alone texts/s",
                                  "A with B texts/s", "A with B / (alone - B)", "jobs in Redis mean/max"], rows)


if __name__ == "__main__":
    main()
