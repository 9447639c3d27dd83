"""A worker drops a job its caller stopped waiting for, measured on Redis's clock, never on the caller's."""

from __future__ import annotations

import time

from dispatcher.protocol import EmbeddingReply, Job, Keys, pack, read_reply, unpack
from dispatcher.settings import Settings
from tests.conftest import WorkerProcess

MODEL = "all-minilm-l6-v2"


def _job(keys: Keys, **fields: object) -> Job:
    job = Job(kind="embed", model=MODEL, reply="", texts=["budget"], **fields)  # type: ignore[arg-type]
    job.reply = keys.reply(job.id)
    return job


def test_the_budget_runs_on_redis_clock_from_when_the_job_was_queued(isolated: Settings) -> None:
    r, keys = isolated.redis(), Keys(isolated.key_prefix)
    proc = WorkerProcess(isolated, models=[MODEL])
    try:
        proc.wait_live()
        seconds, micros = r.time()
        redis_ms = seconds * 1000 + micros // 1000
        # Queued 10 s ago (by Redis's clock) with a 5 s budget: its caller is gone, whatever its clock says.
        late = _job(keys, deadline=time.time() + 3600, budget_ms=5000)
        r.xadd(keys.stream(MODEL), {"j": pack(late)}, id=f"{redis_ms - 10_000}-0")
        # A caller whose wall clock is an hour behind, with a 30 s budget: still waiting, so it is served.
        skewed = _job(keys, deadline=time.time() - 3600, budget_ms=30_000)
        r.xadd(keys.stream(MODEL), {"j": pack(skewed)})
        answer = r.blpop([skewed.reply], timeout=15)
        assert answer is not None and isinstance(read_reply(unpack(answer[1])), EmbeddingReply)
        assert r.blpop([late.reply], timeout=1) is None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (proc.beat().counters.get("dropped_late")):
            time.sleep(0.3)
        assert proc.beat().counters.get("dropped_late") == 1
    finally:
        proc.stop()
