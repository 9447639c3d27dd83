"""Generation with continuous batching: many prompts advance together, one token per `step()`.

`ContinuousBatchingPipeline` (add_request/step) instead of `LLMPipeline.generate`: the latter serves
one prompt at a time and is not safe from several threads, while here every active request gains a
token per step, so concurrent generations share the engine (docs/benchmarks.md). The worker loop calls
`step()` between its Redis reads, so interactive and bulk jobs join a running batch.

The KV cache is bounded by admission (`worker.kvcache`): the engine allocates it as the admitted requests
need it, and a request enters the engine only when its worst case fits next to the others' within the
model's cache size; until then it waits here. A fixed pool instead would be touched block after block (the
engine hands out freed blocks in turn), so a worker's RSS would climb to the whole pool.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypeVar

import numpy as np
import openvino as ov
import openvino_genai as og

from dispatcher.errors import CacheFullError, ErrorCode, InvalidInputError, NPUUnavailableError
from dispatcher.models import ModelSpec
from dispatcher.protocol import KVCache, Prompt, as_messages
from dispatcher.settings import Settings

from . import kvcache
from .chat import ChatEncoder
from .devices import first_that_compiles
from .pipelines import plugin_config, require_model_dir

log = logging.getLogger(__name__)
MAX_STEP_TOKENS = og.SchedulerConfig().max_num_batched_tokens
"""Most tokens the engine runs in one step (prompts are cut into steps of this many): its largest shape."""
GREEDY_BELOW = 1e-2
"""Temperatures under this decode greedily: they pick the top token anyway, and a tiny one (1e-246 from a
fuzzer) is 0 in the engine's float32, which it refuses while sampling."""


@dataclass
class Generated:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    ttft_ms: float
    duration_ms: float


class _Expiring(Protocol):
    @property
    def deadline(self) -> float | None: ...

    @property
    def on_done(self) -> Callable[[Generated | Exception], None]: ...


W = TypeVar("W", bound=_Expiring)


@dataclass
class _Waiting:
    """A request admitted by the worker whose KV cache is not free yet."""

    ids: list[int]
    """The prompt's token ids (worker/chat.py: contents stay plain text)."""
    config: og.GenerationConfig
    prompt_tokens: int
    blocks: int
    on_done: Callable[[Generated | Exception], None]
    on_delta: Callable[[str], None] | None
    stop: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    deadline: float | None = None
    job_id: str | None = None


@dataclass(kw_only=True)
class Stream:
    """One generation's output as it arrives, for either engine: its tokens, the text already streamed, and
    the `Generated` it ends in."""

    prompt_tokens: int
    max_tokens: int
    on_done: Callable[[Generated | Exception], None]
    on_delta: Callable[[str], None] | None
    stop: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    ids: list[int] = field(default_factory=list)
    sent: int = 0
    """Characters of the decoded text already passed to on_delta."""
    job_id: str | None = None
    cut: str | None = None
    """Why it was stopped before its end (`cancel`): the finish reason it reports."""

    def add(self, ids: list[int], now: float) -> None:
        self.ids.extend(ids)
        if self.first_token is None and self.ids:
            self.first_token = now

    def emit(self, tokenizer: og.Tokenizer) -> None:
        """Stream the new text, holding back what may be the start of a stop string (and never sending one)."""
        if not self.on_delta:
            return
        text = tokenizer.decode(self.ids)
        if self.stop:
            text = _cut(text, self.stop)[0]
            text = text[:len(text) - max((_partial(text, s) for s in self.stop), default=0)]
        # A multi-byte character split across tokens decodes to U+FFFD until its last token arrives.
        if text.endswith("\ufffd"):
            return
        if len(text) > self.sent:
            self.on_delta(text[self.sent:])
            self.sent = len(text)

    def result(self, tokenizer: og.Tokenizer, now: float, status: str | None = None) -> Generated:
        """The answer (the rest of the text streamed first); `status` when it did not finish normally."""
        text, stopped = _cut(tokenizer.decode(self.ids), self.stop)
        if self.on_delta and len(text) > self.sent:
            self.on_delta(text[self.sent:])
        reason = self.cut or status or ("length" if len(self.ids) >= self.max_tokens and not stopped else "stop")
        return Generated(text=text, prompt_tokens=self.prompt_tokens, completion_tokens=len(self.ids),
                         finish_reason=reason, ttft_ms=((self.first_token or now) - self.started) * 1000,
                         duration_ms=(now - self.started) * 1000)


