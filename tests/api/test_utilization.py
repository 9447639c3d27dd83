"""One utilization figure: a worker's heartbeat, its node's status, the node list, the history sample and
`/health` agree, because they all come from `dispatcher.protocol.utilization`."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dispatcher.fleet import Load
from dispatcher.protocol import GROUP, Heartbeat, Keys, utilization
from dispatcher.settings import Settings
from tests.conftest import ADMIN_TOKEN, WorkerProcess, as_operator

MODEL = "all-minilm-l6-v2"
WAITING = 8
"""Jobs left in the model's stream behind the workers' group: counted as queued, never delivered."""


def beat(worker_id: str, node_id: str, bulk: int, running: int, max_concurrent: int = 32) -> Heartbeat:
    depths = {MODEL: {"interactive": 3, "bulk": bulk}}
    queued = sum(d["interactive"] + d["bulk"] for d in depths.values())
    return Heartbeat(worker_id=worker_id, node_id=node_id, pid=1, started=0, at=time.time(), models={MODEL: "cpu"},
                     devices={MODEL: "CPU"}, max_concurrent=max_concurrent, memory_gb=8, queue_depth=queued,
                     queue_depths=depths, running=running, utilization=utilization(queued, running, max_concurrent),
                     busy_fraction=0, counters={})


def test_a_node_counts_its_shared_queues_once_and_sums_its_workers() -> None:
    # Two workers of one node see the same shared queues (3 + 5 waiting); 2 + 4 jobs run; 16 + 32 slots.
    load = Load.of([beat("a", "n", bulk=5, running=2, max_concurrent=16), beat("b", "n", bulk=5, running=4)])
    assert (load.queued, load.running, load.max_concurrent) == (8, 6, 48)
    assert load.utilization == utilization(8, 6, 48) == 29.2
    assert Load.of([]).utilization == 0.0


@pytest.fixture
def loaded_worker(isolated: Settings) -> Iterator[WorkerProcess]:
    """A worker of its own prefix whose model has WAITING jobs queued that it will never take: added to the
    stream before the consumer group, made here at the stream's end (`$`), so its depth stays put."""
    r, keys = isolated.redis(), Keys(isolated.key_prefix)
    for i in range(WAITING):
        r.xadd(keys.stream(MODEL), {"n": i})
    r.xgroup_create(keys.stream(MODEL), GROUP, id="$")
    proc = WorkerProcess(isolated, models=[MODEL])
    proc.wait_live()
    deadline = time.monotonic() + 30
    while (b := proc.beat()) is None or b.queue_depths[MODEL]["interactive"] != WAITING:
        assert time.monotonic() < deadline, "the heartbeat never counted the waiting jobs"
        time.sleep(0.2)
    yield proc
    proc.stop()


def test_heartbeat_node_status_and_health_agree(isolated: Settings, loaded_worker: WorkerProcess) -> None:
    with as_operator(TestClient(create_app(isolated)), ADMIN_TOKEN) as c:
        health = c.get("/health").json()
        status = c.get(f"/api/nodes/{isolated.node_id}/npu/status").json()
        node = next(n for n in c.get("/api/fleet/nodes").json()["nodes"] if n["id"] == isolated.node_id)
        history = c.get(f"/api/nodes/{isolated.node_id}/npu/details").json()["history"]
    worker = loaded_worker.beat()
    assert worker is not None and worker.running == 0
    expected = utilization(WAITING, 0, worker.max_concurrent)
    assert expected > 0
    assert worker.utilization == expected
    assert status["capabilities"]["utilization"] == expected and status["queueDepth"] == WAITING
    assert node["utilization"] == expected
    assert health["utilization"] == expected and health["queue_depth"] == WAITING
    assert history and history[-1][1] == expected  # the sampler that ran when the app started
