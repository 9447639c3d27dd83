"""The bulk lane does what `rq worker` does around a job, against a real worker process and real RQ:
callbacks, Retry, a raising callback, RQ's worker statistics, and a generation job that names no max_tokens."""

from __future__ import annotations

import time
from typing import Any

import openvino_genai as og
import pytest
from rq import Callback, Queue, Retry, SimpleWorker
from rq.job import Job as RQJob
from rq.job import JobStatus

from dispatcher.models import Registry
from dispatcher.protocol import EMBED_TASK, GENERATE_TASK, Keys, MsgpackSerializer
from dispatcher.results import EmbedResult
from dispatcher.settings import Settings
from tests.conftest import WorkerProcess
from worker import generation
from worker.generation import ContinuousBatchingEngine
from worker.pipelines import CPU_SHAPE_CACHE

MODEL, LLM = "all-minilm-l6-v2", "smollm2-135m-instruct"
TOO_LONG = ["word " * 400]


def _wait(jobs: list[RQJob], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(
            j.get_status() in (JobStatus.FINISHED, JobStatus.FAILED) for j in jobs):
        time.sleep(0.1)


def _counters(proc: WorkerProcess) -> dict[str, int]:
    beat = proc.beat()
    return beat.counters if beat else {}


def test_bulk_jobs_get_rq_callbacks_retries_and_statistics(isolated: Settings) -> None:
    r, keys = isolated.redis(), Keys(isolated.key_prefix)
    queue = Queue(keys.queue(MODEL), connection=r, serializer=MsgpackSerializer)
    llm = Queue(keys.queue(LLM), connection=r, serializer=MsgpackSerializer)
    proc = WorkerProcess(isolated, models=[MODEL, LLM], NPU_DEFAULT_NEW_TOKENS="3")
    try:
        beat = proc.wait_live()
        ok = queue.enqueue(EMBED_TASK, kwargs={"texts": ["a", "b"], "model": MODEL}, result_ttl=300,
                           on_success=Callback("tests.worker.callbacks.record_success"))
        retried = queue.enqueue(EMBED_TASK, kwargs={"texts": TOO_LONG, "model": MODEL}, result_ttl=300,
                                retry=Retry(max=1), on_failure=Callback("tests.worker.callbacks.record_failure"))
        bad_callback = queue.enqueue(EMBED_TASK, kwargs={"texts": ["c"], "model": MODEL}, result_ttl=300,
                                     on_success=Callback("tests.worker.callbacks.raise_on_success"))
        untold = llm.enqueue(GENERATE_TASK, kwargs={"prompt": "Tell me a long story about the sea.", "model": LLM},
                             result_ttl=300)
        _wait([ok, retried, bad_callback, untold])

        assert ok.get_status() == JobStatus.FINISHED
        assert r.get(f"{queue.name}:callback:{ok.id}:success") == str(sorted(ok.latest_result().return_value)).encode()
        # The same shape as the /embeddings body (one result shape per task, both lanes).
        assert sorted(ok.latest_result().return_value) == sorted(
            ["embeddings", "model", "dim", "token_counts", "truncated", "device", "node_id", "source", "usage",
             "fallback_reason", "timings"])
        assert EmbedResult.from_body(ok.latest_result().return_value).vectors.shape == (2, 384)
        # Failed, retried once by RQ's own Retry, failed again: the failure callback ran for both attempts.
        retried.refresh()
        assert retried.get_status() == JobStatus.FAILED and retried.retries_left == 0
        assert int(r.get(f"{queue.name}:callback:{retried.id}:failure") or 0) == 2
        assert retried.id in queue.failed_job_registry.get_job_ids()
        # As with `rq worker`, a success callback that raises fails its job; the worker lives on.
        assert bad_callback.get_status() == JobStatus.FAILED
        assert "a success callback that raises" in bad_callback.latest_result().exc_string
        assert proc.proc.poll() is None
        # A job that names no max_tokens gets the configured default (3 here), not a constant of the worker.
        assert untold.get_status() == JobStatus.FINISHED
        value = untold.latest_result().return_value
        assert value["usage"]["completion_tokens"] == 3 and value["finish_reason"] == "length"
        # RQ's worker statistics moved as with `rq worker` (handle_job_success / handle_job_failure ran).
        rq_worker = SimpleWorker.find_by_key(SimpleWorker.redis_worker_namespace_prefix + beat.worker_id,
                                             connection=r, serializer=MsgpackSerializer)
        assert rq_worker is not None
        assert rq_worker.successful_job_count == 2 and rq_worker.failed_job_count == 3
        deadline = time.monotonic() + isolated.heartbeat_interval_s + 5
        # Until a beat taken after the last job ended (one taken between two of them has part of the counts).
        while ((counters := _counters(proc)).get("bulk_failed", 0) < 3 or counters.get("bulk_jobs", 0) < 2) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert counters.get("bulk_jobs") == 2 and counters.get("bulk_failed") == 3
    finally:
        proc.stop()


def test_generation_honours_inference_threads(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """NPU_INFERENCE_THREADS reaches the generation engine's plugin config, as it does the embedder's."""
    seen: list[dict[str, Any]] = []
    real = og.ContinuousBatchingPipeline

    def recording(path: str, scheduler: Any, device: str, config: dict[str, Any]) -> Any:
        seen.append(config)
        return real(path, scheduler, device, config)

    monkeypatch.setattr(generation.og, "ContinuousBatchingPipeline", recording)
    generator = ContinuousBatchingEngine(Registry.load(settings).get(LLM), ["CPU"], max_sequences=2, threads=1,
                          default_max_tokens=2)
    assert seen == [{"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1,
                     "CPU_RUNTIME_CACHE_CAPACITY": CPU_SHAPE_CACHE}]
    result = generator.generate("Count from one to one hundred.")
    assert result.completion_tokens == 2 and result.finish_reason == "length"
