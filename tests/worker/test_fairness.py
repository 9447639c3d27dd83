"""Fair share where the jobs wait: a real worker serves apps' queued jobs in proportion to their weights,
counted in texts, whatever the order and length of their queues (worker/fair.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from dispatcher.protocol import Job, Keys, app_tag, pack, unpack
from dispatcher.settings import Settings
from tests.conftest import WorkerProcess

MODEL = "all-minilm-l6-v2"


@pytest.fixture
def apps(settings: Settings, worker: WorkerProcess) -> Iterator[Keys]:
    """Apps A (weight 1) and B (weight 3, for the weighted case), known to the worker before a test queues."""
    r, keys = settings.redis(), Keys(settings.key_prefix)
    r.hset(keys.apps, mapping={"fair-a": 1, "fair-b": 3, "fair-c": 1})
    # The worker reads the apps at its next beat: a job on each app's stream answered says it reads them.
    probe = keys.reply(f"probe-{uuid.uuid4().hex}")
    _queue(r, keys, [("fair-a", 1, 1), ("fair-b", 1, 1), ("fair-c", 1, 1)], probe)
    _wait(r, probe, 3, timeout=15)
    yield keys
    r.hdel(keys.apps, "fair-a", "fair-b", "fair-c")


def _queue(r: redis.Redis, keys: Keys, groups: list[tuple[str, int, int]], reply: str) -> None:
    """Queue (app, jobs, texts per job) groups in that order, in one transaction, so the worker's next read
    sees every app's whole queue at once."""
    pipe = r.pipeline(transaction=True)
    for app, jobs, texts in groups:
        for i in range(jobs):
            job = Job(kind="embed", model=MODEL, reply=reply, deadline_at=time.time() + 60, budget_ms=60_000,
                      texts=[f"{app} text {i} {t}" for t in range(texts)], app=app)
            pipe.xadd(keys.stream(MODEL, None, app_tag(app)), {"j": pack(job)})
    pipe.execute()


def _wait(r: redis.Redis, reply: str, n: int, timeout: float = 60) -> list[dict[str, object]]:
    end = time.monotonic() + timeout
    while r.llen(reply) < n:
        assert time.monotonic() < end, f"{r.llen(reply)} of {n} replies"
        time.sleep(0.05)
    replies = [unpack(raw) for raw in r.lrange(reply, 0, -1)]
    r.delete(reply)
    assert all(rep["ok"] for rep in replies), replies
    return replies


def test_a_lone_app_is_served_within_the_first_batch_behind_a_long_queue(settings: Settings, apps: Keys) -> None:
    """A's 64 single-text jobs were queued before B's 4; FIFO would serve B's last (64-67). Equal weights:
    B's 4 go in the next batch after the one running, interleaved with A's."""
    order = _served(settings, apps, [("fair-a", 64, 1)], [("fair-c", 4, 1)])
    positions = [i for i, app in enumerate(order) if app == "fair-c"]
    assert len(positions) == 4 and max(positions) < 64 - 8, positions


def test_weights_share_batches_in_proportion_counted_in_texts(settings: Settings, apps: Keys) -> None:
    """B (weight 3) and A (weight 1) both with long queues: in the first 64 texts served, B has ~3/4. A's
    jobs hold 4 texts each, so counting requests instead of texts would give A 4 times its share."""
    order = _served(settings, apps, [("fair-a", 16, 4), ("fair-b", 64, 1)])
    texts = {"fair-a": 4, "fair-b": 1}
    served = {"fair-a": 0, "fair-b": 0}
    total = 0
    for app in order:  # an idle worker's blocking read takes the first stream that got entries: A's
        total += texts[app]
        if 32 < total <= 96:  # so count from the second batch
            served[app] += texts[app]
    assert 44 <= served["fair-b"] <= 52, served  # 48 is the exact 3:1 share


