"""The dispatch policy driven by hand: no Redis, no worker, no sleep. Each test hands the flow the replies
a driver would, moves a fake clock, and reads the effects it asks for next, to pin what is hard to stage
with processes (the budget across a retry, a failover's resubmissions). `test_policy.py` pins the same
policy end to end through both drivers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis
from rq.job import Job as RQJob

from dispatcher.effects import (
    Cancel,
    Effect,
    Enqueue,
    Http,
    IsAlive,
    Pause,
    QueueLength,
    ReadFleet,
    Receive,
    Send,
    StreamFlow,
)
from dispatcher.errors import InvalidInputError, NPUUnavailableError, OverloadedError, WorkerLostError
from dispatcher.flow import RESUBMIT_PAUSE_S, DispatchPolicy
from dispatcher.nodes import LoadBalancing
from dispatcher.protocol import EMBED_TASK, DeltaReply, DoneReply, EmbeddingReply, StartReply, pack, unpack
from dispatcher.results import EmbedResult, GenerateResult, StreamChunk
from dispatcher.routing import FleetSnapshot
from dispatcher.settings import Settings

MODEL = "all-minilm-l6-v2"
LLM = "smollm2-135m-instruct"
CLOUD = "http://127.0.0.1:9/v1"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def policy(clock: FakeClock, **settings: Any) -> DispatchPolicy:
    return DispatchPolicy(Settings(**{"key_prefix": "unit", "cloud_base_url": None, **settings}), clock=clock)


def live(backlog: int = 0) -> FleetSnapshot:
    return FleetSnapshot({"node-a": 0.0}, LoadBalancing(), backlog)


NOBODY = FleetSnapshot({}, LoadBalancing())


def result_of(flow: StreamFlow[Any], reply: object) -> Any:
    with pytest.raises(StopIteration) as stop:
        flow.send(reply)
    return stop.value.value


def vectors(job_id: str) -> EmbeddingReply:
    return EmbeddingReply(job=job_id, vectors=b"\0" * 4 * 384, dim=384)


def test_no_live_worker_goes_to_the_cloud_without_waiting() -> None:
    clock = FakeClock()
    flow = policy(clock, cloud_base_url=CLOUD, deadline_s=20).embed(["x"], MODEL)
    assert flow.send(None) == ReadFleet(MODEL)
    effect = flow.send(NOBODY)
    assert isinstance(effect, Http) and effect.request.url.path.endswith("/embeddings")  # no Send: nothing queued
    assert effect.request.extensions["timeout"]["read"] == pytest.approx(20)  # the whole budget is the cloud's
    body = {"data": [{"index": 0, "embedding": [0.0] * 384}]}
    result = result_of(flow, _response(effect, body))
    assert isinstance(result, EmbedResult) and result.source == "cloud" and result.fallback_reason == "no_worker"


def test_no_live_worker_and_no_cloud_is_unavailable_at_once() -> None:
    flow = policy(FakeClock()).embed(["x"], MODEL)
    flow.send(None)
    with pytest.raises(NPUUnavailableError, match="no live worker serves") as err:
        flow.send(NOBODY)
    assert err.value.extra["reason"] == "no_worker"


def test_a_full_queue_is_overloaded_without_waiting() -> None:
    clock = FakeClock()
    p = policy(clock, max_queue=10)
    flow = p.embed(["x"], MODEL)
    flow.send(None)
    with pytest.raises(OverloadedError):
        flow.send(live(backlog=10))
    with pytest.raises(OverloadedError):  # "overloaded" is cached like "ok": refused with no new read
        p.embed(["x"], MODEL).send(None)


def test_the_wait_for_a_worker_leaves_the_cloud_its_share_of_the_budget() -> None:
    clock = FakeClock()
    flow = policy(clock, cloud_base_url=CLOUD, deadline_s=10, cloud_share=0.25).embed(["x"], MODEL)
    flow.send(None)
    send = flow.send(live())
    assert isinstance(send, Send) and send.node == "node-a" and send.timeout_s == pytest.approx(7.5)
    assert send.job.deadline_at == pytest.approx(clock.time() + 7.5) and send.job.budget_ms == 7500
    assert unpack(pack(send.job))["deadline"] == send.job.deadline_at  # the wire keeps the previous release's name
    clock.advance(7.5)  # the worker did not answer in its share
    effect = flow.send(None)
    assert isinstance(effect, Http) and effect.request.extensions["timeout"]["read"] == pytest.approx(2.5)


def test_an_embedding_answered_by_a_worker_is_returned() -> None:
    flow = policy(FakeClock()).embed(["x"], MODEL)
    flow.send(None)
    send = flow.send(live())
    assert isinstance(send, Send)
    result = result_of(flow, vectors(send.job.id))
    assert isinstance(result, EmbedResult) and result.source == "npu" and result.vectors.shape == (1, 384)


def test_a_spent_budget_asks_neither_a_worker_nor_the_cloud() -> None:
    clock = FakeClock()
    flow = policy(clock, cloud_base_url=CLOUD, deadline_s=0.2).embed(["x"], MODEL)
    assert isinstance(flow.send(None), ReadFleet)
    clock.advance(0.25)  # the fleet read took the whole budget
    with pytest.raises(NPUUnavailableError, match="budget was spent"):
        flow.send(live())


def test_a_generation_retry_gets_what_is_left_of_the_budget_not_a_new_one() -> None:
    clock = FakeClock()
    p = policy(clock, deadline_s=10, heartbeat_interval_s=0.05, generation_idle_s=5)
    flow = p.stream("hi", LLM)
    assert isinstance(flow.send(None), ReadFleet)
    first = flow.send(live())
    assert isinstance(first, Send) and first.timeout_s == 10
    assert unpack(pack(first.job)).get("budget_ms") == 10_000
    clock.advance(0.3)  # the worker admitted the job, then died before saying anything more
    assert isinstance(flow.send(StartReply(worker_id="w1")), Receive)
    assert flow.send(None) == IsAlive("w1")  # silence: the flow checks the worker's heartbeat
    assert isinstance(flow.send(False), ReadFleet)  # dead: the fleet is read afresh for a second attempt
    second = flow.send(live())
    assert isinstance(second, Send) and second.job.id != first.job.id
    assert second.timeout_s == pytest.approx(9.7)  # the same budget, less what the first attempt took
    effect = flow.send(StartReply(worker_id="w2"))
    assert isinstance(effect, Receive)
    assert flow.send(DeltaReply(delta="Hel")) == StreamChunk("Hel")
    assert isinstance(flow.send(None), Receive)
    result = result_of(flow, DoneReply(text="Hello", worker_id="w2"))
    assert isinstance(result, GenerateResult) and result.text == "Hello" and result.source == "npu"


def test_a_given_deadline_bounds_the_generation_and_a_late_start_is_cancelled() -> None:
    """`deadline_s` given: the job carries the whole budget (`run_ms`) for the worker to cut the generation
    at; a generation not started within the budget is cancelled, so no worker starts it late."""
    clock = FakeClock()
    p = policy(clock, deadline_s=30)
    flow = p.stream("hi", LLM, deadline_s=2)
    assert isinstance(flow.send(None), ReadFleet)
    send = flow.send(live())
    assert isinstance(send, Send) and unpack(pack(send.job)).get("run_ms") == 2000
    clock.advance(2)
    assert flow.send(None) == Cancel(send.job, "deadline")
    with pytest.raises(NPUUnavailableError):
        flow.send(None)
    default = p.stream("hi", LLM)  # the setting's default bounds only the wait for a start
    effect = default.send(None)
    effect = default.send(live()) if isinstance(effect, ReadFleet) else effect
    assert isinstance(effect, Send) and effect.job.run_ms is None


def test_a_generation_whose_worker_died_twice_goes_to_the_cloud() -> None:
    flow = policy(FakeClock(), cloud_base_url=CLOUD).stream("hi", LLM)
    flow.send(None)
    for _ in range(2):
        assert isinstance(flow.send(live()), Send)
        flow.send(StartReply(worker_id="w1"))
        assert isinstance(flow.send(None), IsAlive)
        effect = flow.send(False)
    assert isinstance(effect, Http)
    chunk = flow.send(_response(effect, {"choices": [{"message": {"content": "from the cloud"}}]}))
    assert chunk == StreamChunk("from the cloud")
    result = result_of(flow, None)
    assert result.source == "cloud" and result.fallback_reason == "worker_lost"


def test_after_text_was_streamed_a_lost_worker_or_redis_is_an_error_not_a_retry() -> None:
    for cut in (WorkerLostError, redis.ConnectionError):
        flow = policy(FakeClock(), cloud_base_url=CLOUD).stream("hi", LLM)
        flow.send(None)
        flow.send(live())
        assert isinstance(flow.send(StartReply(worker_id="w1")), Receive)
        assert flow.send(DeltaReply(delta="Once")) == StreamChunk("Once")
        assert isinstance(flow.send(None), Receive)
        with pytest.raises(cut):
            if cut is WorkerLostError:
                assert flow.send(None) == IsAlive("w1")
                flow.send(False)
            else:
                flow.throw(redis.ConnectionError("gone"))


@pytest.mark.parametrize("cloud", [True, False])
def test_redis_down_goes_to_the_cloud_or_raises_at_once(cloud: bool) -> None:
    flow = policy(FakeClock(), cloud_base_url=CLOUD if cloud else None).embed(["x"], MODEL)
    flow.send(None)
    if not cloud:
        with pytest.raises(redis.ConnectionError):
            flow.throw(redis.ConnectionError("refused"))
        return
    effect = flow.throw(redis.ConnectionError("refused"))
    assert isinstance(effect, Http)
    result = result_of(flow, _response(effect, {"data": [{"index": 0, "embedding": [0.0] * 384}]}))
    assert result.fallback_reason == "redis_unavailable"


def test_under_sentinel_a_sent_job_is_resubmitted_every_pause_while_its_budget_lasts() -> None:
    clock = FakeClock()
    flow = policy(clock, deadline_s=1.0, redis_sentinels=["127.0.0.1:26379"]).embed(["x"], MODEL)
    flow.send(None)
    send = flow.send(live())
    assert isinstance(send, Send)
    sends = [send]
    while True:
        clock.advance(0.1)  # the failed round trip
        try:
            effect = flow.throw(redis.ConnectionError("master gone"))
        except redis.ConnectionError:
            break
        assert effect == Pause(RESUBMIT_PAUSE_S)
        clock.advance(RESUBMIT_PAUSE_S)
        assert flow.send(None) == ReadFleet(MODEL)  # routes were forgotten: the fleet is read afresh
        again = flow.send(live())
        assert isinstance(again, Send) and again.job.id == send.job.id  # the same job: idempotent
        sends.append(again)
    assert len(sends) == 4  # 1 s: sent at 0, 0.3, 0.6 and 0.9; at 1.0 no budget is left to wait
    assert all(b.timeout_s < a.timeout_s for a, b in zip(sends, sends[1:], strict=False))


def test_a_bulk_job_passes_the_same_checks_and_routing() -> None:
    p = policy(FakeClock(), max_bulk_queue=5)
    flow = p.submit_embed(["x"], None, rq_options={"result_ttl": 60})
    assert flow.send(None) == ReadFleet(MODEL)
    assert flow.send(live()) == QueueLength(p.keys.queue(MODEL, "node-a"))
    enqueue = flow.send(0)
    assert isinstance(enqueue, Enqueue) and enqueue.task == EMBED_TASK and enqueue.kwargs["texts"] == ["x"]
    assert enqueue.options["result_ttl"] == 60 and enqueue.options["job_timeout"] == p.settings.bulk_job_timeout_s
    job = RQJob("job-1", connection=redis.Redis())  # never connects: the flow only hands it back
    assert result_of(flow, job) is job
    full = p.submit_embed(["x"], None, rq_options={})
    assert isinstance(full.send(None), QueueLength)  # the fleet was cached by the first call
    with pytest.raises(OverloadedError):
        full.send(5)
    with pytest.raises(InvalidInputError):
        p.submit_embed([], None, rq_options={}).send(None)  # refused before anything is read or queued


def _response(effect: Effect[object], body: dict[str, Any]) -> httpx.Response:
    assert isinstance(effect, Http)
    return httpx.Response(200, json=body, request=effect.request)
