"""Narrow unit tests: key names, codec, registry, input checks (no Redis, no OpenVINO)."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from dispatcher.client import Dispatcher
from dispatcher.errors import InputTooLargeError, InvalidInputError, ModelNotFoundError
from dispatcher.models import Registry
from dispatcher.protocol import (
    EmbeddingReply,
    Heartbeat,
    Job,
    Keys,
    KVCache,
    MsgpackSerializer,
    pack,
    read_reply,
    unpack,
)
from dispatcher.settings import Settings


def test_keys_follow_the_design_card() -> None:
    k = Keys("npu")
    assert k.stream("all-minilm-l6-v2") == "npu:stream:all-minilm-l6-v2"
    assert k.stream("m", "node-1") == "npu:stream:m@node-1"
    assert k.queue("m") == "npu:m"
    assert k.queue("m", "node-1") == "npu:m@node-1"


def test_job_and_reply_survive_the_codec() -> None:
    job = Job(kind="embed", model="m", reply="r", deadline=1.5, texts=["a", "b"])
    assert Job.model_validate(unpack(pack(job))) == job
    reply = EmbeddingReply(vectors=b"\x00" * 8, dim=2)
    decoded = read_reply(unpack(pack(reply)))
    assert isinstance(decoded, EmbeddingReply) and decoded.matrix().shape == (1, 2)


def test_heartbeats_of_older_and_newer_workers_read_both_ways() -> None:
    """The memory fields are optional: a beat without them (an older worker) reads as None."""
    base = dict(worker_id="w", node_id="n", pid=1, started=0.0, at=1.0, models={}, devices={}, max_concurrent=1,
                memory_gb=1.0, queue_depth=0, queue_depths={}, running=0, utilization=0.0, busy_fraction=0.0,
                counters={})
    old = Heartbeat.model_validate(unpack(pack(base)))
    assert old.rss_bytes is None and old.kv_cache is None
    new = Heartbeat(**base, rss_bytes=123, kv_cache={"m": KVCache(configured_bytes=3, allocated_bytes=2, used_bytes=1)})
    read = Heartbeat.model_validate(unpack(pack(new)))
    assert read.rss_bytes == 123 and read.kv_cache == new.kv_cache
    # An older reader's Heartbeat is this one without the new fields; pydantic ignores unknown keys.
    assert Heartbeat.model_config.get("extra", "ignore") == "ignore"


def test_rq_serializer_round_trips_job_data() -> None:
    data = ("worker.tasks.embed", None, [], {"texts": ["x"], "model": "m"})
    assert MsgpackSerializer.loads(MsgpackSerializer.dumps(data)) == list(data)
    with pytest.raises(msgpack.ExtraData):  # not pickle: arbitrary bytes are not code
        MsgpackSerializer.loads(b"\x80\x04K\x01.")


def test_registry_has_bundled_models_and_merges_a_user_file(tmp_path: Path) -> None:
    extra = tmp_path / "models.toml"
    extra.write_text('[models.bge]\ntask = "embedding"\npath = "/srv/bge"\ndim = 384\n'
                     '[models.all-minilm-l6-v2]\nmax_input_tokens = 128\n')
    registry = Registry.load(Settings(state_dir=tmp_path, models_file=extra))
    assert registry.names == ["all-minilm-l6-v2", "bge", "smollm2-135m-instruct"]
    assert registry.get("all-minilm-l6-v2").max_input_tokens == 128
    assert registry.get("all-minilm-l6-v2").dim == 384
    assert registry.get("all-minilm-l6-v2").path == tmp_path / "models" / "all-minilm-l6-v2"
    assert registry.get("bge").path == Path("/srv/bge")
    with pytest.raises(ModelNotFoundError) as err:
        registry.get("nope")
    assert err.value.status == 404 and "bge" in err.value.extra["available"]


@pytest.fixture
def dispatcher() -> Dispatcher:
    return Dispatcher(Settings(max_texts=4, max_text_chars=10, max_new_tokens=50))


@pytest.mark.parametrize("texts, error, status", [
    ([], InvalidInputError, 422),
    ("not a list", InvalidInputError, 422),
    (["ok", ""], InvalidInputError, 422),
    (["ok", 3], InvalidInputError, 422),
    (["a"] * 5, InputTooLargeError, 413),
    (["x" * 11], InputTooLargeError, 413),
])
def test_text_checks(dispatcher: Dispatcher, texts: object, error: type, status: int) -> None:
    with pytest.raises(error) as err:
        dispatcher.check_texts(texts)
    assert err.value.status == status


def test_prompt_checks(dispatcher: Dispatcher) -> None:
    assert dispatcher.check_prompt("hi", 10, 0.5) == "hi"
    for prompt, max_tokens, temperature in [(" ", None, None), ("hi", 0, None), ("hi", 51, None),
                                            ("hi", None, 3.0), (None, None, None)]:
        with pytest.raises(InvalidInputError):
            dispatcher.check_prompt(prompt, max_tokens, temperature)


def test_wrong_task_is_refused(dispatcher: Dispatcher) -> None:
    with pytest.raises(InvalidInputError) as err:
        dispatcher.embed(["hi"], "smollm2-135m-instruct")
    assert err.value.code == "wrong_task"
