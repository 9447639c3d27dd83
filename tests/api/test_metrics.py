"""`GET /metrics`: the facade's counters and the fleet's heartbeats in Prometheus format."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from dispatcher.settings import Settings
from tests.cloud_server import CloudServer
from tests.conftest import WorkerProcess, signed

MODEL = "all-minilm-l6-v2"


def scrape(c: TestClient) -> dict[tuple[str, tuple], float]:
    response = c.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, x) in ls for k, x in labels.items()))


def test_requests_sources_errors_and_fleet_gauges(settings: Settings, worker: WorkerProcess) -> None:
    with signed(TestClient(create_app(settings))) as c:
        before = scrape(c)
        for _ in range(3):
            assert c.post("/embeddings", json={"texts": ["a", "b"], "model": MODEL}).status_code == 200
        assert c.post("/embeddings", json={"texts": ["a"], "model": "nope"}).status_code == 404
        time.sleep(2.5)  # a heartbeat with the new counters
        after = scrape(c)
    delta = value(after, "npu_requests_total", route="/embeddings", source="npu", status="200") - \
        value(before, "npu_requests_total", route="/embeddings", source="npu", status="200")
    assert delta == 3
    assert value(after, "npu_requests_total", route="/embeddings", status="404") >= 1
    assert value(after, "npu_inference_duration_seconds_count", model=MODEL) >= 3
    assert value(after, "npu_queue_depth", model=MODEL, lane="interactive") >= 0
    assert value(after, "npu_workers_live", model=MODEL, device="cpu") >= 1
    assert value(after, "npu_batch_size_count", worker=worker.beat().worker_id) >= 3
    assert 0 <= value(after, "npu_worker_utilization_ratio", node=settings.node_id) <= 1
    assert value(after, "npu_prompt_tokens_total", model=MODEL, source="npu") - \
        value(before, "npu_prompt_tokens_total", model=MODEL, source="npu") >= 6  # 3 x 2 texts, 1+ token each
    served = value(after, "npu_worker_jobs_total", worker=worker.beat().worker_id, lane="interactive",
                   outcome="served")
    assert served >= 3 and value(after, "npu_fleet_up") == 1
    assert not any(n.endswith("_created") for n, _ in after)


def test_generation_tokens_and_time_to_first_token(settings: Settings, worker: WorkerProcess) -> None:
    llm = "smollm2-135m-instruct"
    with signed(TestClient(create_app(settings))) as c:
        before = scrape(c)
        body = c.post("/inference", json={"prompt": "Say hi.", "model": llm, "max_tokens": 5}).json()
        after = scrape(c)
    assert value(after, "npu_completion_tokens_total", model=llm, source="npu") - \
        value(before, "npu_completion_tokens_total", model=llm, source="npu") == body["usage"]["completion_tokens"]
    assert value(after, "npu_prompt_tokens_total", model=llm, source="npu") - \
        value(before, "npu_prompt_tokens_total", model=llm, source="npu") == body["usage"]["prompt_tokens"]
    assert value(after, "npu_time_to_first_token_seconds_count", model=llm) == \
        value(before, "npu_time_to_first_token_seconds_count", model=llm) + 1
    assert value(after, "npu_requests_total", route="/inference", model=llm, status="200") >= 1


def test_only_inference_requests_are_counted_as_requests(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        before = scrape(signed(c))
        c.auth = None
        assert c.get("/health").status_code == 401 and c.post("/embeddings", json={}).status_code == 401
        after = scrape(signed(c))
    assert value(after, "npu_requests_total", route="/health") == 0
    assert value(after, "npu_requests_total", route="/embeddings", status="401") == \
        value(before, "npu_requests_total", route="/embeddings", status="401") + 1


def test_queue_depth_per_lane_without_a_worker(isolated: Settings) -> None:
    from redis import Redis
    from rq import Queue

    from dispatcher.protocol import EMBED_TASK, Keys, MsgpackSerializer

    r = Redis.from_url(isolated.redis_address)
    keys = Keys(isolated.key_prefix)
    r.xadd(keys.stream(MODEL), {"j": b"x"})
    r.xadd(keys.stream(MODEL), {"j": b"y"})
    Queue(keys.queue(MODEL), connection=r, serializer=MsgpackSerializer).enqueue(
        EMBED_TASK, kwargs={"texts": ["a"], "model": MODEL})
    with signed(TestClient(create_app(isolated))) as c:
        samples = scrape(c)
    assert value(samples, "npu_queue_depth", model=MODEL, lane="interactive") == 2
    assert value(samples, "npu_queue_depth", model=MODEL, lane="bulk") == 1
    assert value(samples, "npu_workers_live") == 0


def test_metrics_answer_while_redis_is_down_and_can_be_public(isolated: Settings) -> None:
    gone = isolated.model_copy(update={"redis_url": f"redis://127.0.0.1:{_closed_port()}/0"})
    with signed(TestClient(create_app(gone))) as c:
        started = time.monotonic()
        samples = scrape(c)
        assert time.monotonic() - started < 5
    assert value(samples, "npu_fleet_up") == 0 and not any(n == "npu_queue_depth" for n, _ in samples)
    with TestClient(create_app(gone)) as c:  # unsigned
        assert c.get("/metrics").status_code == 401
    with TestClient(create_app(gone.model_copy(update={"metrics_public": True}))) as c:
        assert c.get("/metrics").status_code == 200
        assert c.get("/health").status_code == 401  # only /metrics is opened


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fallbacks_are_counted_with_their_reason(isolated: Settings, cloud: CloudServer) -> None:
    with signed(TestClient(create_app(isolated.model_copy(update={"cloud_base_url": cloud.base_url})))) as c:
        before = value(scrape(c), "npu_fallbacks_total", model=MODEL, reason="no_worker")
        assert c.post("/embeddings", json={"texts": ["x"], "model": MODEL}).json()["source"] == "cloud"
        assert value(scrape(c), "npu_fallbacks_total", model=MODEL, reason="no_worker") == before + 1


def test_worker_memory_and_kv_cache_are_exported_and_in_the_details(settings: Settings, worker: WorkerProcess) -> None:
    """Each worker's RSS and its generation model's KV cache, from the heartbeat, in /metrics and the node details."""
    beat = worker.beat()
    assert beat is not None and beat.rss_bytes and beat.kv_cache
    with signed(TestClient(create_app(settings))) as c:
        samples = scrape(c)
        details = c.get(f"/api/nodes/{settings.node_id}/npu/details").json()
    rss = value(samples, "npu_worker_resident_memory_bytes", worker=beat.worker_id)
    assert 50 * 2**20 < rss < 8 * 2**30
    configured = value(samples, "npu_kv_cache_configured_bytes", worker=beat.worker_id, model="smollm2-135m-instruct")
    assert configured == beat.kv_cache["smollm2-135m-instruct"].configured_bytes > 0
    assert value(samples, "npu_kv_cache_allocated_bytes", worker=beat.worker_id) <= configured
    mine = next(w for w in details["workers"] if w["workerId"] == beat.worker_id)
    assert mine["rssBytes"] > 50 * 2**20 and "smollm2-135m-instruct" in mine["kvCache"]
    assert details["workerMemoryBytes"] >= mine["rssBytes"]
