"""Generation with continuous batching: many prompts advance together, one token per `step()`.

`ContinuousBatchingPipeline` (add_request/step) instead of `LLMPipeline.generate`: the latter serves
one prompt at a time and is not safe from several threads, while here every active request gains a
token per step (4 concurrent generations measured 3.2x the tokens/s of one on this CPU). The worker
loop calls `step()` between its Redis reads, so interactive and bulk jobs join a running batch.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import openvino as ov
import openvino_genai as og

from dispatcher.errors import ErrorCode, InvalidInputError
from dispatcher.models import ModelSpec
from dispatcher.protocol import Prompt, as_messages
from dispatcher.settings import Settings

from .chat import ChatEncoder
from .devices import first_that_compiles
from .pipelines import plugin_config, require_model_dir

log = logging.getLogger(__name__)
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


@dataclass
class _Active:
    handle: og.GenerationHandle
    prompt_tokens: int
    max_tokens: int
    on_done: Callable[[Generated | Exception], None]
    on_delta: Callable[[str], None] | None
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    ids: list[int] = field(default_factory=list)
    sent: int = 0
    """Characters of the decoded text already passed to on_delta."""
    stop: list[str] = field(default_factory=list)


class Generator:
    def __init__(self, spec: ModelSpec, chain: list[str], max_sequences: int = 8, threads: int = 0,
                 default_max_tokens: int = Settings.model_fields["default_new_tokens"].default):
        """`default_max_tokens`: for a job that does not say (the dispatcher always does; a backend's plain
        `Queue.enqueue` may not); `threads` as for `Embedder` (NPU_INFERENCE_THREADS)."""
        require_model_dir(spec)
        self.spec = spec
        self.max_sequences = max_sequences
        self.default_max_tokens = default_max_tokens
        scheduler = og.SchedulerConfig()
        scheduler.cache_size = 1  # GB of KV cache: ample for a small model and a few sequences
        scheduler.max_num_seqs = max_sequences
        self.pipeline, self.device = first_that_compiles(
            lambda device: og.ContinuousBatchingPipeline(str(spec.path), scheduler, device, plugin_config(threads)),
            chain, spec.name)
        self.tokenizer = self.pipeline.get_tokenizer()
        self.chat = ChatEncoder(self.tokenizer)
        self.active: dict[int, _Active] = {}
        self._ids = itertools.count()

    @property
    def free_slots(self) -> int:
        return max(0, self.max_sequences - len(self.active))

    def _chat(self, prompt: Prompt) -> list[int]:
        """Token ids, not the template's text: contents must stay plain text (worker/chat.py)."""
        return self.chat.encode(as_messages(prompt))

    def check(self, prompt: Prompt) -> int:
        """Prompt tokens (chat template included); refuses a prompt longer than the model takes."""
        tokens = len(self._chat(prompt))
        if tokens > self.spec.max_input_tokens:
            raise InvalidInputError(f"prompt has {tokens} tokens; {self.spec.name} takes at most "
                                    f"{self.spec.max_input_tokens}", code=ErrorCode.INPUT_TOO_LONG, tokens=tokens,
                                    limit=self.spec.max_input_tokens)
        return tokens

    def submit(self, prompt: Prompt, max_tokens: int | None, temperature: float | None,
               on_done: Callable[[Generated | Exception], None],
               on_delta: Callable[[str], None] | None = None, stop: list[str] | None = None) -> None:
        """Start a generation; it advances with each `step()` and ends in `on_done`. `stop`: strings that end
        it, left out of the text (the engine's `stop_strings`; the text is cut here too, as a stop string
        may straddle tokens the engine already let through)."""
        ids = self._chat(prompt)
        prompt_tokens = len(ids)
        if prompt_tokens > self.spec.max_input_tokens:
            self.check(prompt)  # raises with the details
        config = og.GenerationConfig()
        config.max_new_tokens = max_tokens or self.default_max_tokens
        config.apply_chat_template = False  # applied above, so the token count is the real one
        if temperature and temperature >= GREEDY_BELOW:
            config.do_sample = True
            config.temperature = temperature
        if stop:
            config.stop_strings = set(stop)
            config.include_stop_str_in_output = False
        request_id = next(self._ids)
        handle = self.pipeline.add_request(request_id, ov.Tensor(np.array([ids], dtype=np.int64)), config)
        self.active[request_id] = _Active(handle, prompt_tokens, config.max_new_tokens, on_done, on_delta,
                                          stop=list(stop or []))

    def step(self) -> int:
        """Advance every active generation by one token; returns how many are still running."""
        if not self.active:
            return 0
        try:
            self.pipeline.step()
        except Exception as exc:
            log.exception("generation step failed; failing %d requests", len(self.active))
            for request in self.active.values():
                request.on_done(exc)
            self.active.clear()
            return 0
        now = time.perf_counter()
        for request_id, request in list(self.active.items()):
            if request.handle.can_read():
                for output in request.handle.read().values():
                    request.ids.extend(output.generated_ids)
                if request.first_token is None and request.ids:
                    request.first_token = now
                if request.on_delta:
                    self._emit(request)
            status = request.handle.get_status()
            if status != og.GenerationStatus.RUNNING:
                del self.active[request_id]
                text, stopped = _cut(self.tokenizer.decode(request.ids), request.stop)
                if request.on_delta and len(text) > request.sent:
                    request.on_delta(text[request.sent:])
                if status != og.GenerationStatus.FINISHED:
                    reason = status.name.lower()
                else:
                    reason = "length" if len(request.ids) >= request.max_tokens and not stopped else "stop"
                request.on_done(Generated(
                    text=text, prompt_tokens=request.prompt_tokens, completion_tokens=len(request.ids),
                    finish_reason=reason,
                    ttft_ms=((request.first_token or now) - request.started) * 1000,
                    duration_ms=(now - request.started) * 1000))
        return len(self.active)

    def _emit(self, request: _Active) -> None:
        text = self.tokenizer.decode(request.ids)
        if request.stop:  # hold back what may be the start of a stop string, and never send one
            text = _cut(text, request.stop)[0]
            text = text[:len(text) - max((_partial(text, s) for s in request.stop), default=0)]
        # A multi-byte character split across tokens decodes to U+FFFD until its last token arrives.
        if text.endswith("\ufffd"):
            return
        if len(text) > request.sent:
            request.on_delta(text[request.sent:])  # type: ignore[misc]
            request.sent = len(text)

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
