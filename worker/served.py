"""The engines a worker has loaded, shared by the loop (which loads, unloads and runs them), the lanes and
the heartbeat.

The mapping is never changed in place: a load or unload builds new dicts and swaps them in under a lock,
so a reader holding the old one (the heartbeat thread) never sees it change size mid-iteration, and
`snapshot()` is one consistent view of models, devices and running generations. The lanes read it at
every use: a model change is visible to them at once, with no lane rebuilt.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from dispatcher.protocol import KVCache

from .devices import device_type
from .engines import EmbeddingEngine, Engine, GenerationEngine


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


@dataclass(frozen=True)
class _Engines:
    """One generation of the mapping, with its per-task views."""

    all: Mapping[str, Engine]
    embedding: Mapping[str, EmbeddingEngine]
    generation: Mapping[str, GenerationEngine]

    @classmethod
    def of(cls, engines: Mapping[str, Engine]) -> _Engines:
        embedding: dict[str, EmbeddingEngine] = {}
        generation: dict[str, GenerationEngine] = {}
        for name, engine in engines.items():
            if engine.task == "embedding":
                embedding[name] = engine
            else:
                generation[name] = engine
        return cls(engines, embedding, generation)


class Served:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines = _Engines.of({})

    @property
    def engines(self) -> Mapping[str, Engine]:
        """The current mapping, model -> engine; it never changes once handed out (a model change swaps in
        a new one, so its identity says whether anything changed)."""
        return self._engines.all

    @property
    def embedding(self) -> Mapping[str, EmbeddingEngine]:
        """The embedding models' engines."""
        return self._engines.embedding

    @property
    def generation(self) -> Mapping[str, GenerationEngine]:
        """The generation models' engines."""
        return self._engines.generation

    def __getitem__(self, name: str) -> Engine:
        return self._engines.all[name]

    def __bool__(self) -> bool:
        return bool(self._engines.all)

    def names(self) -> list[str]:
        return list(self._engines.all)

    def generating(self) -> bool:
        """Whether any generation runs (or waits for KV cache) in an engine."""
        return any(engine.running for engine in self._engines.generation.values())

    def add(self, name: str, engine: Engine) -> None:
        with self._lock:
            self._engines = _Engines.of({**self._engines.all, name: engine})

    def remove(self, name: str) -> None:
        with self._lock:
            self._engines = _Engines.of({n: e for n, e in self._engines.all.items() if n != name})

    def snapshot(self) -> ServedState:
        with self._lock:
            engines = self._engines
        return ServedState(devices={name: e.device for name, e in engines.all.items()},
                           generating=sum(e.running for e in engines.generation.values()),
                           kv_cache={name: e.cache_state() for name, e in engines.generation.items()})
