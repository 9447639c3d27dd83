"""The engines a worker runs, by task: one table says which class serves a model's task and how it is built.

A lane never asks which class an engine is: it reads the task (`engine.task`), and each task has one
interface (`EmbeddingEngine`, `GenerationEngine`). Another engine for a task (one per device kind, say)
is one class and one entry in `ENGINES`; a model picks it by name (`build(..., name=...)`), else it gets
its task's default. arq's `Function` registry is the model: a name, and what to run for it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np

from dispatcher.models import ModelSpec
from dispatcher.protocol import KVCache, Prompt
from dispatcher.settings import Settings

from .devices import parse_chain
from .generation import ContinuousBatchingEngine, Generated
from .inference import PADDED_TOKENS
from .pipelines import TextEmbeddingEngine
from .precision import npu_warning

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
               on_delta: Callable[[str], None] | None = None, stop: list[str] | None = None) -> None: ...

    def step(self) -> int: ...

    def generate(self, prompt: Prompt, max_tokens: int | None = None, temperature: float | None = None,
                 stop: list[str] | None = None) -> Generated:
        """Blocking form for one prompt (a plain `rq worker`)."""
        ...

    def cache_state(self) -> KVCache: ...


Engine = EmbeddingEngine | GenerationEngine
Build = Callable[[ModelSpec, Settings], Engine]


def default_max_tokens(s: Settings) -> int:
    """max_tokens of a generation job that does not say: the dispatcher's default, so both lanes agree."""
    return min(s.default_new_tokens, s.max_new_tokens)


def _text_embedding(spec: ModelSpec, s: Settings) -> Engine:
    return TextEmbeddingEngine(spec, parse_chain(s.devices), s.inference_threads, s.embed_one_pass, s.batch_max,
                               PADDED_TOKENS, s.compile_cache)


def _continuous_batching(spec: ModelSpec, s: Settings) -> Engine:
    return ContinuousBatchingEngine(spec, parse_chain(s.devices), s.max_generations, s.inference_threads,
                                    default_max_tokens(s), s.max_new_tokens, s.kv_cache_mb, s.compile_cache)


ENGINES: dict[tuple[str, str], Build] = {
    ("embedding", "text-embedding"): _text_embedding,
    ("generation", "continuous-batching"): _continuous_batching,
}
"""(task, engine name) -> how to build the engine (compiled, not yet warmed up)."""
DEFAULT_ENGINE: dict[str, str] = {"embedding": "text-embedding", "generation": "continuous-batching"}
"""The engine a model of each task gets unless it names one."""


def build(spec: ModelSpec, settings: Settings, name: str | None = None) -> Engine:
    """The engine for `spec`'s task (`name`, or the task's default), compiled on the first device of the
    chain that takes it."""
    name = name or DEFAULT_ENGINE.get(spec.task, "")
    found = ENGINES.get((spec.task, name))
    if found is None:
        known = ", ".join(f"{t}/{n}" for t, n in ENGINES)
        raise ValueError(f"{spec.name}: no engine {name!r} for task {spec.task!r}; known: {known}")
    return checked(spec, found(spec, settings))


def checked(spec: ModelSpec, engine: Engine) -> Engine:
    """`engine` as built, after one warning line when it landed on an NPU with weights that are not NPU-ready
    (`worker.precision.npu_warning`)."""
    warning = npu_warning(spec, engine.device)
    if warning:
        log.warning(warning)
    return engine


def engine_name(engine: Engine) -> str:
    """What the heartbeat calls an engine: its class in kebab case (`ContinuousBatchingEngine` ->
    `continuous-batching`), so a new engine class is named without a table to keep in step."""
    words = re.findall(r"[A-Z][a-z0-9]*", type(engine).__name__.removesuffix("Engine"))
    return "-".join(w.lower() for w in words) or type(engine).__name__
