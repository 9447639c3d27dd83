"""Chaos run: load through the facade while workers are killed (kill -9) and Redis stops for a while.

Starts its own stack on 127.0.0.1 (a redis-server on a free port, `npu-worker up --workers N`, a local
OpenAI-compatible "cloud"), drives concurrent embeddings and a few generations through the facade (plus
bulk RQ jobs when Redis persists), kill -9s a worker `--kills` times (the supervisor of `up` must start
a new one), stops Redis for `--outage` seconds and starts it again on the same port. Then it reports
requests sent, answered by npu / by the cloud, errors by code, lost (no HTTP answer at all) and hung
(no answer within the deadline + margin), with recovery times, and exits 1 if any was lost or hung (or a
bulk job vanished, or a process it did not kill exited).

    .venv/bin/python -m scripts.chaos                  # about a minute and a half
    .venv/bin/python -m scripts.chaos --soak           # 10 minutes; reports each process's RSS growth
    .venv/bin/python -m scripts.chaos --soak-minutes 30  # RSS from minute 5 to 30 must grow < 5% (exit 1 if not)
    .venv/bin/python -m scripts.chaos --no-persist     # Redis comes back empty (no AOF)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
import redis.asyncio as aredis

from dispatcher.protocol import EMBED_TASK, Heartbeat, MsgpackSerializer, unpack
from dispatcher.settings import Settings
from npu_worker.redis_server import EmbeddedRedis, redacted
from scripts.cloud_server import CloudServer
from scripts.harness import Stack, clean_env, rss_mb, wait_healthy

TOKEN = f"chaos-{uuid.uuid4().hex}"
"""An operator token for this run's facade (the load goes through the facade's auth like any caller's)."""
AUTH = {"Authorization": f"Bearer {TOKEN}"}

EMBED, LLM = "all-minilm-l6-v2", "smollm2-135m-instruct"


@dataclass
class Outcome:
    id: str
    kind: str
    allow_cloud: bool
    sent: float
    latency: float | None = None
    status: int | None = None
    source: str | None = None
    error: str | None = None
    """Error code of a refused or failed request; `transport:<name>` when no HTTP answer came."""


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    outage: dict[str, Any] = field(default_factory=dict)
    bulk: Counter[str] = field(default_factory=Counter)
    rss: list[dict[str, Any]] = field(default_factory=list)
    workers_seen: set[int] = field(default_factory=set)
    unexpected_exits: list[int] = field(default_factory=list)
    """Worker processes that ended without being killed here, plus `up` itself if it ended."""


class ChaosStack(Stack):
    """Redis + `npu-worker up` (facade, supervised workers) + the local cloud, all on loopback."""

    def __init__(self, workdir: Path, workers: int, persist: bool, deadline_s: float):
        self.cloud = CloudServer(dim=384).start()
        state = workdir / "state"
        state.mkdir()
        (state / "models").symlink_to(Settings().models_dir)  # prepared once per machine
        env = {**clean_env(), "NPU_STATE_DIR": str(state), "NPU_CLOUD_BASE_URL": self.cloud.base_url,
               "NPU_DEADLINE_S": str(deadline_s), "NPU_LOG_LEVEL": "WARNING", "NPU_ADMIN_TOKENS": json.dumps([TOKEN])}
        super().__init__(workdir, "chaos", env, persist=persist, token=TOKEN)
        self.workers = workers
        self.settings = Settings(redis_url=self.redis_url, key_prefix=self.prefix, deadline_s=deadline_s)
        self.up = self.start("up", "--port", str(self.port), "--workers", str(workers), start_new_session=True,
                             stdin=subprocess.DEVNULL)

    @property
    def embedded(self) -> EmbeddedRedis:
        assert self.redis_server is not None, "a chaos run stops and starts its own Redis"
        return self.redis_server

    def worker_pids(self) -> list[int]:
        import psutil

        pids = []
        try:
            for child in psutil.Process(self.up.pid).children():
                try:
                    if child.status() != psutil.STATUS_ZOMBIE and "work" in child.cmdline():
                        pids.append(child.pid)
                except psutil.Error:  # exited meanwhile
                    continue
        except psutil.Error:
            return []
        return sorted(pids)

    async def live_pids(self, r: aredis.Redis) -> set[int]:
        try:
            ids = await r.zrangebyscore(self.keys.workers, time.time(), "+inf")
            raws = await r.mget([self.keys.worker(i.decode()) for i in ids]) if ids else []
        except redis.RedisError:
            return set()
        return {Heartbeat.model_validate(unpack(raw)).pid for raw in raws if raw}

    def close(self) -> None:
        if self.up.poll() is None:
            self.up.send_signal(signal.SIGTERM)
            try:
                self.up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.up.pid, signal.SIGKILL)
        self.stop(timeout=5)
        self.cloud.stop()


