"""A device's refusal reason, as the worker logs it and raises it, is shortened at a word boundary."""

from __future__ import annotations

import pytest

from worker.devices import first_that_compiles


def test_a_long_refusal_is_cut_between_words() -> None:
    words = ["the", "compiler", "for", "this", "device", "is", "not", "installed", "on", "the", "machine"]
    message = " ".join(words * 8)  # about 500 characters, OpenVINO-sized

    def build(device: str) -> None:
        raise RuntimeError(f"src/plugin.cpp:42:\n{message}")

    with pytest.raises(RuntimeError) as caught:
        first_that_compiles(build, ["NPU"], "model")
    reason = str(caught.value).split("NPU: ", 1)[1]
    assert len(reason) <= 200 and reason.endswith(" ...")
    assert all(word in words for word in reason.removesuffix(" ...").split()), reason
