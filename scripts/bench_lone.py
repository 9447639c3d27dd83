"""Where a lone request's time goes: the facade's single-text `/embeddings` against raw OpenVINO, by stage.

Starts the same stack as `scripts.bench` (an embedded Redis, one worker, the facade) and sends one
text at a time, in turns, to each layer of the stack, so each layer's added time is a difference of
medians measured side by side in one run:

    raw          what the worker runs for one text, in this process (count its tokens, embed it)
    redis        one PING round trip (redis-py, hiredis): the unit every Redis step costs
    dispatcher   `AsyncDispatcher.embed` in this process: + job encode, XADD, worker wake and read,
                 decode, reply push, inbox hand-off (the worker's `queue_ms`/`inference_ms` split it)
    livez        `GET /livez` on the facade: HTTP both ways (client and server) and the middleware
    http floor   an authenticated `GET /api/whoami` on the facade (keep-alive httpx client): HTTP
                 both ways, middleware and auth, no body
    facade       `POST /embeddings`: + body parse and validation, the dispatcher, response encode

With `--py-spy` the facade and the worker are also sampled (py-spy, `pip install py-spy`) while only the
facade is called, and each process's CPU per request is split into the stages above by where the samples
fall. Not a test: it asserts nothing, it reports.

    .venv/bin/python -m scripts.bench_lone [--requests 400] [--py-spy] [--json lone.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from statistics import median
from typing import Any

import httpx
import redis

from dispatcher.client import AsyncDispatcher
from scripts.bench import EMBED, bench_stack, raw_embedder, stack_settings
from scripts.harness import SENTENCES, Stack, cpu_seconds

# Where a sample falls: the deepest frame on its stack that matches one of these (file part, function),
# so a Redis call made while sending a job counts as sending, not as "Redis". Checked in order per frame.
STAGES: list[tuple[str, str, str]] = [
    # facade
    ("uvicorn/protocols/http", "", "HTTP server (uvicorn, httptools)"),
    ("api/middleware.py", "", "middleware (request id, access log, body cap)"),
    ("starlette/routing.py", "", "routing (Starlette, FastAPI)"),
    ("fastapi/routing.py", "serialize_response", "response encode"),
    ("fastapi/routing.py", "", "routing (Starlette, FastAPI)"),
    ("fastapi/dependencies/", "", "body parse + validation (FastAPI, pydantic)"),
    ("api/auth.py", "", "auth"),
    ("dispatcher/limits.py", "check_json_text", "body parse + validation (FastAPI, pydantic)"),
    ("api/metrics.py", "", "metrics + access log"),
    ("logging/__init__.py", "", "metrics + access log"),
    ("dispatcher/client.py", "", "job encode + XADD (dispatcher)"),
    ("dispatcher/flow.py", "", "job encode + XADD (dispatcher)"),
    ("dispatcher/inbox.py", "", "inbox hand-off (BLPOP, decode, wake caller)"),
    ("api/responses.py", "", "response encode"),
    ("dispatcher/results.py", "", "response encode"),
    ("starlette/responses.py", "", "response encode"),
    # worker
    ("worker/interactive.py", "read", "worker wake + read (XREADGROUP)"),
    ("worker/interactive.py", "_decode", "worker decode"),
    ("worker/interactive.py", "_fill", "worker batch fill"),
    ("worker/pipelines.py", "count_tokens", "tokenize"),
    ("worker/pipelines.py", "embed", "inference (model + pooling)"),
    ("worker/interactive.py", "finish", "reply push (RPUSH, XACK, XDEL)"),
    ("worker/heartbeat.py", "", "worker heartbeat"),
    ("rq/", "", "bulk lane poll (rq)"),
    ("worker/bulk.py", "", "bulk lane poll (rq)"),
]


def stage_of(stack: str) -> str:
    found = "other"
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        for part, function, stage in STAGES:
            if part in where and (not function or name.strip().rsplit(".", 1)[-1] == function):
                found = stage
                break
    return found


def py_spy() -> str | None:
    """py-spy on PATH, or beside this Python (a venv's bin, not always on PATH)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([py_spy() or "py-spy", "record", "--pid", str(pid), "--rate", "1000", "--duration",
                             str(int(seconds) + 1), "--format", "raw", "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def split(raw: Path, requests: int) -> tuple[dict[str, float], dict[str, float]]:
    """Sampled ms per request in each stage, from py-spy's collapsed stacks (1 sample = 1 ms at 1000 Hz),
    and the innermost frames of what fell in no stage."""
    totals: Counter[str] = Counter()
    other: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stage = stage_of(stack)
            totals[stage] += int(count)
            if stage == "other":
                other[";".join(stack.split(";")[-3:])] += int(count)
    return ({stage: n / requests for stage, n in totals.most_common()},
            {frames: n / requests for frames, n in other.most_common(8)})


LAYERS = ("raw", "redis", "dispatcher", "livez", "http floor", "facade")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="per layer, per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--texts", type=int, default=1, help="texts per request (32: where P4's time goes)")
    parser.add_argument("--py-spy", action="store_true", help="also sample the facade and the worker")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="a directory to keep py-spy's collapsed stacks in")
    return parser.parse_args()