# --- load


async def one_request(client: httpx.AsyncClient, report: Report, kind: str, allow_cloud: bool, n: int,
                      timeout: float) -> None:
    out = Outcome(uuid.uuid4().hex[:12], kind, allow_cloud, time.monotonic())
    report.outcomes.append(out)  # in flight until its latency is set
    headers = {"X-Request-ID": out.id}
    try:
        if kind == "embed":
            texts = [f"chaos request {n} about topic {i} and number {n % 97}" for i in range(1 + n % 4)]
            r = await client.post("/embeddings", json={"texts": texts, "model": EMBED, "allow_cloud": allow_cloud},
                                  headers=headers, timeout=timeout)
            body = r.json()
        elif kind == "generate":
            r = await client.post("/inference", json={"prompt": f"Name a colour, number {n}.", "model": LLM,
                                                      "max_tokens": 12, "allow_cloud": allow_cloud},
                                  headers=headers, timeout=timeout)
            body = r.json()
        else:  # a streamed generation: the last event says how it ended
            body = {}
            async with client.stream("POST", "/inference", json={
                    "prompt": f"Count to five, take {n}.", "model": LLM, "max_tokens": 16, "stream": True,
                    "allow_cloud": allow_cloud}, headers=headers, timeout=timeout) as r:
                if r.status_code != 200:
                    body = orjson.loads(await r.aread())
                else:
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            body = orjson.loads(line[6:])
        out.status = r.status_code if "error" not in body else body.get("status", r.status_code)
        out.source, out.error = body.get("source"), body.get("error")
    except httpx.TimeoutException:
        out.error = "transport:timeout"
    except (httpx.HTTPError, ValueError) as exc:
        out.error = f"transport:{type(exc).__name__}"
    out.latency = time.monotonic() - out.sent


async def load_loop(client: httpx.AsyncClient, kind: str, report: Report, stop: asyncio.Event, timeout: float,
                    pause_s: float) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        await one_request(client, report, kind, random.random() < 0.75, n, timeout)
        await asyncio.sleep(pause_s)


BULK_RESULT_TTL_S = 300
"""Results are checked within seconds of finishing, then may expire: a soak shows Redis's steady state."""


async def bulk_loop(stack: ChaosStack, report: Report, stop: asyncio.Event, pending: set[str]) -> None:
    """A backend enqueuing bulk jobs with plain RQ; each must end finished or failed, never vanish."""
    from rq import Queue

    r = redis.Redis.from_url(stack.embedded.url, socket_connect_timeout=0.5, socket_timeout=2)
    queue = Queue(stack.keys.queue(EMBED), connection=r, serializer=MsgpackSerializer)
    n = 0
    while not stop.is_set():
        n += 1
        try:
            job = await asyncio.to_thread(queue.enqueue, EMBED_TASK, kwargs={
                "texts": [f"bulk document {n} part {i}" for i in range(4)], "model": EMBED},
                result_ttl=BULK_RESULT_TTL_S)
            pending.add(job.id)
            report.bulk["submitted"] += 1
            if n % 4 == 0:
                await asyncio.to_thread(check_bulk, r, report, pending)
        except redis.RedisError:
            report.bulk["refused (redis down)"] += 1
        await asyncio.sleep(0.5)


def check_bulk(r: redis.Redis, report: Report, pending: set[str]) -> None:
    """Count the jobs that ended; the others stay pending."""
    from rq.job import Job, JobStatus

    ids = sorted(pending)
    for job_id, job in zip(ids, Job.fetch_many(ids, connection=r, serializer=MsgpackSerializer), strict=True):
        status = job.get_status(refresh=False) if job else None
        if status in (JobStatus.FINISHED, JobStatus.FAILED):
            report.bulk["finished" if status == JobStatus.FINISHED else "failed"] += 1
            pending.discard(job_id)


async def settle_bulk(stack: ChaosStack, report: Report, pending: set[str], timeout: float) -> None:
    r = redis.Redis.from_url(stack.embedded.url)
    end = time.monotonic() + timeout
    while pending and time.monotonic() < end:
        check_bulk(r, report, pending)
        await asyncio.sleep(0.5)
    if pending:
        report.bulk["lost"] = len(pending)


# --- chaos


