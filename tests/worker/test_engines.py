"""The table of engines: an engine added by one entry serves both lanes, through the one embedding batch path.

The engine here is a stand-in (no OpenVINO: what is tested is the dispatch by task, not inference); the
worker, its lanes, Redis and RQ are the real ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pytest
from rq.job import JobStatus

from dispatcher import Dispatcher
from dispatcher.errors import InvalidInputError, NPUError
from dispatcher.models import ModelSpec, Registry
from dispatcher.settings import Settings
from worker import engines
from worker.main import Worker

MODEL = "all-minilm-l6-v2"
DIM = 384
REFUSED = "refuse me"


class Halves:
    """An embedding engine whose vectors are all 0.5; it refuses one text."""

    task: Literal["embedding"] = "embedding"

    def __init__(self, spec: ModelSpec):
        self.spec, self.device, self.warmed = spec, "CPU", False

    def warm_up(self) -> None:
        self.warmed = True

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def check(self, texts: list[str], truncate: bool, counts: list[int] | None = None,
              max_total: int | None = None) -> tuple[list[int], list[bool]]:
        if REFUSED in texts:
            raise InvalidInputError("this engine refuses that text")
        return (self.count_tokens(texts) if counts is None else counts), [False] * len(texts)

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.full((len(texts), DIM), 0.5, dtype=np.float32)


@pytest.fixture
def halves_worker(isolated: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, Worker]]:
    monkeypatch.setitem(engines.ENGINES, ("embedding", "halves"), lambda spec, settings: Halves(spec))
    monkeypatch.setitem(engines.DEFAULT_ENGINE, "embedding", "halves")
    s = isolated.model_copy(update={"bulk_poll_ms": 10})
    w = Worker(s, models=[MODEL])
    loop = threading.Thread(target=w.run, name="worker-loop")
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while not w.heartbeat.beats:
            assert time.monotonic() < deadline and loop.is_alive(), "the worker never beat"
            time.sleep(0.01)
        yield s, w
    finally:
        w.request_stop()
        loop.join(timeout=30)
    assert not loop.is_alive()


def test_an_engine_added_by_one_entry_serves_both_lanes(halves_worker: tuple[Settings, Worker]) -> None:
    s, w = halves_worker
    engine = w.served[MODEL]
    assert isinstance(engine, Halves) and engine.warmed
    d = Dispatcher(s)
    result = d.embed(["one two three", "four"], MODEL, allow_cloud=False, deadline_s=10)
    assert result.source == "npu" and result.token_counts == [3, 1]
    assert np.allclose(result.vectors, 0.5) and result.vectors.shape == (2, DIM)
    with pytest.raises(NPUError, match="refuses"):
        d.embed([REFUSED], MODEL, allow_cloud=False, deadline_s=10)

    ok, refused = d.submit_embed(["five six"], MODEL, result_ttl=60), d.submit_embed([REFUSED], MODEL, result_ttl=60)
    deadline = time.monotonic() + 20
    while not (ok.get_status() in (JobStatus.FINISHED, JobStatus.FAILED)
               and refused.get_status() in (JobStatus.FINISHED, JobStatus.FAILED)):
        assert time.monotonic() < deadline, "the bulk jobs were not run"
        time.sleep(0.05)
    assert ok.get_status() == JobStatus.FINISHED
    body = ok.latest_result().return_value
    assert np.allclose(body["embeddings"], 0.5) and body["usage"]["total_tokens"] == 2
    assert refused.get_status() == JobStatus.FAILED and "refuses" in (refused.latest_result().exc_string or "")


def test_an_engine_name_not_in_the_table_is_refused_with_the_known_ones(settings: Settings) -> None:
    spec = Registry.load(settings).get(MODEL)
    with pytest.raises(ValueError, match="no engine 'fixed-shape' for task 'embedding'; known: .*text-embedding"):
        engines.build(spec, settings, name="fixed-shape")
