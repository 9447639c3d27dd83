"""Routing obeys the load-balancing setting, with two real worker processes posing as two nodes."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dispatcher import Dispatcher
from dispatcher.nodes import LoadBalancing
from dispatcher.protocol import Job, Keys, pack
from dispatcher.settings import Settings
from tests.conftest import ADMIN_TOKEN, WorkerProcess, as_operator

MODEL = "all-minilm-l6-v2"


@pytest.fixture
def two_nodes(isolated: Settings) -> Iterator[tuple[Settings, str, str, WorkerProcess, WorkerProcess]]:
    a, b = f"{isolated.key_prefix}-a", f"{isolated.key_prefix}-b"
    procs = [WorkerProcess(isolated.model_copy(update={"node_id": node}), models=[MODEL], NPU_HEARTBEAT_TTL_S="3",
                           NPU_HEARTBEAT_INTERVAL_S="0.5") for node in (a, b)]
    try:
        for proc in procs:
            proc.wait_live()
        yield isolated, a, b, procs[0], procs[1]
    finally:
        for proc in procs:
            proc.stop()


def set_strategy(settings: Settings, setting: LoadBalancing) -> None:
    settings.redis().set(Keys(settings.key_prefix).load_balancing, setting.model_dump_json())


def served_by(d: Dispatcher, n: int) -> list[str]:
    out = []
    for i in range(n):
        result = d.embed([f"request {i}"], MODEL, deadline_s=5)
        assert result.source == "npu"
        out.append(result.node_id or "")
        d.policy.forget_routes()  # read the fleet afresh each time (it is cached for half a second)
    return out


def test_round_robin_alternates_nodes(two_nodes: tuple) -> None:
    settings, a, b, *_ = two_nodes
    set_strategy(settings, LoadBalancing(strategy="round-robin"))
    nodes = served_by(Dispatcher(settings), 20)
    assert Counter(nodes) == {a: 10, b: 10}
    assert all(x != y for x, y in zip(nodes, nodes[1:], strict=False))  # strictly alternating


def test_least_loaded_avoids_a_backed_up_node(two_nodes: tuple) -> None:
    settings, a, b, *_ = two_nodes
    set_strategy(settings, LoadBalancing(strategy="least-loaded"))
    keys, r = Keys(settings.key_prefix), settings.redis()
    texts = ["a fairly long sentence that keeps the worker busy for a while"] * 32
    pipe = r.pipeline(transaction=False)
    for _ in range(400):  # seconds of work queued on node a's own stream
        job = Job(kind="embed", model=MODEL, reply=keys.reply(f"backlog-{os.urandom(4).hex()}"),
                  deadline=time.time() + 120, texts=texts)
        pipe.xadd(keys.stream(MODEL, a), {"j": pack(job)})
    pipe.execute()
    time.sleep(1.5)  # the next heartbeats report the backlog
    nodes = served_by(Dispatcher(settings), 10)
    assert set(nodes) == {b}


def test_model_affinity_never_leaves_its_list(two_nodes: tuple) -> None:
    settings, a, b, *_ = two_nodes
    set_strategy(settings, LoadBalancing(strategy="model-affinity", modelAffinity={MODEL: [b]}))
    assert set(served_by(Dispatcher(settings), 20)) == {b}


def test_a_dead_node_drops_out_of_routing(two_nodes: tuple) -> None:
    settings, a, b, _, proc_b = two_nodes
    set_strategy(settings, LoadBalancing(strategy="round-robin"))
    d = Dispatcher(settings)
    assert set(served_by(d, 4)) == {a, b}
    proc_b.proc.send_signal(signal.SIGKILL)
    proc_b.proc.wait()
    time.sleep(3.5)  # its heartbeat TTL
    started = time.monotonic()
    assert set(served_by(d, 10)) == {a}
    assert time.monotonic() - started < 5  # no request waited for a dead node


def test_unload_and_load_change_what_status_reports(two_nodes: tuple) -> None:
    settings, a, *_ = two_nodes
    with as_operator(TestClient(create_app(settings)), ADMIN_TOKEN) as c:
        assert MODEL in c.get(f"/api/nodes/{a}/npu/status").json()["loadedModels"]
        assert c.post(f"/api/nodes/{a}/models/{MODEL}/unload").json() == {"node_id": a, "models": []}
        deadline = time.monotonic() + 10
        while MODEL in c.get(f"/api/nodes/{a}/npu/status").json()["loadedModels"]:
            assert time.monotonic() < deadline, "unload not applied"
            time.sleep(0.2)
        assert c.post(f"/api/nodes/{a}/models/{MODEL}/load").json()["models"] == [MODEL]
        deadline = time.monotonic() + 20
        while MODEL not in c.get(f"/api/nodes/{a}/npu/status").json()["loadedModels"]:
            assert time.monotonic() < deadline, "load not applied"
            time.sleep(0.2)
        details = c.get(f"/api/nodes/{a}/npu/details").json()
        assert {m["name"]: m["loaded"] for m in details["models"]}[MODEL] is True
