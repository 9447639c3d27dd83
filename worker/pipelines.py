"""The OpenVINO pipelines a worker keeps in memory, one per model, built once at start: their plugin
configuration, and the text-embedding engine."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import openvino as ov
import openvino_genai as og
import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations with OpenVINO)
from tokenizers import Tokenizer

from dispatcher.errors import ErrorCode, InputTooLargeError, InvalidInputError
from dispatcher.models import ModelSpec

from .devices import first_that_compiles

log = logging.getLogger(__name__)

CPU_SHAPE_CACHE = 256
"""Input shapes whose compiled kernels the CPU plugin keeps (CPU_RUNTIME_CACHE_CAPACITY) for a generation model:
every new token count of a step adds an entry, and with the plugin's default the worker's memory kept growing."""
EMBED_SHAPE_CACHE = 32
"""The same for an embedding model, whose batches of any size and length make thousands of distinct shapes, so
a larger cache rarely hits and only holds memory; throughput did not suffer (docs/benchmarks.md)."""

FAST_TOKENIZER_TEXTS = 8
"""Batches of up to this many texts are tokenized by the Hugging Face tokenizer the model's OpenVINO
tokenizer was converted from (the same token ids); larger ones by the OpenVINO tokenizer, which is faster
there (docs/benchmarks.md)."""

TOKENIZER_CONFIG = {"INFERENCE_NUM_THREADS": 1}
"""The tokenizer model runs on one thread: a batch of short texts is too little work to share, and a second
thread only cost CPU waking and waiting (docs/benchmarks.md)."""

# One synchronous pipeline per worker process with the LATENCY hint: THROUGHPUT with one synchronous
# caller, or a second pipeline in another thread, was slower (docs/architecture.md). The one-pass model on
# CPU runs several streams instead, each with its own infer request, fed in parallel (`streams_config`).
def plugin_config(threads: int = 0, device: str = "CPU", shapes: int = CPU_SHAPE_CACHE,
                  cache: Path | None = None) -> dict[str, object]:
    """`threads` > 0 caps the CPU threads of one inference (NPU_INFERENCE_THREADS), for several worker
    processes sharing the cores; 0 lets OpenVINO use them all. The shape cache (`shapes` entries) is bounded
    on CPU only (other plugins refuse the property). `cache`: the compiled-model cache's root
    (`Settings.compile_cache`); blobs go to its subdirectory for the device."""
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
    if cache is not None:
        config["CACHE_DIR"] = str(device_cache(cache, device))
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    if device.upper().startswith("CPU"):
        config["CPU_RUNTIME_CACHE_CAPACITY"] = shapes
    return config


def embed_streams(streams: int | None = None, threads: int = 0) -> int:
    """How many streams the one-pass embedding model runs (NPU_EMBED_STREAMS); None: 2 when this machine has
    two cores or more and inference threads are not capped (`threads` 0), else 1.

    Two streams of one thread each, a batch split between them, ran batches faster for less CPU than one
    inference on both threads, and a lone text for far less CPU (one thread: no oneTBB worker waking and
    spinning around it), at the price of a slower lone text (docs/benchmarks.md)."""
    if streams is not None:
        return max(1, streams)
    return 2 if threads == 0 and (os.cpu_count() or 1) >= 2 else 1


def streams_config(streams: int, threads: int = 0, device: str = "CPU", shapes: int = EMBED_SHAPE_CACHE,
                   cache: Path | None = None) -> dict[str, object]:
    """`plugin_config` for `streams` parallel inferences: the THROUGHPUT hint with that many streams, on
    `threads` threads together (0: one each). 1 stream: `plugin_config` itself (the LATENCY hint)."""
    config = plugin_config(threads, device, shapes, cache)
    if streams > 1:
        config |= {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams,
                   "INFERENCE_NUM_THREADS": threads if threads > 0 else streams}
    return config


def split(n: int, parts: int) -> list[int]:
    """Sizes of `parts` contiguous slices of `n` rows, as even as possible, larger first (none empty)."""
    parts = max(1, min(parts, n))
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def device_cache(cache: Path, device: str) -> Path:
    """`<cache>/<DEVICE>`: one directory per device, so an operator sees (and can clear) what each compiled.
    The root is made private here; OpenVINO makes the device's directory when it writes a blob there."""
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    return cache / re.sub(r"[^A-Z0-9_.-]", "_", device.upper())


def require_model_dir(spec: ModelSpec) -> None:
    if not spec.path.is_dir():
        raise FileNotFoundError(f"{spec.name}: no model directory at {spec.path}; run `npu-worker "
                                "prepare-models` (bundled models) or `npu-worker export`")


