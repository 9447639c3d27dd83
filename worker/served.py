"""The models a worker has loaded, shared by the loop (which loads, unloads and runs them) and the heartbeat.

The mapping is never changed in place: a load or unload builds a new dict and swaps it in under a lock,
so a reader holding the old one (the heartbeat thread) never sees it change size mid-iteration, and
`snapshot()` is one consistent view of models, devices and running generations.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from dispatcher.protocol import KVCache

from .devices import device_type
from .generation import Generator
from .pipelines import Embedder

Pipeline = Embedder | Generator


@dataclass(frozen=True)
class ServedState:
    """What the heartbeat publishes about the loaded models, taken at one instant."""

    devices: dict[str, str]
    """model -> OpenVINO execution device(s) really used, e.g. `CPU`."""
    generating: int
    """Generations running in the engines (or admitted and waiting for KV cache)."""
    kv_cache: dict[str, KVCache]
    """Generation model -> its KV cache."""

    @property
    def models(self) -> dict[str, str]:
        """model -> device type (`intel-npu`, `cpu`, ...)."""
        return {name: device_type(device) for name, device in self.devices.items()}


class Served:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipelines: Mapping[str, Pipeline] = {}

    @property
    def pipelines(self) -> Mapping[str, Pipeline]:
        """The current mapping; it never changes once handed out."""
        return self._pipelines

    def __getitem__(self, name: str) -> Pipeline:
        return self._pipelines[name]

    def __bool__(self) -> bool:
        return bool(self._pipelines)

    def names(self) -> list[str]:
        return list(self._pipelines)

    def generators(self) -> list[Generator]:
        return [p for p in self._pipelines.values() if isinstance(p, Generator)]

    def add(self, name: str, pipeline: Pipeline) -> None:
        with self._lock:
            self._pipelines = {**self._pipelines, name: pipeline}

    def remove(self, name: str) -> None:
        with self._lock:
            self._pipelines = {n: p for n, p in self._pipelines.items() if n != name}

    def snapshot(self) -> ServedState:
        with self._lock:
            pipelines = self._pipelines
        return ServedState(devices={name: p.device for name, p in pipelines.items()},
                           generating=sum(p.running for p in pipelines.values() if isinstance(p, Generator)),
                           kv_cache={name: p.cache_state() for name, p in pipelines.items()
                                     if isinstance(p, Generator)})
