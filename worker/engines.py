"""The engines a worker runs, by task: one table says which class serves a model's task and how it is built.

A lane never asks which class an engine is: it reads the task (`engine.task`), and each task has one
interface (`EmbeddingEngine`, `GenerationEngine`). Another engine for a task (one per device kind, say)
is one class and one entry in `ENGINES`. Which one a model gets: the name given to `build`, else the
environment's (NPU_GENERATION_ENGINE, NPU_EMBED_ENGINE: a test or bench run forcing one everywhere), else the
registry entry's `engine`, else by device: the chain is tried device by device, each with the engine
`DEVICE_ENGINE` gives its kind of device (the NPU cannot run continuous batching: GenAI's pipeline asserts
CPU or GPU) or the task's default. arq's `Function` registry is the model: a name, and what to run for it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np

from dispatcher.models import ModelSpec
from dispatcher.protocol import KVCache, Prompt
from dispatcher.settings import WorkerSettings

from .devices import parse_chain
from .generation import ContinuousBatchingEngine, Generated
from .inference import PADDED_TOKENS
from .pipelines import TextEmbeddingEngine
from .precision import npu_warning
from .serial import SerialEngine
from .static import StaticEmbeddingEngine

log = logging.getLogger(__name__)

Task = Literal["embedding", "generation"]


class EmbeddingEngine(Protocol):
    """Embeds batches of texts; holds no work between two calls."""

    task: Literal["embedding"]
    spec: ModelSpec
    device: str

    def warm_up(self) -> None: ...

    def count_tokens(self, texts: list[str]) -> list[int]: ...

    def check(self, texts: list[str], truncate: bool, counts: list[int] | None = None,
              max_total: int | None = None) -> tuple[list[int], list[bool]]:
        """Token counts and truncation flags; raises `NPUError` for input it refuses."""
        ...

    def embed(self, texts: list[str]) -> np.ndarray: ...


class GenerationEngine(Protocol):
    """Runs generations that outlive a step: submitted, advanced by `step()`, ended in their `on_done`."""

    task: Literal["generation"]
    spec: ModelSpec
    device: str
    max_sequences: int
    """Generations it runs at once (the others wait in it): 1 for the serial engine."""

    def warm_up(self) -> None: ...

    @property
    def free_slots(self) -> int:
        """Generations it would start now without making one wait."""
        ...

    @property
    def running(self) -> int:
        """Generations it owes an answer."""
        ...

    def check(self, prompt: Prompt) -> int:
        """Prompt tokens; raises `NPUError` for a prompt it refuses."""
        ...

    def submit(self, prompt: Prompt, max_tokens: int | None, temperature: float | None,
               on_done: Callable[[Generated | Exception], None],
               on_delta: Callable[[str], None] | None = None, stop: list[str] | None = None,
               job_id: str | None = None, deadline: float | None = None) -> None:
        """`deadline` (wall clock): a generation still waiting for the engine then ends unrun."""

    def cancel(self, job_id: str, reason: str) -> bool:
        """Stop the generation submitted as `job_id` within a step, freeing its KV cache; it still ends in its
        `on_done`, with its text so far and finish reason "length" (reason "deadline") or "cancelled".
        False when no such generation runs."""
        ...

    def step(self) -> int: ...

    def generate(self, prompt: Prompt, max_tokens: int | None = None, temperature: float | None = None,
                 stop: list[str] | None = None) -> Generated:
        """Blocking form for one prompt (a plain `rq worker`)."""
        ...

    def cache_state(self) -> KVCache: ...


Engine = EmbeddingEngine | GenerationEngine
Build = Callable[[ModelSpec, WorkerSettings], Engine]


def default_max_tokens(s: WorkerSettings) -> int:
    """max_tokens of a generation job that does not say: the dispatcher's default, so both lanes agree."""
    return min(s.default_new_tokens, s.max_new_tokens)


def _text_embedding(spec: ModelSpec, s: WorkerSettings) -> Engine:
    return TextEmbeddingEngine(spec, parse_chain(s.devices), s.inference_threads, s.embed_one_pass, s.batch_max,
                               PADDED_TOKENS, s.compile_cache, s.embed_streams)


def _static_embedding(spec: ModelSpec, s: WorkerSettings) -> Engine:
    return StaticEmbeddingEngine(spec, parse_chain(s.devices), s.inference_threads, s.compile_cache)