@dataclass(kw_only=True)
class _Active(Stream):
    handle: og.GenerationHandle
    blocks: int = 0
    """KV-cache blocks reserved for its worst case (prompt + max_tokens)."""


def cut_reason(reason: str) -> str:
    """The finish reason of a generation stopped early: "length" when its caller's budget ended (OpenAI's
    value for text cut short by a limit), "cancelled" when nobody waits for it any more."""
    return "length" if reason == "deadline" else "cancelled"


class _Cancellable(Protocol):
    job_id: str | None
    prompt_tokens: int
    started: float

    @property
    def on_done(self) -> Callable[[Generated | Exception], None]: ...


C = TypeVar("C", bound=_Cancellable)


def cancel_waiting(waiting: deque[C], job_id: str, reason: str) -> bool:
    """End a generation still waiting for the engine, unrun (`cancel`, for either engine)."""
    for request in waiting:
        if request.job_id == job_id:
            waiting.remove(request)
            request.on_done(Generated("", request.prompt_tokens, 0, cut_reason(reason), 0.0,
                                      (time.perf_counter() - request.started) * 1000))
            return True
    return False


def prompt_ids(chat: ChatEncoder, spec: ModelSpec, prompt: Prompt) -> list[int]:
    """Token ids (chat template included), not the template's text: contents must stay plain text
    (worker/chat.py). Refuses a prompt longer than the model takes (on NPU: its MAX_PROMPT_LEN)."""
    ids = chat.encode(as_messages(prompt))
    if len(ids) > spec.max_input_tokens:
        raise InvalidInputError(f"prompt has {len(ids)} tokens; {spec.name} takes at most {spec.max_input_tokens}",
                                code=ErrorCode.INPUT_TOO_LONG, tokens=len(ids), limit=spec.max_input_tokens)
    return ids


def generation_config(max_tokens: int, temperature: float | None, stop: list[str] | None) -> og.GenerationConfig:
    """GenAI's config of one generation: greedy below `GREEDY_BELOW`, stop strings left out of the text."""
    config = og.GenerationConfig()
    config.max_new_tokens = max_tokens
    config.apply_chat_template = False  # applied by `prompt_ids`, so the token count is the real one
    if temperature and temperature >= GREEDY_BELOW:
        config.do_sample = True
        config.temperature = temperature
    if stop:
        config.stop_strings = set(stop)
        config.include_stop_str_in_output = False
    return config


def refuse_beyond_cache(spec: ModelSpec, cache: kvcache.CachePlan, prompt_tokens: int, max_tokens: int) -> int:
    """KV-cache blocks of a generation's worst case; `CacheFullError` when it could never fit."""
    blocks = kvcache.blocks_for(prompt_tokens + max_tokens)
    if blocks > cache.blocks:
        need = prompt_tokens + max_tokens
        raise CacheFullError(
            f"the prompt ({prompt_tokens} tokens) and max_tokens ({max_tokens}) need {need} tokens "
            f"of KV cache; {spec.name} has {cache.tokens} on this worker (ask for fewer max_tokens, "
            "or raise NPU_KV_CACHE_MB)", tokens=need, limit=cache.tokens)
    return blocks


def expired(deadline: float | None, on_done: Callable[[Generated | Exception], None], name: str) -> bool:
    """A generation still waiting when its caller's deadline (wall clock) passed ends here, unrun."""
    if deadline is None or time.time() <= deadline:
        return False
    on_done(NPUUnavailableError(f"{name}: the generation waited for the engine past its caller's deadline"))
    return True


def expire_waiting(waiting: deque[W], name: str) -> None:
    """End every waiting generation whose caller's deadline passed (each step: not only when one would start)."""
    if any(w.deadline is not None for w in waiting):
        kept = [w for w in waiting if not expired(w.deadline, w.on_done, name)]
        waiting.clear()
        waiting.extend(kept)