def test_a_single_app_takes_whole_batches(settings: Settings, apps: Keys) -> None:
    """Work-conserving: with one app queued, batches are full (fairness never holds a batch back)."""
    r = settings.redis()
    reply = apps.reply(f"fair-{uuid.uuid4().hex}")
    _queue(r, apps, [("fair-a", 96, 1)], reply)
    replies = _wait(r, reply, 96)
    assert max(int(rep["batch_size"]) for rep in replies) == 32  # type: ignore[call-overload]


def _served(settings: Settings, keys: Keys, *queued: list[tuple[str, int, int]]) -> list[str]:
    """The apps of the jobs in the order the worker answered them (one reply list, pushed batch by batch);
    each list of (app, jobs, texts per job) is queued in one transaction, one after the other."""
    r = settings.redis()
    reply = keys.reply(f"fair-{uuid.uuid4().hex}")
    app_of: dict[str, str] = {}
    for groups in queued:
        pipe = r.pipeline(transaction=True)
        for app, jobs, texts in groups:
            for i in range(jobs):
                job = Job(kind="embed", model=MODEL, reply=reply, deadline_at=time.time() + 60, budget_ms=60_000,
                          texts=[f"{app} text {i} {t}" for t in range(texts)], app=app)
                app_of[job.id] = app
                pipe.xadd(keys.stream(MODEL, None, app_tag(app)), {"j": pack(job)})
        pipe.execute()
    replies = _wait(r, reply, len(app_of))
    return [app_of[str(rep["job"])] for rep in replies]


def test_an_apps_low_priority_jobs_wait_for_its_normal_ones(settings: Settings, apps: Keys) -> None:
    """A's low jobs were queued before its normal ones (while the worker was busy with C's): A's normal jobs
    are all answered before any of its low ones."""
    r = settings.redis()
    reply = apps.reply(f"fair-{uuid.uuid4().hex}")
    kinds: dict[str, str] = {}
    for groups in ([("fair-c", 64, "normal")], [("fair-a", 8, "low"), ("fair-a", 8, "normal")]):
        pipe = r.pipeline(transaction=True)
        for app, jobs, level in groups:
            for i in range(jobs):
                job = Job(kind="embed", model=MODEL, reply=reply, deadline_at=time.time() + 60, budget_ms=60_000,
                          texts=[f"{app} {level} {i}"], app=app, priority=level)  # type: ignore[arg-type]
                kinds[job.id] = f"{app}:{level}"
                pipe.xadd(apps.stream(MODEL, None, app_tag(app, level)), {"j": pack(job)})
        pipe.execute()
    order = [kinds[str(rep["job"])] for rep in _wait(r, reply, len(kinds))]
    a = [kind for kind in order if kind.startswith("fair-a")]
    assert a == ["fair-a:normal"] * 8 + ["fair-a:low"] * 8, order


def test_a_backend_names_its_app_and_a_worker_starts_reading_its_streams(settings: Settings,
                                                                        worker: WorkerProcess) -> None:
    """`as_app` with a name no facade configured: the first job registers the app (weight 1, never over a
    configured weight) and is answered once the worker has read the apps at its next beat."""
    from dispatcher import Dispatcher
    from dispatcher.apps import as_app

    keys, r = Keys(settings.key_prefix), settings.redis()
    name = f"backend-{uuid.uuid4().hex[:6]}"
    r.hset(keys.apps, "configured-app", 5)
    d = Dispatcher(settings)
    try:
        with as_app(name):
            result = d.embed(["a backend's text"], MODEL, deadline_s=20)
        assert result.source == "npu" and result.vectors.shape == (1, 384)
        with as_app("configured-app"):
            d.embed(["another"], MODEL, deadline_s=20)
    finally:
        d.close()
    assert r.hget(keys.apps, name) == b"1" and r.hget(keys.apps, "configured-app") == b"5"
    assert r.xlen(keys.stream(MODEL, settings.node_id, name)) == 0  # routed to the node's stream of the app, done
    r.hdel(keys.apps, name, "configured-app")