class TextEmbeddingEngine:
    """The embedding engine (`worker.engines`): counts tokens, refuses or flags over-long input, embeds.

    Two paths give the same vectors (to float32 rounding). The one-pass path
    tokenizes a batch once, for the count every text needs before it is accepted and for the inference,
    then runs the model and pools here; the pipeline path (`TextEmbeddingPipeline`) tokenizes again
    inside. The pipeline path serves NPUs (static shapes), input cut by `truncate`, and models whose
    directory has no separate `openvino_model.xml`, and `one_pass=False` (NPU_EMBED_ONE_PASS=false).

    The one-pass model runs as `streams` streams (`embed_streams`), each with its infer request: a batch
    of two texts or more is split into that many contiguous slices run at once (the GIL released while
    they run), a lone text runs on one. 1 stream: one inference on every thread (the LATENCY hint).
    """

    task: Literal["embedding"] = "embedding"

    def __init__(self, spec: ModelSpec, chain: list[str], threads: int = 0, one_pass: bool = True,
                 batch_max: int = 32, padded_tokens: int = 2048, cache: Path | None = None,
                 streams: int | None = None):
        """`batch_max` and `padded_tokens`: the largest batch the worker runs (NPU_BATCH_MAX, and
        `worker.inference.PADDED_TOKENS`), which `warm_up` runs once. `cache`: the compiled-model cache
        (`Settings.compile_cache`) for every model compiled here. `streams`: the one-pass model's
        (NPU_EMBED_STREAMS; None: `embed_streams`' default, as the worker's)."""
        require_model_dir(spec)
        self.spec = spec
        self.batch_max, self.padded_tokens = batch_max, padded_tokens
        config = og.TextEmbeddingPipeline.Config()
        config.pooling_type = (og.TextEmbeddingPipeline.PoolingType.MEAN if spec.pooling == "mean"
                               else og.TextEmbeddingPipeline.PoolingType.CLS)
        config.normalize = spec.normalize
        # The pipeline truncates to this; the worker refuses longer input first unless truncation is asked.
        config.max_length = spec.max_input_tokens
        self.pipeline, self.device = first_that_compiles(
            lambda device: og.TextEmbeddingPipeline(str(spec.path), device, config,
                                             **plugin_config(threads, device, EMBED_SHAPE_CACHE, cache)),
            chain, spec.name)
        # The tokenizer model compiled on its own counts tokens faster than openvino_genai.Tokenizer.encode,
        # and every text is counted before it is embedded.
        core = ov.Core()
        self._tokenize = core.compile_model(spec.path / "openvino_tokenizer.xml", "CPU",
                                            TOKENIZER_CONFIG | ({"CACHE_DIR": str(device_cache(cache, "CPU"))}
                                                                if cache else {}))
        self._fast = FastTokenizer.load(spec.path, self._ov_tokens)
        self._model: ov.CompiledModel | None = None
        self._requests: list[ov.InferRequest] = []
        model_file = spec.path / "openvino_model.xml"
        if one_pass and model_file.is_file() and not self.device.startswith("NPU"):
            # The device the pipeline compiled on; its plugin takes the model's dynamic shapes.
            device = self.device.split(",")[0].split(":")[-1]
            n = embed_streams(streams, threads) if device.upper().startswith("CPU") else 1
            self._model = core.compile_model(model_file, device,
                                             streams_config(n, threads, device, EMBED_SHAPE_CACHE, cache))
            self._inputs = {i.get_any_name() for i in self._model.inputs}
            self._requests = [self._model.create_infer_request() for _ in range(n)]
        self._last: tuple[dict[str, int], dict[str, np.ndarray]] | None = None
        """The last batch `count_tokens` tokenized (text -> row, arrays), for `embed` to reuse."""

    @property
    def one_pass(self) -> bool:
        return self._model is not None

    def warm_up(self) -> None:
        """Run the largest shapes this worker will ever run once, at load: the engine keeps the buffers of the
        largest shape it ran, so the worker's footprint is reached here, not whenever traffic first brings
        such a batch."""
        cap, padded_tokens = self.batch_max, self.padded_tokens
        if self.__dict__.get("warmed"):  # once per pipeline: its buffers stay
            return
        self.warmed = True
        longest = self.spec.max_input_tokens
        for n, tokens in ((max(1, min(cap, padded_tokens // longest)), longest),
                          (cap, max(1, min(longest, padded_tokens // cap)))):
            texts = ["word " * max(1, tokens - 2)] * n  # with [CLS] and [SEP]: `tokens` tokens, within the limit
            self.embed(texts)
            if self._model is not None:  # the pipeline serves input cut by `truncate`: its largest shape too
                self.pipeline.embed_documents(texts)

    def count_tokens(self, texts: list[str]) -> list[int]:
        if self._fast is not None and len(texts) <= FAST_TOKENIZER_TEXTS:
            arrays = self._fast(texts)
        else:
            arrays = self._ov_tokens(texts)
        self._last = ({text: row for row, text in enumerate(texts)}, arrays)
        return [int(n) for n in arrays["attention_mask"].sum(axis=1)]

    def _ov_tokens(self, texts: list[str]) -> dict[str, np.ndarray]:
        return {o.get_any_name(): value for o, value in self._tokenize(texts).items()}

    def check(self, texts: list[str], truncate: bool, counts: list[int] | None = None,
              max_total: int | None = None) -> tuple[list[int], list[bool]]:
        """Token counts and truncation flags; refuses over-long input unless truncation was asked for, and
        a request whose texts together exceed `max_total` tokens (counted as they will run, i.e. cut).

        Pass `counts` from one `count_tokens` call over a whole batch: one tokenizer call for many texts
        costs far less than one call per text.
        """
        limit = self.spec.max_input_tokens
        counts = self.count_tokens(texts) if counts is None else counts
        too_long = [i for i, n in enumerate(counts) if n > limit]
        if too_long and not truncate:
            i = too_long[0]
            raise InvalidInputError(
                f"texts[{i}] has {counts[i]} tokens; {self.spec.name} takes at most {limit} "
                "(ask for truncate=true to cut it)", code=ErrorCode.INPUT_TOO_LONG, index=i, tokens=counts[i],
                limit=limit)
        total = sum(min(n, limit) for n in counts)
        if max_total is not None and total > max_total:
            raise InputTooLargeError(f"the texts have {total} tokens together; one request may have at most "
                                     f"{max_total}", code=ErrorCode.TOO_MANY_TOKENS, tokens=total, limit=max_total)
        return counts, [n > limit for n in counts]

    @property
    def streams(self) -> int:
        """Inferences the one-pass model runs at once (0 on the pipeline path)."""
        return len(self._requests)

    def embed(self, texts: list[str]) -> np.ndarray:
        parts = self._tokens(texts) if self._model is not None else None
        if parts is None:
            return np.asarray(self.pipeline.embed_documents(texts), dtype=np.float32)
        if len(parts) == 1:
            hidden = self._requests[0].infer(parts[0], share_inputs=True, share_outputs=True)[0]
            return pool(self.spec, hidden, parts[0]["attention_mask"])
        # start_async returns at once; wait() releases the GIL while the streams run.
        running = list(zip(self._requests, parts, strict=False))
        for request, tokens in running:
            request.start_async(tokens, share_inputs=True)
        vectors = []
        for request, tokens in running:
            request.wait()
            # the request's own output buffer: pooled (copied) before the request runs again
            vectors.append(pool(self.spec, request.get_output_tensor(0).data, tokens["attention_mask"]))
        return np.concatenate(vectors)

    def _tokens(self, texts: list[str]) -> list[dict[str, np.ndarray]] | None:
        """The model's inputs for the texts' rows of the last counted batch (else a new tokenization), one
        contiguous slice per stream (one for a lone text), each trimmed to its longest; None when a text is
        longer than the model takes (the pipeline path cuts it)."""
        rows, arrays = self._last if self._last is not None else ({}, {})
        if not all(text in rows for text in texts):
            self.count_tokens(texts)
            rows, arrays = self._last  # type: ignore[misc]
        index = [rows[text] for text in texts]
        lengths = arrays["attention_mask"][index].sum(axis=1)
        if int(lengths.max()) > self.spec.max_input_tokens:
            return None
        parts, start = [], 0
        for size in split(len(index), len(self._requests)):
            rows_of = index[start:start + size]
            width = int(lengths[start:start + size].max())
            tokens = {name: arrays[name][rows_of, :width] for name in self._inputs if name in arrays}
            if "token_type_ids" in self._inputs and "token_type_ids" not in tokens:
                tokens["token_type_ids"] = np.zeros_like(tokens["input_ids"])
            parts.append(tokens)
            start += size
        return parts


PROBES = ("Hello, world!", "naïve café: 東京 🤖, don't", "The QUICK brown fox\tjumps " * 40)
"""Texts both tokenizers must agree on before the fast one is used (case, accents, CJK, emoji, length)."""


class FastTokenizer:
    """The model's own `tokenizer.json` through Hugging Face `tokenizers` (Rust), for small batches, where it
    costs far less than a call of the OpenVINO tokenizer (docs/benchmarks.md). No padding, no truncation: the same
    arrays as the OpenVINO tokenizer gives (`tests/worker/test_tokenizers.py` compares them)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, model_dir: Path, reference: Callable[[list[str]], dict[str, np.ndarray]]) -> FastTokenizer | None:
        """None when the model has no `tokenizer.json`, or when it does not give `reference`'s (the OpenVINO
        tokenizer's) ids for a few probe texts: then the OpenVINO tokenizer serves every batch."""
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            return None
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        fast = cls(tokenizer)
        for text in PROBES:
            ours, theirs = fast([text])["input_ids"], reference([text])["input_ids"]
            if ours.tolist() != theirs.tolist():
                log.warning("%s: tokenizer.json gives other ids than openvino_tokenizer.xml for %r: not used",
                            model_dir.name, text[:40])
                return None
        return fast

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        # One `encode` per text: `encode_batch` hands a few texts to a thread pool, which cost more than it saved.
        encodings = [self.tokenizer.encode(text) for text in texts]
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask, types = np.zeros_like(ids), np.zeros_like(ids)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = e.ids, e.attention_mask, e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def pool(spec: ModelSpec, hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Vectors from the model's last hidden state, pooled and normalized as the registry says (as
    `TextEmbeddingPipeline` does)."""
    if spec.pooling == "mean":
        mask = attention_mask[..., None].astype(np.float32)
        vectors = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    else:
        vectors = hidden[:, 0]
    if spec.normalize:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)