class ContinuousBatchingEngine:
    """The generation engine (`worker.engines`): many prompts in one `ContinuousBatchingPipeline`."""

    task: Literal["generation"] = "generation"

    def __init__(self, spec: ModelSpec, chain: list[str], max_sequences: int = 8, threads: int = 0,
                 default_max_tokens: int = Settings.model_fields["default_new_tokens"].default,
                 max_new_tokens: int = Settings.model_fields["max_new_tokens"].default,
                 cache_mb: int | None = None, compile_cache: Path | None = None):
        """`default_max_tokens`: for a job that does not say (the dispatcher always does; a backend's plain
        `Queue.enqueue` may not); `threads` as for `TextEmbeddingEngine` (NPU_INFERENCE_THREADS); `cache_mb`:
        NPU_KV_CACHE_MB (the registry's `kv_cache_mb` wins), else the cache is computed for `max_sequences`
        sequences of `max_input_tokens + max_new_tokens` (`worker.kvcache`); `compile_cache`: the compiled-model cache
        (`Settings.compile_cache`)."""
        require_model_dir(spec)
        self.spec = spec
        self.max_sequences = max_sequences
        self.default_max_tokens = default_max_tokens
        shape = kvcache.ModelShape.read(spec.path)
        scheduler = og.SchedulerConfig()
        # Neither cache_size nor num_kv_blocks: the engine allocates what the admitted requests need, and
        # admission (`self.cache`) bounds that.
        scheduler.cache_size = 0
        scheduler.num_kv_blocks = 0
        scheduler.max_num_seqs = max_sequences

        def build(device: str) -> og.ContinuousBatchingPipeline:
            self.cache = kvcache.plan(shape, kvcache.cache_precision(device), max_sequences,
                                      spec.max_input_tokens + max_new_tokens, spec.kv_cache_mb or cache_mb)
            return og.ContinuousBatchingPipeline(str(spec.path), scheduler, device,
                                             plugin_config(threads, device, cache=compile_cache))

        self.pipeline, self.device = first_that_compiles(build, chain, spec.name)
        log.info("%s: KV cache up to %d tokens (%.0f MB, %s)", spec.name, self.cache.tokens,
                 self.cache.estimated_bytes / 2**20, self.cache.source)
        self.tokenizer = self.pipeline.get_tokenizer()
        self.chat = ChatEncoder(self.tokenizer)
        self.active: dict[int, _Active] = {}
        self.waiting: deque[_Waiting] = deque()
        self.reserved_blocks = 0
        self.allocated_bytes = 0
        """KV cache the engine holds now (it grows to what the admitted requests needed at most)."""
        self.used_bytes = 0
        """KV cache occupied by running sequences, at the last step."""
        self._ids = itertools.count()

    @property
    def free_slots(self) -> int:
        return max(0, self.max_sequences - len(self.active) - len(self.waiting))

    @property
    def running(self) -> int:
        """Generations this engine owes an answer: in the engine, or waiting for KV cache."""
        return len(self.active) + len(self.waiting)

    def _chat(self, prompt: Prompt) -> list[int]:
        """Token ids, not the template's text: contents must stay plain text (worker/chat.py)."""
        return self.chat.encode(as_messages(prompt))

    def check(self, prompt: Prompt) -> int:
        """Prompt tokens (chat template included); refuses a prompt longer than the model takes."""
        return len(prompt_ids(self.chat, self.spec, prompt))

    def submit(self, prompt: Prompt, max_tokens: int | None, temperature: float | None,
               on_done: Callable[[Generated | Exception], None],
               on_delta: Callable[[str], None] | None = None, stop: list[str] | None = None,
               job_id: str | None = None, deadline: float | None = None) -> None:
        """Start a generation; it advances with each `step()` and ends in `on_done`. `stop`: strings that end
        it, left out of the text (the engine's `stop_strings`; the text is cut here too, as a stop string
        may straddle tokens the engine already let through). `job_id`: what `cancel` names it by.
        `deadline` (wall clock): when its caller stops waiting; a generation still waiting for KV cache then
        ends unrun."""
        ids = prompt_ids(self.chat, self.spec, prompt)
        config = generation_config(max_tokens or self.default_max_tokens, temperature, stop)
        blocks = refuse_beyond_cache(self.spec, self.cache, len(ids), config.max_new_tokens)
        self.waiting.append(_Waiting(ids, config, len(ids), blocks, on_done, on_delta, list(stop or []),
                                     deadline=deadline, job_id=job_id))
        self._admit()

    def cancel(self, job_id: str, reason: str) -> bool:
        """Stop a generation (`protocol.CANCEL_REASONS`): one still waiting for KV cache ends now; one in the
        engine is stopped (`GenerationHandle.stop`), and the next `step()` frees its KV cache and ends it
        with its text so far, finish reason `cut_reason(reason)`. False when no such generation runs."""
        if cancel_waiting(self.waiting, job_id, reason):
            return True
        for active in self.active.values():
            if active.job_id == job_id and active.cut is None:
                active.cut = cut_reason(reason)
                active.handle.stop()
                return True
        return False

    def _admit(self) -> None:
        """Move waiting requests into the engine, in order, while their worst case fits the cache."""
        while self.waiting and self.reserved_blocks + self.waiting[0].blocks <= self.cache.blocks:
            request = self.waiting.popleft()
            if expired(request.deadline, request.on_done, self.spec.name):
                continue
            request_id = next(self._ids)
            handle = self.pipeline.add_request(request_id, ov.Tensor(np.array([request.ids], dtype=np.int64)),
                                                request.config)
            self.reserved_blocks += request.blocks
            self.active[request_id] = _Active(
                handle=handle, prompt_tokens=request.prompt_tokens, max_tokens=request.config.max_new_tokens,
                on_done=request.on_done, on_delta=request.on_delta, blocks=request.blocks, started=request.started,
                stop=request.stop, job_id=request.job_id)

    def warm_up(self) -> None:
        """A full batch once at load (max_sequences prompts, a step of the engine's largest token count): the
        engine's buffers grow with its first generations and with concurrency, so the footprint is reached
        here and not during traffic."""
        if self.__dict__.get("warmed"):  # once per pipeline: its buffers stay
            return
        self.warmed = True
        words = MAX_STEP_TOKENS // self.max_sequences
        excess = len(self._chat("word " * words)) + 2 - self.cache.tokens  # a tiny cache takes shorter prompts
        words -= max(0, excess)
        if words < 1:
            log.warning("%s: no warm-up, its KV cache (%d tokens) is too small", self.spec.name, self.cache.tokens)
            return
        prompt = "word " * words
        done: list[Generated | Exception] = []
        for _ in range(self.max_sequences):
            self.submit(prompt, 2, None, on_done=done.append)
        while self.running:
            self.step()

    def cache_state(self) -> KVCache:
        """For the heartbeat thread: plain integers the loop updates after each step."""
        return KVCache(configured_bytes=self.cache.estimated_bytes, allocated_bytes=self.allocated_bytes,
                       used_bytes=self.used_bytes)

    def _release(self, request: _Active) -> None:
        self.reserved_blocks -= request.blocks

    def step(self) -> int:
        """Advance every active generation by one token; returns how many are still running or waiting."""
        expire_waiting(self.waiting, self.spec.name)
        self._admit()
        if not self.active:
            return len(self.waiting)
        try:
            self.pipeline.step()
        except Exception as exc:
            log.exception("generation step failed; failing %d requests", len(self.active))
            for request in self.active.values():
                request.on_done(exc)
            self.active.clear()
            self.reserved_blocks = 0
            return len(self.waiting)
        metrics = self.pipeline.get_metrics()
        self.allocated_bytes = int(metrics.cache_size_in_bytes)
        self.used_bytes = int(metrics.cache_usage / 100 * metrics.cache_size_in_bytes)
        now = time.perf_counter()
        for request_id, request in list(self.active.items()):
            if request.handle.can_read():
                for output in request.handle.read().values():
                    request.add(output.generated_ids, now)
                request.emit(self.tokenizer)
            status = request.handle.get_status()
            if status != og.GenerationStatus.RUNNING:
                del self.active[request_id]
                self._release(request)
                if status == og.GenerationStatus.IGNORED and request.cut is None:  # no cache for it: never silent
                    request.on_done(CacheFullError(f"{self.spec.name}: the engine had no KV cache for this "
                                                   "generation; try again", tokens=request.prompt_tokens))
                    continue
                ended = None if status == og.GenerationStatus.FINISHED else status.name.lower()
                request.on_done(request.result(self.tokenizer, now, ended))
        self._admit()
        return self.running

    def generate(self, prompt: Prompt, max_tokens: int | None = None,
                 temperature: float | None = None, stop: list[str] | None = None) -> Generated:
        """Blocking form for one prompt (a plain `rq worker`, tests); steps until it is done."""
        self.check(prompt)
        box: list[Generated | Exception] = []
        self.submit(prompt, max_tokens, temperature, box.append, stop=stop)
        while not box:
            self.step()
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]


def _cut(text: str, stop: list[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether there was one."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(found)], True) if found else (text, False)


def _partial(text: str, stop: str) -> int:
    """Length of the longest end of `text` that begins `stop`."""
    return next((n for n in range(min(len(stop) - 1, len(text)), 0, -1) if stop.startswith(text[-n:])), 0)
