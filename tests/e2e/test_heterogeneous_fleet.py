"""A heterogeneous fleet: node a serves both bundled models with max_concurrent 4, node b only the embedding
model with max_concurrent 16. Every strategy sends each model only where it is served, least-loaded
follows the load the heartbeats measure, and taking node b's npu-worker role away (fleet API) drains it."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dispatcher import Dispatcher
from dispatcher.nodes import LoadBalancing
from dispatcher.protocol import Job, Keys, pack, unpack
from dispatcher.settings import Settings
from tests.conftest import ADMIN_TOKEN, WorkerProcess, as_operator, live_beats
from tests.e2e.test_fleet_routing import served_by, set_strategy

EMBED = "all-minilm-l6-v2"
GENERATE = "smollm2-135m-instruct"
FAST_BEATS = {"NPU_HEARTBEAT_TTL_S": "3", "NPU_HEARTBEAT_INTERVAL_S": "0.5"}


@pytest.fixture(scope="module")
def fleet(redis_url: str, settings: Settings) -> Iterator[tuple[Settings, str, str]]:
    prefix = f"{settings.key_prefix}h{os.urandom(3).hex()}"
    s = settings.model_copy(update={"key_prefix": prefix, "node_id": f"{prefix}-a"})
    a, b = f"{prefix}-a", f"{prefix}-b"
    procs = [WorkerProcess(s, models=[EMBED, GENERATE], NPU_MAX_CONCURRENT="4", **FAST_BEATS),
             WorkerProcess(s.model_copy(update={"node_id": b}), models=[EMBED], NPU_MAX_CONCURRENT="16",
                           **FAST_BEATS)]
    try:
        for proc in procs:
            proc.wait_live()
        yield s, a, b
    finally:
        for proc in procs:
            proc.stop()
        from tests.conftest import _cleanup

        _cleanup(redis_url, prefix)


def generated_by(d: Dispatcher, n: int) -> set[str]:
    nodes = set()
    for i in range(n):
        result = d.generate(f"Say {i}.", GENERATE, max_tokens=2, deadline_s=30, allow_cloud=False)
        assert result.source == "npu"
        nodes.add(result.node_id or "")
        d.policy.forget_routes()
    return nodes


def test_the_nodes_report_their_own_models_and_capacity(fleet: tuple[Settings, str, str]) -> None:
    s, a, b = fleet
    beats = {beat.node_id: beat for beat in live_beats(s)}
    assert set(beats[a].models) == {EMBED, GENERATE} and beats[a].max_concurrent == 4
    assert set(beats[b].models) == {EMBED} and beats[b].max_concurrent == 16


@pytest.mark.parametrize("setting", [
    LoadBalancing(strategy="round-robin"),
    LoadBalancing(strategy="least-loaded"),
    LoadBalancing(strategy="model-affinity", modelAffinity={EMBED: ["A", "B"], GENERATE: ["A", "B"]}),
], ids=["round-robin", "least-loaded", "model-affinity"])
def test_each_strategy_sends_a_model_only_where_it_is_served(fleet: tuple[Settings, str, str],
                                                             setting: LoadBalancing) -> None:
    s, a, b = fleet
    if setting.strategy == "model-affinity":  # both nodes allowed for both models; b still lacks the generator
        setting = LoadBalancing(strategy="model-affinity", modelAffinity={EMBED: [a, b], GENERATE: [a, b]})
    set_strategy(s, setting)
    _wait_idle(s, a, b)  # least-loaded would rightly avoid a node still reporting the last test's work
    d = Dispatcher(s)
    embeds = Counter(served_by(d, 12))
    assert set(embeds) == {a, b}, embeds  # both serve it, and every strategy spreads an idle fleet's load
    assert generated_by(d, 3) == {a}


def _backlog(s: Settings, node: str, jobs: int) -> None:
    """Seconds of embedding work queued on one node's own stream; the next heartbeats report it."""
    keys, r = Keys(s.key_prefix), s.redis()
    texts = ["a fairly long sentence that keeps the worker busy for a while"] * 32
    pipe = r.pipeline(transaction=False)
    for _ in range(jobs):
        job = Job(kind="embed", model=EMBED, reply=keys.reply(f"backlog-{os.urandom(4).hex()}"),
                  deadline=time.time() + 120, texts=texts)
        pipe.xadd(keys.stream(EMBED, node), {"j": pack(job)})
    pipe.execute()


