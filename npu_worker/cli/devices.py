"""`npu-worker devices`: the first command on a new NPU box. What OpenVINO sees, and where each registered
model really compiles (a dry compile, through the compiled-model cache), with why earlier devices refused."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from dispatcher.settings import Settings, get_settings

from .app import console
from .checks import configure_logging

ACCEL = "/dev/accel/accel0"
"""The device node the Linux NPU driver (intel_vpu) creates."""


def missing_npu(present: list[str]) -> str | None:
    """Why there is no NPU, in one line, or None when OpenVINO sees one."""
    if any(d.upper().startswith("NPU") for d in present):
        return None
    if not os.path.exists(ACCEL):
        why = f"no {ACCEL} (the Linux NPU driver, intel_vpu, is not loaded or this machine has no NPU)"
    elif not os.access(ACCEL, os.R_OK | os.W_OK):
        why = f"{ACCEL} is there but this user may not open it (add the user to the `render` group)"
    else:
        why = f"{ACCEL} is there but OpenVINO's NPU plugin found no device (check the driver's version)"
    fallback = next((d for d in present if not d.upper().startswith("NPU")), "CPU")
    return f"no NPU found: {why}; models run on {fallback}"


def report(settings: Settings, names: list[str] | None = None, compile_models: bool = True) -> dict[str, object]:
    """Devices and, per model, the device it compiles on, its engine and the earlier devices' refusals."""
    import openvino as ov

    from dispatcher.models import Registry
    from worker.devices import inventory, refusals
    from worker.engines import build, engine_name
    from worker.precision import npu_warning

    devices = inventory()
    models: list[dict[str, object]] = []
    registry = Registry.load(settings)
    for name in (names or registry.names) if compile_models else []:
        spec = registry.get(name)
        entry: dict[str, object] = {"model": name, "task": spec.task, "precision": spec.precision}
        try:
            engine = build(spec, settings)
            entry |= {"device": engine.device, "engine": engine_name(engine),
                      "warning": npu_warning(spec, engine.device)}
            del engine
        except Exception as exc:  # a model no device takes, or a missing directory: shown, not fatal
            entry |= {"device": None, "error": str(exc).splitlines()[0][:300]}
        entry["refused"] = refusals(name)
        models.append(entry)
    return {"openvino": ov.get_version(), "chain": settings.devices, "devices": devices,
            "no_npu": missing_npu([str(d["device"]) for d in devices]),
            "cache": str(settings.compile_cache) if settings.compile_cache else None, "models": models}


def _memory(value: object) -> str:
    return f"{int(value) / 2**30:.1f} GiB" if isinstance(value, int) else "host memory"


def devices(
    model: Annotated[list[str] | None, typer.Option(help="Only this model (repeatable).")] = None,
    compile_models: Annotated[bool, typer.Option("--compile/--no-compile",
                                                 help="Compile each model on its device chain.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """The OpenVINO devices present (name, plugin version, memory) and, for each registered model, the
    device of NPU_DEVICES it compiles on, its engine, and why each earlier device refused it."""
    settings = get_settings()
    configure_logging(settings)
    with console.status("compiling each model on its device chain (an NPU takes a while the first time) ..."):
        found = report(settings, model, compile_models)
    if as_json:
        print(json.dumps(found, indent=2))
        return
    print(f"OpenVINO {found['openvino']}")
    for d in found["devices"]:  # type: ignore[attr-defined]
        print(f"  {d['device']:<6} {d['full_name']}  [{d['plugin']}; {_memory(d['memory_bytes'])}]")
    if found["no_npu"]:
        print(found["no_npu"])
    print(f"compiled-model cache: {found['cache'] or 'off (NPU_CACHE_DIR)'}")
    if found["models"]:
        print(f"models (device chain {found['chain']}):")
    for m in found["models"]:  # type: ignore[attr-defined]
        where = f"{m['device']} ({m['engine']})" if m.get("device") else f"no device: {m.get('error')}"
        print(f"  {m['model']:<24} {where}  weights {m['precision'] or '?'}")
        for device, reason in m["refused"].items():
            print(f"      {device} refused: {reason}")
        if m.get("warning"):
            print(f"      warning: {m['warning']}")