async def chaos(stack: ChaosStack, report: Report, kills: int, outage_s: float, gap_s: float) -> None:
    """Each kill waits for a full, live fleet first (so a kill takes one worker of N, never the last one)."""
    r = aredis.Redis.from_url(stack.embedded.url, socket_connect_timeout=0.5, socket_timeout=2)
    for _ in range(kills):
        await wait_for(lambda: _fleet_live(stack, r), timeout=180)
        await asyncio.sleep(gap_s)
        victim = stack.worker_pids()[0]
        before = await stack.live_pids(r)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        in_flight = [o for o in report.outcomes if o.latency is None]
        replaced = await wait_for(lambda before=before: _new_live(stack, r, before), timeout=180)
        report.kills.append({"pid": victim, "replacement_live_s": round(replaced - killed, 2) if replaced else None,
                             "killed_at_s": round(killed - T0, 1), "in_flight": in_flight})
        print(f"[{killed - T0:6.1f}s] killed worker {victim}; replacement live after "
              f"{replaced - killed if replaced else float('nan'):.1f}s", flush=True)
    await wait_for(lambda: _fleet_live(stack, r), timeout=180)
    await asyncio.sleep(gap_s)
    stack.stop_redis()
    stopped = time.monotonic()
    print(f"[{stopped - T0:6.1f}s] redis stopped", flush=True)
    await asyncio.sleep(outage_s)
    stack.start_redis()
    back = time.monotonic()
    print(f"[{back - T0:6.1f}s] redis back after {back - stopped:.1f}s", flush=True)
    report.outage = {"stopped_at_s": round(stopped - T0, 1), "down_s": round(back - stopped, 1), "back": back}
    await r.aclose()


async def _fleet_live(stack: ChaosStack, r: aredis.Redis) -> bool:
    """N worker processes, every one of them beating (a killed one's heartbeat outlives it for a while)."""
    pids = set(stack.worker_pids())
    return len(pids) >= stack.workers and pids <= await stack.live_pids(r)


async def _new_live(stack: ChaosStack, r: aredis.Redis, before: set[int]) -> bool:
    return bool(await stack.live_pids(r) - before)


async def wait_for(check: Any, timeout: float) -> float | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await check():
            return time.monotonic()
        await asyncio.sleep(0.1)
    return None


# --- resident memory


async def watch_processes(stack: ChaosStack, report: Report, stop: asyncio.Event) -> None:
    while not stop.is_set():
        report.workers_seen.update(stack.worker_pids())
        await asyncio.sleep(0.25)


async def sample_rss(stack: ChaosStack, samples: dict[tuple[str, int], list[tuple[float, float]]],
                     stop: asyncio.Event, every_s: float) -> None:
    while not stop.is_set():
        procs = [("facade+supervisor", stack.up.pid), ("harness (load+cloud)", os.getpid())]
        procs += [("redis", stack.embedded.process.pid)] if stack.embedded.process else []
        procs += [("worker", pid) for pid in stack.worker_pids()]
        for role, pid in procs:
            if (mb := rss_mb(pid)) is not None:
                samples.setdefault((role, pid), []).append((time.monotonic() - T0, mb))
        await asyncio.sleep(every_s)


UNJUDGED = {"harness (load+cloud)"}
"""The harness keeps every request's outcome for the report: it grows by design, so it is shown, not judged."""


def rss_rows(samples: dict[tuple[str, int], list[tuple[float, float]]], settle_s: float, bound_pct: float,
             min_span_s: float) -> list[dict[str, Any]]:
    """Growth of each process from its first sample `settle_s` after it was first seen (start-up, model loading
    and warm-up are not growth) to its last, and over the last half of that span. A process has reached its
    plateau when that growth is under `bound_pct`; one watched for less than `min_span_s` after its warm-up (half
    of the soak after warm-up: a worker that replaced a killed one late) is reported but not judged (outside a
    soak nothing is judged)."""
    rows = []
    for (role, pid), points in samples.items():
        settled = [p for p in points if p[0] >= points[0][0] + settle_s]
        if len(settled) < 2:
            continue
        half = [p for p in settled if p[0] >= (settled[0][0] + settled[-1][0]) / 2]
        growth_pct = 100 * (settled[-1][1] - settled[0][1]) / settled[0][1]
        judged = role not in UNJUDGED and settled[-1][0] - settled[0][0] >= min_span_s
        rows.append({"role": role, "pid": pid, "from_s": round(settled[0][0]), "to_s": round(settled[-1][0]),
                     "first_mb": round(settled[0][1], 1), "last_mb": round(settled[-1][1], 1),
                     "peak_mb": round(max(p[1] for p in settled), 1),
                     "growth_mb": round(settled[-1][1] - settled[0][1], 1), "growth_pct": round(growth_pct, 2),
                     "last_half_growth_mb": round(half[-1][1] - half[0][1], 1),
                     "plateau": None if not judged else growth_pct < bound_pct})
    return sorted(rows, key=lambda row: (row["role"], row["from_s"]))


