"""Device choice: compile on each device of the chain in turn and keep the first that works.

`AUTO` alone is not relied on: on machines without an NPU compiler, `LLMPipeline` with `NPU` or
`AUTO:NPU,CPU` raises instead of falling back, so every pipeline is built device by device.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_PATH = re.compile(r"/(?:[^\s\"':/]+/)+([^\s\"':/]+)")
"""A file path in an OpenVINO message: only its last part is kept (the install's directories are noise)."""
_refused: dict[str, dict[str, str]] = {}
_failed: dict[str, dict[str, str]] = {}
"""Refusals of a chain no device of which took the model: an engine table may try the chain in runs (the NPU
with one engine, then GPU and CPU with another), and the next run's success reports them too."""
_refused_lock = threading.Lock()

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


def refusals(what: str) -> dict[str, str]:
    """Device -> why it refused `what` (a model name) at its last compile in this process, in chain order:
    what the heartbeat, `/health` and `npu-worker devices` show beside the device it runs on."""
    with _refused_lock:
        return dict(_refused.get(what, {}))


def first_that_compiles(build: Callable[[str], T], chain: list[str], what: str) -> tuple[T, str]:
    """Build on each device of the chain; return the first success and its device. Each earlier device's
    one-line refusal is kept (`refusals(what)`): an NPU box that runs a model on CPU must say why."""
    errors = []
    refused: dict[str, str] = {}
    for device in chain:
        try:
            built = build(device)
        except Exception as exc:  # OpenVINO raises plain RuntimeError for every kind of failure
            # OpenVINO's first lines are source locations; the last one says what went wrong.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = shortened(_PATH.sub(r"\1", lines[-1] if lines else repr(exc)))
            log.info("%s: %s unavailable (%s)", what, device, reason)
            errors.append(f"{device}: {reason}")
            refused[device] = reason
            continue
        log.info("%s: running on %s", what, device)
        with _refused_lock:
            _refused[what] = {**_failed.pop(what, {}), **refused}
        return built, device
    with _refused_lock:
        _failed[what] = {**_failed.get(what, {}), **refused}
        _refused[what] = dict(_failed[what])
    raise RuntimeError(f"{what}: no device of {chain} could run it; " + "; ".join(errors))


MEMORY_PROPERTIES = {"NPU": "NPU_DEVICE_TOTAL_MEM_SIZE", "GPU": "GPU_DEVICE_TOTAL_MEM_SIZE"}
"""The property each plugin reports its device memory in (bytes); the CPU plugin reports none."""


def _property(core: object, device: str, name: str) -> object | None:
    try:
        return core.get_property(device, name)  # type: ignore[attr-defined]
    except Exception:  # a plugin refuses a property it does not know with a plain RuntimeError
        return None


def device_memory_bytes(device: str, core: object | None = None) -> int | None:
    """The device's own memory where its plugin reports it (NPU, GPU), else None (use host memory)."""
    import openvino as ov

    prop = MEMORY_PROPERTIES.get(device.split(".")[0].upper())
    if prop is None:
        return None
    value = _property(core or ov.Core(), device, prop)
    return int(value) if isinstance(value, int) and value > 0 else None


def inventory() -> list[dict[str, object]]:
    """The OpenVINO devices present: name, full name, plugin version, memory where reported."""
    import openvino as ov

    core = ov.Core()
    found = []
    for device in core.available_devices:
        versions = core.get_versions(device)
        version = next(iter(versions.values()), None)
        found.append({"device": device, "type": device_type(device),
                      "full_name": str(_property(core, device, "FULL_DEVICE_NAME") or device),
                      "plugin": f"{version.description} {version.build_number}" if version else "",
                      "memory_bytes": device_memory_bytes(device, core)})
    return found
