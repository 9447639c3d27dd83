"""The worker's fair order in isolation (worker/fair.py): weights in work, priority inside an app, no credit
banked by an idle app, generation admissions by count. The real worker's order: test_fairness.py."""

from __future__ import annotations

from dispatcher.protocol import Job
from worker.fair import FairQueue, Held, work_of


def _held(app: str, texts: int = 1, kind: str = "embed", max_tokens: int | None = None) -> Held:
    job = Job(kind=kind, model="m", reply="r", deadline_at=0, app=app,  # type: ignore[arg-type]
              texts=["x"] * texts if kind == "embed" else None, prompt="p" if kind == "generate" else None,
              max_tokens=max_tokens)
    return Held("s", b"0-1", job, work_of(job))


def _apps(batch: list[Held]) -> list[str]:
    return [h.job.app or "" for h in batch]


def test_weights_share_a_batch_in_texts() -> None:
    q = FairQueue({"a": 1.0, "b": 3.0}.__getitem__)
    for _ in range(20):
        q.add("a", False, _held("a", texts=4))
    for _ in range(80):
        q.add("b", False, _held("b"))
    batch = q.take(32)
    texts = {app: sum(h.work for h in batch if h.job.app == app) for app in ("a", "b")}
    assert texts == {"a": 8, "b": 24}


def test_low_priority_waits_for_its_apps_normal_work_only() -> None:
    q = FairQueue(lambda app: 1.0)
    q.add("a", True, _held("a"))
    q.add("a", False, _held("a", texts=2))
    q.add("b", True, _held("b"))
    batch = q.take(32)
    assert [(h.job.app, h.work) for h in batch][0] == ("a", 2)  # a's normal job before a's low one
    assert sorted(_apps(batch)) == ["a", "a", "b"]  # b's low job is not held back by a's work


def test_a_lone_app_fills_the_batch_and_an_idle_app_banks_no_credit() -> None:
    q = FairQueue(lambda app: 1.0)
    for _ in range(64):
        q.add("a", False, _held("a"))
    assert _apps(q.take(32)) == ["a"] * 32  # work-conserving
    for _ in range(8):
        q.add("b", False, _held("b"))
    batch = q.take(16)
    assert _apps(batch).count("b") == 8 and _apps(batch).count("a") == 8  # b starts now, not 32 texts ahead


def test_generation_admissions_by_count_in_token_order() -> None:
    q = FairQueue(lambda app: 1.0)
    for _ in range(4):
        q.add("a", False, _held("a", kind="generate", max_tokens=256))
        q.add("b", False, _held("b", kind="generate", max_tokens=32))
    admitted = q.take(1 << 30, max_jobs=4)
    assert len(admitted) == 4 and _apps(admitted).count("b") == 3  # b's short generations cost less
