"""What a facade says about itself: the `/health` and `/models` answers. One contract, shared by the facade
that sends them (`api`) and capability detection that reads another node's (`dispatcher.detection`), so
what a node reports is held to exactly what ours states: bounded numbers, names of a plain shape, no
free-form objects or markup to store and show."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from .protocol import Placement

INT32 = 2**31 - 1
"""Largest count a report may carry: far beyond any node, and within what every encoder takes."""

ModelName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^<>\"'&\x00-\x1f\x7f]+$")]
"""Any name a registry may give (a TOML key), but no markup and no control characters."""
DeviceType = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:,()-]+$")]
"""An OpenVINO device name: `NPU`, `GPU.1`, `HETERO:GPU,CPU`."""
Count = Annotated[int, Field(ge=0, le=INT32)]


class ModelInfo(BaseModel):
    name: ModelName
    task: Literal["embedding", "generation"]
    dim: Count | None
    max_input_tokens: Count
    loaded: bool
    workers: Count
    devices: list[DeviceType]
    queue_depth: dict[Literal["interactive", "bulk"], Count]
    cloud_fallback: bool


class ModelsResponse(BaseModel):
    available: list[ModelName]
    loaded_models: list[ModelName]
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    redis: Literal["ok", "unreachable"]
    workers: Count
    max_concurrent: Count
    memory_gb: float = Field(ge=0, le=2**20)
    utilization: float = Field(ge=0, le=100, description="0-100: (queued + running) / max_concurrent over live "
                               "workers.")
    device_type: DeviceType | None
    loaded_models: list[ModelName]
    missing_models: list[ModelName]
    queue_depth: Count
    cloud_fallback: bool
    placements: dict[ModelName, Placement] = Field(default_factory=dict, max_length=1024, description="Loaded "
                                                   "model -> the device it runs on, its engine, and why earlier "
                                                   "devices of the chain refused it.")