# --- the run


T0 = time.monotonic()


async def run(args: argparse.Namespace, stack: ChaosStack) -> Report:
    global T0
    report, stop = Report(), asyncio.Event()
    hung_after = 2 * args.deadline + stack.settings.heartbeat_ttl_s + stack.settings.heartbeat_interval_s + 10
    timeout = hung_after + 30
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {}
    bulk_jobs: set[str] = set()
    T0 = time.monotonic()
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    async with httpx.AsyncClient(base_url=stack.url, limits=limits, headers=AUTH) as client:
        loops = [load_loop(client, "embed", report, stop, timeout, 0.02) for _ in range(args.concurrency)]
        loops += [load_loop(client, "generate", report, stop, timeout, 0.5),
                  load_loop(client, "stream", report, stop, timeout, 1.0)]
        tasks = [asyncio.create_task(c) for c in loops]
        tasks.append(asyncio.create_task(sample_rss(stack, samples, stop, 5.0 if args.soak else 2.0)))
        tasks.append(asyncio.create_task(watch_processes(stack, report, stop)))
        if stack.persist:
            tasks.append(asyncio.create_task(bulk_loop(stack, report, stop, bulk_jobs)))
        await chaos(stack, report, args.kills, args.outage, args.gap)
        back = report.outage.pop("back")
        await wait_for(lambda: _answered_after(report, back, "npu"), timeout=60)
        report.outage["first_200_after_s"] = _first_200(report, back, None)
        report.outage["first_npu_200_after_s"] = _first_200(report, back, "npu")
        report.outage["answers_after_return"] = Counter(
            f"{o.status} {o.source or o.error}" for o in report.outcomes
            if o.latency is not None and back <= o.sent < back + 2)
        await asyncio.sleep(max(0.0, args.duration - (time.monotonic() - T0)))
        stop.set()
        await asyncio.gather(*tasks)
    if bulk_jobs:
        await settle_bulk(stack, report, bulk_jobs, timeout=60)
    killed = {k["pid"] for k in report.kills}
    report.unexpected_exits = sorted(report.workers_seen - killed - set(stack.worker_pids()))
    if stack.up.poll() is not None:
        report.unexpected_exits.append(stack.up.pid)
    report.rss = rss_rows(samples, settle_s=args.warmup_minutes * 60 if args.soak else 10.0,
                          bound_pct=args.rss_bound_pct,
                          min_span_s=(args.duration - args.warmup_minutes * 60) / 2 if args.soak else float("inf"))
    for kill in report.kills:
        flight = kill.pop("in_flight")
        kill["in_flight"] = len(flight)
        kill["in_flight_slowest_s"] = round(max((o.latency or 0 for o in flight), default=0), 2)
    report.hung_after_s = hung_after  # type: ignore[attr-defined]
    return report


async def _answered_after(report: Report, moment: float, source: str | None) -> bool:
    """A request sent after `moment` was answered 200 (by `source`, if given)."""
    return any(o.status == 200 and o.sent >= moment and (source is None or o.source == source)
               for o in report.outcomes)


def _first_200(report: Report, moment: float, source: str | None) -> float | None:
    """Seconds from `moment` to the first 200 answer to a request sent after it."""
    ends = [o.sent + (o.latency or 0) - moment for o in report.outcomes
            if o.status == 200 and o.sent >= moment and (source is None or o.source == source)]
    return round(min(ends), 2) if ends else None


def summarize(report: Report) -> dict[str, Any]:
    hung_after = report.hung_after_s  # type: ignore[attr-defined]
    done = report.outcomes
    lost = [o for o in done if o.error and o.error.startswith("transport:") and o.error != "transport:timeout"]
    hung = [o for o in done if o.error == "transport:timeout" or (o.latency or 0) > hung_after]
    errors = Counter(f"{o.status} {o.error}" for o in done if o.error and o.status)
    by_kind = Counter(o.kind for o in done)
    latencies = sorted(o.latency or 0 for o in done)
    return {
        "requests_sent": len(done), "by_kind": dict(by_kind),
        "answered_npu": sum(o.status == 200 and o.source == "npu" for o in done),
        "answered_cloud": sum(o.status == 200 and o.source == "cloud" for o in done),
        "errors_by_code": dict(errors.most_common()), "lost": len(lost), "hung": len(hung),
        "hung_after_s": hung_after, "p50_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
        "max_s": round(latencies[-1], 2) if latencies else None,
        "kills": report.kills, "redis_outage": report.outage, "bulk": dict(report.bulk), "rss": report.rss,
        "unexpected_exits": report.unexpected_exits,
        "lost_examples": [asdict(o) for o in lost[:5]], "hung_examples": [asdict(o) for o in hung[:5]],
    }