class Lone:
    """One text (or `per` texts) at a time to each layer of the stack, with each process's CPU per layer."""

    def __init__(self, stack: Stack, sentences: list[str], n: int, per: int):
        self.stack, self.sentences, self.n, self.per = stack, sentences, n, per
        self.embedder = raw_embedder(stack_settings(stack), one_pass=True)
        self.redis = redis.Redis.from_url(stack.redis_url)
        self.client = httpx.Client(base_url=stack.url, headers=stack.headers)
        self.loop = asyncio.new_event_loop()
        self.dispatcher = AsyncDispatcher(stack_settings(stack))
        worker, facade = stack.procs[0], stack.procs[1]
        self.procs = {"facade": facade.pid, "worker": worker.pid,
                      "redis": stack.redis_server.process.pid,  # type: ignore[union-attr]
                      "this (client)": os.getpid()}
        self.samples: dict[str, list[float]] = {k: [] for k in LAYERS}
        self.worker_split: dict[str, list[float]] = {"queue_ms": [], "inference_ms": []}
        self.cpu: dict[str, dict[str, float]] = {k: dict.fromkeys(self.procs, 0.0) for k in LAYERS}
        self.layers: dict[str, Any] = {
            "raw": lambda t: (self.embedder.count_tokens(t), self.embedder.embed(t)),
            "redis": lambda t: self.redis.ping(),
            "dispatcher": lambda t: self.loop.run_until_complete(self.dispatcher.embed(t, EMBED)),
            "livez": lambda t: self.client.get("/livez").raise_for_status(),
            "http floor": lambda t: self.client.get("/api/whoami").raise_for_status(),
            "facade": lambda t: self.client.post("/embeddings", json={"texts": t, "model": EMBED}).raise_for_status(),
        }

    def texts(self, i: int) -> list[str]:
        return [self.sentences[(i * self.per + j) % len(self.sentences)] for j in range(self.per)]

    def timed(self, key: str) -> None:
        call = self.layers[key]
        before = {name: cpu_seconds([pid]) for name, pid in self.procs.items()}
        for i in range(self.n):
            text = self.texts(i)
            started = time.perf_counter()
            result = call(text)
            self.samples[key].append((time.perf_counter() - started) * 1000)
            if key == "dispatcher":
                for k in self.worker_split:
                    self.worker_split[k].append(result.timings[k])
        for name, pid in self.procs.items():
            self.cpu[key][name] += (cpu_seconds([pid]) - before[name]) * 1000

    def warm_up(self) -> None:
        for call in self.layers.values():
            for t in [self.sentences[i * self.per:(i + 1) * self.per] for i in range(20)]:
                call(t)
        for key in self.samples:
            self.samples[key].clear()
        for k in self.worker_split:
            self.worker_split[k].clear()

    def close(self) -> None:
        self.loop.run_until_complete(self.dispatcher.aclose())
        self.loop.close()
        self.client.close()