def _utilization(s: Settings, node: str) -> float:
    return max(beat.utilization for beat in live_beats(s) if beat.node_id == node)


def _wait_idle(s: Settings, *nodes: str) -> None:
    deadline = time.monotonic() + 20
    while any(_utilization(s, node) > 0 for node in nodes):
        assert time.monotonic() < deadline, "the fleet never went idle"
        time.sleep(0.1)


def test_least_loaded_follows_the_measured_load(fleet: tuple[Settings, str, str]) -> None:
    s, a, b = fleet
    set_strategy(s, LoadBalancing(strategy="least-loaded"))
    keys, r = Keys(s.key_prefix), s.redis()
    d = Dispatcher(s)
    _wait_idle(s, a, b)  # both measured idle first: the last test's work must not be what routing avoids
    for busy, idle in ((a, b), (b, a)):
        _backlog(s, busy, 200)
        deadline = time.monotonic() + 10
        while _utilization(s, busy) < 50:  # the heartbeats measure it
            assert time.monotonic() < deadline, "the backlog never showed in the heartbeats"
            time.sleep(0.2)
        assert set(served_by(d, 8)) == {idle}
        r.xtrim(keys.stream(EMBED, busy), maxlen=0)  # the backlog's work is not the point: drop it
        deadline = time.monotonic() + 20
        while _utilization(s, busy) > 0:
            assert time.monotonic() < deadline, "the node never went idle again"
            time.sleep(0.2)


def test_taking_the_role_away_drains_the_node(fleet: tuple[Settings, str, str]) -> None:
    s, a, b = fleet
    set_strategy(s, LoadBalancing(strategy="round-robin"))
    keys, r = Keys(s.key_prefix), s.redis()
    d = Dispatcher(s)
    with as_operator(TestClient(create_app(s)), ADMIN_TOKEN) as c:
        try:
            assert c.patch(f"/api/fleet/nodes/{b}", json={"roles": []}).status_code == 200
            deadline = time.monotonic() + 5
            while r.zcount(keys.live(EMBED), time.time(), "+inf") != 1:  # b leaves routing within a beat or two
                assert time.monotonic() < deadline, "the drained node stayed in routing"
                time.sleep(0.1)
            assert set(served_by(d, 10)) == {a}
            # Work already routed to b is still finished by b; the shared lane is left to a.
            replies = {}
            for stream, tag in ((keys.stream(EMBED, b), "routed"), (keys.stream(EMBED), "shared")):
                for i in range(4):
                    job = Job(kind="embed", model=EMBED, reply=keys.reply(f"drain-{tag}-{i}-{os.urandom(3).hex()}"),
                              deadline=time.time() + 30, texts=[f"{tag} {i}"])
                    r.xadd(stream, {"j": pack(job)})
                    replies[job.reply] = tag
            served = Counter()
            for key, tag in replies.items():
                raw = r.blpop([key], timeout=20)
                assert raw is not None, f"a {tag} job was not answered"
                served[(tag, unpack(raw[1])["node_id"])] += 1
            assert served == {("routed", b): 4, ("shared", a): 4}, served
            assert any(beat.node_id == b for beat in live_beats(s))  # drained, not dead
        finally:
            assert c.patch(f"/api/fleet/nodes/{b}", json={"roles": ["npu-worker"]}).status_code == 200
        deadline = time.monotonic() + 5
        while r.zcount(keys.live(EMBED), time.time(), "+inf") != 2:
            assert time.monotonic() < deadline, "the node did not come back when given its role again"
            time.sleep(0.1)
        assert set(served_by(d, 10)) == {a, b}