def print_summary(s: dict[str, Any]) -> None:
    print("\n== chaos report ==")
    print(f"requests sent        {s['requests_sent']}  {s['by_kind']}")
    print(f"answered by npu      {s['answered_npu']}")
    print(f"answered by cloud    {s['answered_cloud']}")
    print(f"errors by code       {s['errors_by_code'] or 'none'}")
    print(f"lost                 {s['lost']}   (no HTTP answer at all)")
    print(f"hung                 {s['hung']}   (no answer within {s['hung_after_s']:.0f}s)")
    print(f"latency              p50 {s['p50_s']}s, max {s['max_s']}s")
    for i, k in enumerate(s["kills"], 1):
        print(f"kill {i}               worker {k['pid']} at {k['killed_at_s']}s: replacement live after "
              f"{k['replacement_live_s']}s; {k['in_flight']} requests in flight, slowest answered in "
              f"{k['in_flight_slowest_s']}s")
    o = s["redis_outage"]
    print(f"redis outage         {o.get('down_s')}s at {o.get('stopped_at_s')}s; first 200 "
          f"{o.get('first_200_after_s')}s and first npu 200 {o.get('first_npu_200_after_s')}s after its return")
    if s["bulk"]:
        print(f"bulk (plain RQ)      {s['bulk']}")
    print(f"processes            {len(s['unexpected_exits'])} exited unexpectedly {s['unexpected_exits'] or ''}")
    for row in s["rss"]:
        verdict = {True: "plateau", False: f"GROWING (>= {s['rss_bound_pct']}%)", None: "not judged"}[row["plateau"]]
        print(f"rss {row['role']:<20} pid {row['pid']:<7} {row['first_mb']:>7} -> {row['last_mb']:>7} MB "
              f"({row['growth_mb']:+} MB, {row['growth_pct']:+}%, from {row['from_s']}s to {row['to_s']}s; "
              f"last half {row['last_half_growth_mb']:+}; peak {row['peak_mb']}): {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=90.0, help="least seconds of load (events permitting)")
    parser.add_argument("--soak", action="store_true", help="10 minutes of load; report RSS growth per process")
    parser.add_argument("--soak-minutes", type=float, help="a soak this long (implies --soak)")
    parser.add_argument("--warmup-minutes", type=float, default=5.0,
                        help="soak: RSS growth is measured from this long after a process started")
    parser.add_argument("--rss-bound-pct", type=float, default=5.0,
                        help="soak: exit 1 when a process's RSS grows more than this after its warm-up")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=6, help="concurrent embedding clients")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--outage", type=float, default=10.0, help="seconds Redis stays stopped")
    parser.add_argument("--gap", type=float, default=3.0, help="seconds of calm before each event")
    parser.add_argument("--deadline", type=float, default=10.0, help="NPU_DEADLINE_S of the facade")
    parser.add_argument("--no-persist", dest="persist", action="store_false",
                        help="Redis without AOF: it comes back empty (no bulk jobs then)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    if args.soak_minutes:
        args.soak = True
    if args.soak:
        args.duration = max(args.duration, 60 * (args.soak_minutes or 10.0))
    with tempfile.TemporaryDirectory(prefix="npu-chaos-") as tmp:
        stack = ChaosStack(Path(tmp), args.workers, args.persist, args.deadline)
        try:
            wait_healthy(stack.url, stack.headers)
            print(f"stack up: facade {stack.url}, {args.workers} workers, redis {redacted(stack.embedded.url)} "
                  f"({'AOF' if args.persist else 'no persistence'})", flush=True)
            summary = summarize(asyncio.run(run(args, stack)))
        finally:
            stack.close()
    summary["rss_bound_pct"] = args.rss_bound_pct
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    growing = [row for row in summary["rss"] if row["plateau"] is False]
    failed = (summary["lost"] or summary["hung"] or summary["bulk"].get("lost") or summary["unexpected_exits"]
              or growing)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
