"""Device choice: compile on each device of the chain in turn and keep the first that works.

`AUTO` alone is not relied on: on machines without an NPU compiler, `LLMPipeline` with `NPU` or
`AUTO:NPU,CPU` raises instead of falling back, so every pipeline is built device by device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_TYPES = {"NPU": "intel-npu", "GPU": "intel-gpu", "NVIDIA": "nvidia-gpu", "CPU": "cpu"}


def device_type(device: str) -> str:
    """The fleet's name for an OpenVINO device string (`GPU.1` -> `intel-gpu`)."""
    return _TYPES.get(device.split(".")[0].split(":")[0].upper(), device.lower())


def parse_chain(chain: str) -> list[str]:
    devices = [d.strip().upper() for d in chain.split(",") if d.strip()]
    if not devices:
        raise ValueError("the device chain is empty")
    return devices


def shortened(reason: str, limit: int = 200) -> str:
    """At most `limit` characters, cut at a word boundary (a reason cut mid-word reads as a different word)."""
    if len(reason) <= limit:
        return reason
    cut = reason[:limit - 4].rsplit(" ", 1)[0] if " " in reason[:limit - 4] else reason[:limit - 4]
    return cut.rstrip(" ,;:") + " ..."


def first_that_compiles(build: Callable[[str], T], chain: list[str], what: str) -> tuple[T, str]:
    """Build on each device of the chain; return the first success and its device."""
    errors = []
    for device in chain:
        try:
            built = build(device)
        except Exception as exc:  # OpenVINO raises plain RuntimeError for every kind of failure
            # OpenVINO's first lines are source locations; the last one says what went wrong.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = shortened(lines[-1] if lines else repr(exc))
            log.info("%s: %s unavailable (%s)", what, device, reason)
            errors.append(f"{device}: {reason}")
            continue
        log.info("%s: running on %s", what, device)
        return built, device
    raise RuntimeError(f"{what}: no device of {chain} could run it; " + "; ".join(errors))
