"""Generation one at a time: `LLMPipeline`, for devices without continuous batching (the NPU).

GenAI's continuous-batching pipeline refuses every device but CPU and GPU; on an NPU an LLM runs through
`LLMPipeline` (GenAI's static NPU pipeline), one sequence at a time, compiled for a longest prompt
(`MAX_PROMPT_LEN`) and a shortest answer (`MIN_RESPONSE_LEN`). `generate` blocks until the answer is
done, so it runs in a thread of its own, one per generation, and hands its tokens to the worker loop
through a queue that `step()` drains: the loop keeps reading both lanes meanwhile. The other generations
wait here, admitted by the same rules as with continuous batching, for a KV cache of one sequence.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import openvino as ov
import openvino_genai as og

from dispatcher.models import ModelSpec
from dispatcher.protocol import KVCache, Prompt
from dispatcher.settings import Settings

from . import kvcache
from .chat import ChatEncoder
from .devices import first_that_compiles
from .generation import (
    Generated,
    Stream,
    cancel_waiting,
    cut_reason,
    expire_waiting,
    expired,
    generation_config,
    prompt_ids,
    refuse_beyond_cache,
)
from .pipelines import device_cache, plugin_config, require_model_dir

log = logging.getLogger(__name__)
WAIT_S = 0.05
"""Longest a `step()` waits for the next token: the loop then reads the lanes again (a token takes less)."""


def npu_properties(spec: ModelSpec, max_new_tokens: int) -> dict[str, object]:
    """GenAI's NPU pipeline properties (its "Inference with GenAI on NPU" guide): the static shapes it compiles
    (a prompt of up to max_input_tokens, room for max_new_tokens more), its hints, and the registry's extras."""
    properties: dict[str, object] = {"MAX_PROMPT_LEN": spec.max_input_tokens, "MIN_RESPONSE_LEN": max_new_tokens,
                                     "GENERATE_HINT": spec.npu_generate_hint}
    if spec.npu_prefill_hint:
        properties["PREFILL_HINT"] = spec.npu_prefill_hint
    return properties | dict(spec.npu_properties)


def device_properties(spec: ModelSpec, device: str, threads: int, max_new_tokens: int,
                      cache: Path | None = None) -> dict[str, object]:
    """On NPU its pipeline's properties (other plugins refuse them); elsewhere the stateful model as on an NPU
    (ATTENTION_BACKEND=SDPA: LLMPipeline would otherwise run paged attention, i.e. continuous batching).
    `cache`: the compiled-model cache's root, on every device (on an NPU it saves the compile at each start)."""
    if device.upper().startswith("NPU"):
        cached = {"CACHE_DIR": str(device_cache(cache, device))} if cache is not None else {}
        return npu_properties(spec, max_new_tokens) | cached
    return plugin_config(threads, device, cache=cache) | {"ATTENTION_BACKEND": "SDPA"}


@dataclass(kw_only=True)
class _Job(Stream):
    ids_in: list[int]
    config: og.GenerationConfig
    deadline: float | None = None
    cancelled: bool = False
    events: queue.SimpleQueue[tuple[str, object]] = field(default_factory=queue.SimpleQueue)
    """("tokens", ids) as they come, then ("done", final ids | exception), from the generation's thread."""


class _Streamer(og.StreamerBase):
    """Hands each token to the loop; stops the generation once its job is cancelled."""

    def __init__(self, job: _Job):
        super().__init__()
        self.job = job

    def write(self, token: int | list[int]) -> og.StreamingStatus:
        self.job.events.put(("tokens", token if isinstance(token, list) else [token]))
        return og.StreamingStatus.CANCEL if self.job.cancelled else og.StreamingStatus.RUNNING

    def end(self) -> None:
        pass


