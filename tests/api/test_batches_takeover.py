"""A batch survives its worker killed and its facade's driver replaced: every line answered exactly once."""

from __future__ import annotations

import io
import time

import openai
import orjson

from dispatcher.protocol import Keys
from dispatcher.settings import Settings
from tests.conftest import APP_KEY, LiveFacade, WorkerProcess

MODEL = "all-minilm-l6-v2"
LINES = 60


def test_a_killed_worker_and_a_replaced_facade_lose_no_line_and_answer_none_twice(isolated: Settings) -> None:
    # Small jobs (2 texts) and a window of 2, so the batch is mid-way for a while; a short lease and heartbeat.
    s = isolated.model_copy(update={"batch_max": 2, "batch_window": 2, "batch_lease_s": 1.0, "batch_poll_ms": 50})
    env = {"NPU_HEARTBEAT_TTL_S": "3"}
    # Two workers from the start (started together: one wait): one is killed mid-batch, its peer takes over.
    first_worker, second_worker = WorkerProcess(s, models=[MODEL], **env), WorkerProcess(s, models=[MODEL], **env)
    first = second = None
    try:
        first_worker.wait_live()
        second_worker.wait_live()
        first = LiveFacade(s)
        client = openai.OpenAI(base_url=f"{first.url}/v1", api_key=APP_KEY, max_retries=0)
        lines = b"".join(orjson.dumps({"custom_id": f"k-{i}", "method": "POST", "url": "/v1/embeddings",
                                       "body": {"model": MODEL, "input": f"line {i} " * 40}}) + b"\n"
                         for i in range(LINES))
        file = client.files.create(file=("k.jsonl", io.BytesIO(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
        while (counts := client.batches.retrieve(batch.id).request_counts).completed < 8:
            time.sleep(0.02)
        first_worker.proc.kill()  # mid-batch: its running job is the lane's to requeue
        first.stop()  # and the facade whose driver held the batch goes away; its lease lapses
        assert counts.completed < LINES
        # As if that driver had died after answering its finished jobs but before forgetting them: the
        # successor meets them again, and must not answer (or count) their lines twice.
        r, keys = s.redis(), Keys(s.key_prefix)
        finished = [k.decode()[len("rq:job:"):] for k in r.scan_iter(f"rq:job:{batch.id}-*")
                    if r.hget(k, "status") == b"finished"]
        assert finished
        r.sadd(keys.batch(batch.id, "inflight"), *finished)
        second = LiveFacade(s)
        client = openai.OpenAI(base_url=f"{second.url}/v1", api_key=APP_KEY, max_retries=0)
        deadline = time.monotonic() + 90
        while (done := client.batches.retrieve(batch.id)).status != "completed":
            assert time.monotonic() < deadline, done
            assert done.request_counts.completed + done.request_counts.failed <= LINES, done.request_counts
            time.sleep(0.05)
        assert done.request_counts.completed == LINES and done.request_counts.failed == 0
        out = [orjson.loads(x) for x in client.files.content(done.output_file_id).read().splitlines()]
        assert [o["custom_id"] for o in out] == [f"k-{i}" for i in range(LINES)]  # each once, in order
        assert all(len(o["response"]["body"]["data"][0]["embedding"]) == 384 for o in out)
        assert done.error_file_id is None
    finally:
        for server in (first, second):
            if server is not None:
                server.stop()
        for proc in (first_worker, second_worker):
            proc.stop()
