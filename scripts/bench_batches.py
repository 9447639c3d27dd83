"""The Batch API against the plain bulk lane: the same texts, one run, side by side.

Starts the stack of `scripts.bench` (an embedded Redis unless --redis-url, one worker, the facade),
sends the corpus's sentences through the bulk lane as a backend would (`Dispatcher.submit_embed`, jobs
of --per-job texts, waiting for each job's status as the bench's row P6 does), then the same sentences
as an N-line batch through the HTTP API (upload, create, poll until `completed`, output downloaded),
and prints both rates and their ratio. Not a test: it asserts nothing, it reports.

    .venv/bin/python -m scripts.bench_batches [--lines 10000] [--texts-per-line 1] [--per-job 100] [--chat-lines 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from rq.job import Job, JobStatus

from dispatcher.client import Dispatcher
from scripts.bench import EMBED, LLM, bench_stack, stack_settings
from scripts.harness import SENTENCES, Stack


def plain_lane(stack: Stack, texts: list[str], per_job: int) -> float:
    dispatcher = Dispatcher(stack_settings(stack))
    r = redis.Redis.from_url(stack.redis_url)
    started = time.perf_counter()
    waiting = [dispatcher.submit_embed(texts[i:i + per_job], EMBED, result_ttl=600).id
               for i in range(0, len(texts), per_job)]
    while waiting:
        pipe = r.pipeline(transaction=False)
        for job_id in waiting:
            pipe.hget(Job.key_for(job_id), "status")
        statuses = [(raw or b"").decode() for raw in pipe.execute()]
        if JobStatus.FAILED.value in statuses:
            raise RuntimeError("a bulk job failed")
        waiting = [j for j, s in zip(waiting, statuses, strict=True) if s != JobStatus.FINISHED.value]
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    dispatcher.close()
    return len(texts) / elapsed


def run_batch(stack: Stack, endpoint: str, bodies: list[dict[str, Any]]) -> tuple[dict[str, Any], list[bytes], float,
                                                                              float]:
    """Upload `bodies` as a batch for `endpoint`, create it, poll until it ends, read its output file:
    (the batch, the output's lines, seconds from create to the output read, seconds the upload took)."""
    data = b"".join(orjson.dumps({"custom_id": str(i), "method": "POST", "url": endpoint, "body": body}) + b"\n"
                    for i, body in enumerate(bodies))
    with httpx.Client(base_url=f"{stack.url}/v1", headers=stack.headers, timeout=120) as http:
        started = time.perf_counter()
        upload = http.post("/files", files={"file": ("bench.jsonl", data)}, data={"purpose": "batch"})
        upload.raise_for_status()
        uploaded = time.perf_counter() - started
        started = time.perf_counter()
        batch = http.post("/batches", json={"input_file_id": upload.json()["id"], "endpoint": endpoint,
                                            "completion_window": "24h"}).json()
        while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.1)
            batch = http.get(f"/batches/{batch['id']}").json()
        if batch["status"] != "completed" or batch["request_counts"]["failed"]:
            raise RuntimeError(f"batch ended {batch['status']}: {batch['request_counts']} {batch['errors']}")
        output = http.get(f"/files/{batch['output_file_id']}/content")
        output.raise_for_status()
        elapsed = time.perf_counter() - started
    return batch, output.content.splitlines(), elapsed, uploaded


def batch_api(stack: Stack, lines: list[list[str]]) -> tuple[float, float]:
    """(texts/s from create to completed with the output downloaded, seconds the upload took)."""
    _, _, elapsed, uploaded = run_batch(stack, "/v1/embeddings", [{"model": EMBED, "input": texts} for texts in lines])
    return sum(len(t) for t in lines) / elapsed, uploaded


def chat_batch(stack: Stack, lines: int, max_tokens: int) -> str:
    """An N-line chat batch: every line answered once, in order, with a completion."""
    bodies = [{"model": LLM, "max_tokens": max_tokens, "temperature": 0,
               "messages": [{"role": "user", "content": f"Name a fruit, number {i}."}]} for i in range(lines)]
    batch, output, elapsed, _ = run_batch(stack, "/v1/chat/completions", bodies)
    answers = [orjson.loads(line) for line in output]
    ids = [a["custom_id"] for a in answers]
    answered = sum(bool(a["response"] and a["response"]["body"]["choices"][0]["message"]["content"]) for a in answers)
    return (f"chat batch: {lines} lines, {batch['request_counts']}, output lines {len(output)}, custom_ids in order "
            f"and once each: {ids == [str(i) for i in range(lines)]}, lines with a completion: {answered}, "
            f"{elapsed:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10000)
    parser.add_argument("--texts-per-line", type=int, default=1)
    parser.add_argument("--per-job", type=int, default=100, help="texts per job of the plain bulk lane")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--corpus", type=Path, default=SENTENCES)
    parser.add_argument("--chat-lines", type=int, default=0, help="also run a chat batch of this many lines")
    args = parser.parse_args()
    sentences = [s.strip() for s in args.corpus.read_text().splitlines() if s.strip()]
    k = args.texts_per_line
    lines = [[sentences[(i * k + j) % len(sentences)] for j in range(k)] for i in range(args.lines)]
    texts = [t for line in lines for t in line]
    with tempfile.TemporaryDirectory() as workdir:
        stack = bench_stack(args.redis_url, Path(workdir))
        try:
            plain_lane(stack, texts[:200], args.per_job)  # warm-up: the model's first shapes
            plain = plain_lane(stack, texts, args.per_job)
            batch, uploaded = batch_api(stack, lines)
            chat = chat_batch(stack, args.chat_lines, 16) if args.chat_lines else ""
        finally:
            stack.stop()
    print(f"{args.lines} lines x {k} text(s): {len(texts)} texts")
    print(f"plain bulk lane (submit_embed, {args.per_job} texts/job): {plain:8.1f} texts/s")
    print(f"batch API (create -> completed, output read):     {batch:8.1f} texts/s  (upload {uploaded:.2f} s)")
    print(f"ratio batch / plain: {batch / plain:.3f}")
    if chat:
        print(chat)


if __name__ == "__main__":
    main()