class SerialEngine:
    """A generation engine (`worker.engines`) running one generation at a time in an `LLMPipeline`."""

    task: Literal["generation"] = "generation"
    max_sequences = 1

    def __init__(self, spec: ModelSpec, chain: list[str], threads: int = 0,
                 default_max_tokens: int = Settings.model_fields["default_new_tokens"].default,
                 max_new_tokens: int = Settings.model_fields["max_new_tokens"].default,
                 cache_mb: int | None = None, compile_cache: Path | None = None):
        """As `ContinuousBatchingEngine`'s; the KV cache is that of one sequence of the longest prompt and
        answer (on NPU exactly what MAX_PROMPT_LEN and MIN_RESPONSE_LEN compile)."""
        require_model_dir(spec)
        self.spec = spec
        self.default_max_tokens = default_max_tokens
        shape = kvcache.ModelShape.read(spec.path)

        def build(device: str) -> og.LLMPipeline:
            self.cache = kvcache.plan(shape, kvcache.cache_precision(device), 1,
                                      spec.max_input_tokens + max_new_tokens, spec.kv_cache_mb or cache_mb)
            return og.LLMPipeline(str(spec.path), device,
                                  **device_properties(spec, device, threads, max_new_tokens, compile_cache))

        self.pipeline, self.device = first_that_compiles(build, chain, spec.name)
        self.tokenizer = self.pipeline.get_tokenizer()
        self.chat = ChatEncoder(self.tokenizer)
        self.waiting: deque[_Job] = deque()
        self.current: _Job | None = None

    @property
    def free_slots(self) -> int:
        return max(0, self.max_sequences - self.running)

    @property
    def running(self) -> int:
        """Generations this engine owes an answer: the one running and those waiting for it."""
        return len(self.waiting) + (self.current is not None)

    def check(self, prompt: Prompt) -> int:
        return len(prompt_ids(self.chat, self.spec, prompt))

    def submit(self, prompt: Prompt, max_tokens: int | None, temperature: float | None,
               on_done: Callable[[Generated | Exception], None],
               on_delta: Callable[[str], None] | None = None, stop: list[str] | None = None,
               job_id: str | None = None, deadline: float | None = None) -> None:
        """As `ContinuousBatchingEngine.submit`: refused here when it could never fit; else it waits its turn
        (ending unrun if its caller's `deadline` passes first)."""
        ids = prompt_ids(self.chat, self.spec, prompt)
        config = generation_config(max_tokens or self.default_max_tokens, temperature, stop)
        refuse_beyond_cache(self.spec, self.cache, len(ids), config.max_new_tokens)
        self.waiting.append(_Job(ids_in=ids, config=config, prompt_tokens=len(ids), max_tokens=config.max_new_tokens,
                                 on_done=on_done, on_delta=on_delta, stop=list(stop or []), deadline=deadline,
                                 job_id=job_id))
        self._start_next()

    def cancel(self, job_id: str, reason: str) -> bool:
        """As `ContinuousBatchingEngine.cancel`: a waiting generation ends now; the running one stops at its
        next token (its streamer answers CANCEL) and ends at the next `step()` with its text so far."""
        if cancel_waiting(self.waiting, job_id, reason):
            return True
        job = self.current
        if job is not None and job.job_id == job_id and not job.cancelled:
            job.cancelled, job.cut = True, cut_reason(reason)
            return True
        return False

    def _start_next(self) -> None:
        while self.current is None and self.waiting:
            job = self.waiting.popleft()
            if expired(job.deadline, job.on_done, self.spec.name):
                continue
            self.current = job
            threading.Thread(target=self._generate, args=(job,), name=f"generate-{self.spec.name}",
                             daemon=True).start()

    def _generate(self, job: _Job) -> None:
        """The generation's thread: GenAI's blocking call, its end handed to the loop like its tokens."""
        try:
            result = self.pipeline.generate(ov.Tensor(np.array([job.ids_in], dtype=np.int64)), job.config,
                                            _Streamer(job))
            job.events.put(("done", [int(t) for t in result.tokens[0]]))
        except Exception as exc:
            job.events.put(("done", exc))

    def step(self) -> int:
        """Take the running generation's new tokens (waiting up to `WAIT_S` for one); start the next when it
        ended. Returns how many are still running or waiting."""
        expire_waiting(self.waiting, self.spec.name)
        job = self.current
        if job is None:
            self._start_next()
            return self.running
        try:
            events = [job.events.get(timeout=WAIT_S)]
        except queue.Empty:
            return self.running
        while not job.events.empty():
            events.append(job.events.get_nowait())
        now = time.perf_counter()
        for kind, payload in events:
            if kind == "tokens":
                job.add(payload, now)  # type: ignore[arg-type]
                continue
            self.current = None
            if isinstance(payload, Exception):
                log.error("%s: generation failed: %s", self.spec.name, payload)
                job.on_done(payload)
            else:
                job.ids = payload  # type: ignore[assignment]  # the answer's tokens, stop strings left out
                job.on_done(job.result(self.tokenizer, now, "cancelled" if job.cancelled else None))
            self._start_next()
            return self.running
        job.emit(self.tokenizer)
        return self.running

    def warm_up(self) -> None:
        """One short generation at load: the first one allocates what every later one reuses."""
        if self.__dict__.get("warmed"):
            return
        self.warmed = True
        self.generate("word " * 8, 2)

    def cache_state(self) -> KVCache:
        job = self.current
        used = (job.prompt_tokens + len(job.ids)) * self.cache.bytes_per_token if job else 0
        return KVCache(configured_bytes=self.cache.estimated_bytes, allocated_bytes=used, used_bytes=used)

    def generate(self, prompt: Prompt, max_tokens: int | None = None, temperature: float | None = None,
                 stop: list[str] | None = None) -> Generated:
        """Blocking form for one prompt (a plain `rq worker`, tests)."""
        box: list[Generated | Exception] = []
        self.submit(prompt, max_tokens, temperature, box.append, stop=stop)
        while not box:
            self.step()
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]
