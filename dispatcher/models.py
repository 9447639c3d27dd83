"""The model registry: which models exist, what they do, and their limits.

It lives in the dispatcher because callers, the facade and workers all need it, and only the
worker needs OpenVINO to load what it describes.
"""

from __future__ import annotations

import sys
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from .errors import ModelNotFoundError
from .settings import CommonSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ModelSpec(BaseModel):
    name: str
    task: Literal["embedding", "generation"]
    path: Path
    source: str | None = None
    precision: str | None = None
    """Weight precision as exported (`int4-sym-g128`, `fp16`, ...): an NPU load warns when it is not NPU-ready."""
    dim: int | None = None
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    max_input_tokens: int = Field(512, ge=1)
    cloud_model: str | None = None
    kv_cache_mb: int | None = Field(None, ge=1)
    """Generation models: KV cache size; unset: NPU_KV_CACHE_MB, else computed (worker.kvcache)."""
    engine: str | None = None
    """An engine of worker/engines.py's table for this model on any device; unset: chosen by device."""
    static_batch: int | None = Field(None, ge=1)
    """Embedding models: texts per inference of the fixed-shape engine (asks for it on NPU)."""
    length_buckets: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    """Embedding models: sequence lengths the fixed-shape engine compiles (max_input_tokens is always one)."""
    npu_generate_hint: Literal["FAST_COMPILE", "BEST_PERF"] = "FAST_COMPILE"
    """Generation models on NPU: GENERATE_HINT of GenAI's NPU pipeline."""
    npu_prefill_hint: Literal["DYNAMIC", "STATIC"] | None = None
    """Generation models on NPU: PREFILL_HINT; unset: the plugin's default."""
    npu_properties: dict[str, str | int | bool] = Field(default_factory=dict)
    """Generation models on NPU: further properties passed as they are (e.g. NPUW_LLM_* of GenAI's NPU guide)."""


class Registry:
    def __init__(self, specs: dict[str, ModelSpec]):
        self.specs = specs

    @classmethod
    def load(cls, settings: CommonSettings) -> Registry:
        raw = tomllib.loads(resources.files("dispatcher").joinpath("models.toml").read_text())["models"]
        # The user's registry: NPU_MODELS_FILE, else the state directory's models.toml (where export writes).
        extra = settings.models_file or settings.state_dir / "models.toml"
        if settings.models_file or extra.exists():
            for name, table in tomllib.loads(extra.read_text()).get("models", {}).items():
                raw[name] = {**raw.get(name, {}), **table}
        specs = {}
        for name, table in raw.items():
            spec = ModelSpec(name=name, **table)
            if not spec.path.is_absolute():
                spec.path = settings.models_dir / spec.path
            specs[name] = spec
        return cls(specs)

    @cached_property
    def names(self) -> list[str]:
        return sorted(self.specs)

    def get(self, name: str) -> ModelSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise ModelNotFoundError(name, self.names) from None

    def default(self, task: str) -> str:
        """The first model of a task, for requests that name none."""
        for name in self.names:
            if self.specs[name].task == task:
                return name
        raise ModelNotFoundError(f"<any {task} model>", self.names)