def _continuous_batching(spec: ModelSpec, s: WorkerSettings) -> Engine:
    return ContinuousBatchingEngine(spec, parse_chain(s.devices), s.max_generations, s.inference_threads,
                                    default_max_tokens(s), s.max_new_tokens, s.kv_cache_mb, s.compile_cache)


def _serial(spec: ModelSpec, s: WorkerSettings) -> Engine:
    return SerialEngine(spec, parse_chain(s.devices), s.inference_threads, default_max_tokens(s), s.max_new_tokens,
                        s.kv_cache_mb, s.compile_cache)


ENGINES: dict[tuple[str, str], Build] = {
    ("embedding", "text-embedding"): _text_embedding,
    ("embedding", "static-embedding"): _static_embedding,
    ("generation", "continuous-batching"): _continuous_batching,
    ("generation", "serial"): _serial,
}
"""(task, engine name) -> how to build the engine (compiled, not yet warmed up)."""
DEFAULT_ENGINE: dict[str, str] = {"embedding": "text-embedding", "generation": "continuous-batching"}
"""The engine a model of each task gets unless it, its device or the environment names one."""
DEVICE_ENGINE: dict[tuple[str, str], Callable[[ModelSpec], str]] = {
    ("generation", "NPU"): lambda spec: "serial",
    ("embedding", "NPU"): lambda spec: "static-embedding" if spec.static_batch else DEFAULT_ENGINE["embedding"],
}
"""(task, kind of device) -> the engine a model gets there (else its task's default). On NPU an embedding
model takes fixed shapes when its registry entry asks (`static_batch`), else GenAI's own NPU path."""


def forced(spec: ModelSpec, settings: WorkerSettings) -> str | None:
    """The engine chosen whatever the device: the environment's for the task, else the registry entry's."""
    override = settings.generation_engine if spec.task == "generation" else settings.embed_engine
    return override or spec.engine


def by_device(spec: ModelSpec, chain: list[str]) -> list[tuple[str, list[str]]]:
    """The chain cut into runs of devices that get the same engine, in order."""
    runs: list[tuple[str, list[str]]] = []
    for device in chain:
        choose = DEVICE_ENGINE.get((spec.task, device.split(".")[0].split(":")[0]))
        name = choose(spec) if choose else DEFAULT_ENGINE.get(spec.task, "")
        if runs and runs[-1][0] == name:
            runs[-1][1].append(device)
        else:
            runs.append((name, [device]))
    return runs


def _lookup(spec: ModelSpec, name: str) -> Build:
    found = ENGINES.get((spec.task, name))
    if found is None:
        known = ", ".join(f"{t}/{n}" for t, n in ENGINES)
        raise ValueError(f"{spec.name}: no engine {name!r} for task {spec.task!r}; known: {known}")
    return found


def build(spec: ModelSpec, settings: WorkerSettings, name: str | None = None) -> Engine:
    """The engine for `spec` (`name`, else `forced`, else by device), compiled on the first device of the
    chain that takes it."""
    name = name or forced(spec, settings)
    if name:
        return checked(spec, _lookup(spec, name)(spec, settings))
    runs = by_device(spec, parse_chain(settings.devices))
    for engine, _ in runs:
        _lookup(spec, engine)
    errors = []
    for engine, devices in runs:
        try:
            run = settings.model_copy(update={"devices": ",".join(devices)})
            return checked(spec, _lookup(spec, engine)(spec, run))
        except RuntimeError as exc:  # no device of the run took it (worker.devices): the next run's turn
            errors.append(str(exc))
    raise RuntimeError("; ".join(errors))


def checked(spec: ModelSpec, engine: Engine) -> Engine:
    """`engine` as built, after one warning line when it landed on an NPU with weights that are not NPU-ready
    (`worker.precision.npu_warning`)."""
    warning = npu_warning(spec, engine.device)
    if warning:
        log.warning(warning)
    return engine


def engine_name(engine: Engine) -> str:
    """An engine's name: its class in kebab case (`ContinuousBatchingEngine` -> `continuous-batching`), the
    same name `ENGINES` and the NPU_*_ENGINE settings know it by."""
    words = re.findall(r"[A-Z][a-z0-9]*", type(engine).__name__.removesuffix("Engine"))
    return "-".join(w.lower() for w in words) or type(engine).__name__