def breakdown(lone: Lone, rounds: int) -> dict[str, Any]:
    """Print the medians and their differences, layer by layer; the report's first part."""
    med = {k: median(v) for k, v in lone.samples.items()}
    print(f"lone request of {lone.per} text(s), {lone.n} x {rounds} per layer, medians (ms):")
    for k, v in med.items():
        print(f"  {k:<12} {v:7.3f}")
    q, inf = median(lone.worker_split["queue_ms"]), median(lone.worker_split["inference_ms"])
    rows = [
        ("facade minus raw (the P3 figure)", med["facade"] - med["raw"]),
        ("  HTTP + middleware + auth (http floor)", med["http floor"]),
        ("  body parse/validate + route + response encode (facade - dispatcher - floor)",
         med["facade"] - med["dispatcher"] - med["http floor"]),
        ("  queue path (dispatcher - raw)", med["dispatcher"] - med["raw"]),
        ("    caller to worker start: encode, XADD, wake, read, decode, tokenize (queue_ms)", q),
        ("    worker inference (inference_ms) minus raw", inf - med["raw"]),
        ("    reply push + inbox hand-off (dispatcher - queue_ms - inference_ms)", med["dispatcher"] - q - inf),
    ]
    print("breakdown (ms):")
    for label, value in rows:
        print(f"  {label:<88} {value:+7.3f}")
    # The physics of a lone request: one HTTP round trip and four Redis round trips in a row (XADD, the
    # worker's wake, its reply, the inbox's wake); what the facade adds beyond it is our own CPU.
    floor = med["livez"] + 4 * med["redis"]
    over = med["facade"] - med["raw"] - floor
    print(f"floor (livez + 4 x Redis PING): {floor:.3f} ms; facade minus raw is floor {over:+.3f} ms (target <= +1.0)")
    return {"medians_ms": med, "worker": {"queue_ms": q, "inference_ms": inf}, "breakdown_ms": dict(rows),
            "floor_ms": floor, "over_floor_ms": over}


def cpu_per_request(lone: Lone, rounds: int) -> dict[str, dict[str, float]]:
    """CPU each process spent per request of each layer (user + system, from /proc): on two cores, work
    anywhere is on the lone request's path, so this says where added time can be won."""
    table = {k: {name: ms / (lone.n * rounds) for name, ms in v.items()} for k, v in lone.cpu.items()}
    print("CPU per request, by process (ms):")
    print(f"  {'layer':<12}" + "".join(f"{name:>15}" for name in lone.procs))
    for k, v in table.items():
        print(f"  {k:<12}" + "".join(f"{ms:15.3f}" for ms in v.values()))
    targets = [("facade per /embeddings", table["facade"]["facade"], 1.2),
               ("worker beyond raw inference", table["dispatcher"]["worker"] - table["raw"]["this (client)"], 1.0),
               ("in-process AsyncDispatcher", table["dispatcher"]["this (client)"], 0.5)]
    for label, ms, limit in targets:
        print(f"  CPU {label}: {ms:.3f} ms (target <= {limit})")
    return table


def sampled(lone: Lone, workdir: Path, keep: Path | None) -> dict[str, dict[str, float]]:
    """py-spy on the facade and the worker while only the facade is called: CPU per request by stage."""
    if not py_spy():
        sys.exit("--py-spy needs py-spy on PATH (pip install py-spy)")
    pids = {"facade": lone.procs["facade"], "worker": lone.procs["worker"]}
    outs = {name: workdir / f"{name}.txt" for name in pids}
    started = time.perf_counter()
    lone.timed("facade")  # how long n requests take, to size the recording
    seconds = time.perf_counter() - started
    spies = [spy(pid, seconds * 1.5, outs[name]) for name, pid in pids.items()]
    time.sleep(1.0)  # py-spy attached
    started = time.perf_counter()
    done = 0
    while time.perf_counter() - started < seconds:
        lone.layers["facade"](lone.texts(done))
        done += 1
    for p in spies:
        p.wait(timeout=120)
    # Samples cover the whole recording; requests ran during `seconds` of it: scale to them.
    result = {}
    for name, out in outs.items():
        parts, other = split(out, done)
        result[name] = parts
        print(f"py-spy, {name} process, sampled ms per request ({done} requests, slowed by sampling):")
        for stage, ms in parts.items():
            print(f"  {stage:<50} {ms:6.3f}")
        print("  of which 'other', innermost frames:")
        for frames, ms in other.items():
            print(f"    {ms:6.3f}  {frames[-160:]}")
        if keep:
            shutil.copy(out, keep / out.name)
    return result


def main() -> None:
    args = parse_args()
    sentences = SENTENCES.read_text().splitlines()
    workdir = Path(tempfile.mkdtemp(prefix="bench-lone-"))
    stack = bench_stack(None, workdir)
    try:
        lone = Lone(stack, sentences, args.requests, args.texts)
        lone.warm_up()
        for _ in range(args.rounds):  # in turns, so a change in the machine's load hits every layer alike
            for key in LAYERS:
                lone.timed(key)
        report = breakdown(lone, args.rounds)
        report["cpu_ms_per_request"] = cpu_per_request(lone, args.rounds)
        if args.py_spy:
            report["py_spy_cpu_ms_per_request"] = sampled(lone, workdir, args.keep)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        lone.close()
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
