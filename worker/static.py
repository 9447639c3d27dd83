"""Embeddings with fixed shapes, for devices that compile only static ones (the NPU).

The model is compiled once per sequence-length bucket at one batch size ([static_batch, length]). A
batch of texts is cut into batches of that size, the last one padded with rows whose vectors are dropped,
and each runs on the smallest bucket its longest text fits. Counting and checking texts is the dynamic
engine's (`TextEmbeddingEngine`), so both refuse the same input.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import openvino as ov

from dispatcher.models import ModelSpec

from .devices import first_that_compiles
from .pipelines import (
    EMBED_SHAPE_CACHE,
    TOKENIZER_CONFIG,
    FastTokenizer,
    TextEmbeddingEngine,
    device_cache,
    plugin_config,
    pool,
    require_model_dir,
)

log = logging.getLogger(__name__)
DEFAULT_BATCH = 8
"""Texts per inference when the registry gives no `static_batch` (the engine forced on a model without one)."""


def buckets(spec: ModelSpec) -> list[int]:
    """The registry's lengths up to max_input_tokens, which is always the last (any accepted text fits)."""
    return sorted({n for n in spec.length_buckets if n < spec.max_input_tokens} | {spec.max_input_tokens})


class StaticEmbeddingEngine(TextEmbeddingEngine):
    """An embedding engine (`worker.engines`) running only [batch, bucket] shapes."""

    def __init__(self, spec: ModelSpec, chain: list[str], threads: int = 0, cache: Path | None = None):
        # Not TextEmbeddingEngine.__init__: no pipeline, one compiled model per bucket instead.
        require_model_dir(spec)
        self.spec = spec
        self.batch = spec.static_batch or DEFAULT_BATCH
        self.buckets = buckets(spec)
        core = ov.Core()
        model_file = spec.path / "openvino_model.xml"
        if not model_file.is_file():
            raise FileNotFoundError(f"{spec.name}: the fixed-shape engine needs {model_file.name} in {spec.path}")

        def build(device: str) -> dict[int, ov.CompiledModel]:
            compiled = {}
            for length in self.buckets:
                model = core.read_model(model_file)
                model.reshape({i.get_any_name(): ov.PartialShape([self.batch, length]) for i in model.inputs})
                compiled[length] = core.compile_model(model, device,
                                                      plugin_config(threads, device, EMBED_SHAPE_CACHE, cache))
            return compiled

        self.models, self.device = first_that_compiles(build, chain, spec.name)
        self._inputs = {i.get_any_name() for i in self.models[self.buckets[0]].inputs}
        self._tokenize = core.compile_model(spec.path / "openvino_tokenizer.xml", "CPU",
                                            TOKENIZER_CONFIG | ({"CACHE_DIR": str(device_cache(cache, "CPU"))}
                                                                if cache else {}))
        self._fast = FastTokenizer.load(spec.path, self._ov_tokens)  # the host's tokenizer, as the dynamic path's
        self._model = None
        self._requests = []
        self._last = None
        log.info("%s: fixed shapes, batch %d, lengths %s", spec.name, self.batch, self.buckets)

    def warm_up(self) -> None:
        """Every compiled shape once, at load (as the dynamic engine runs its largest)."""
        if self.__dict__.get("warmed"):
            return
        self.warmed = True
        for length in self.buckets:
            self.embed(["word " * max(1, length - 2)])

    def embed(self, texts: list[str]) -> np.ndarray:
        """Shortest texts first, so that each inference's longest (its bucket) is as short as it can be."""
        ids, mask = self._rows(texts)
        order = np.argsort(mask.sum(axis=1), kind="stable")
        ids, mask = ids[order], mask[order]
        vectors = np.empty((len(texts), 0), np.float32)
        for i in range(0, len(texts), self.batch):
            part = self._run(ids[i:i + self.batch], mask[i:i + self.batch])
            if not i:
                vectors = np.empty((len(texts), part.shape[1]), np.float32)
            vectors[order[i:i + self.batch]] = part
        return vectors

    def _rows(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The texts' token ids and masks (from the last count when it had them), cut as the pipeline cuts
        (the first max_input_tokens - 1 tokens and the last, [SEP]) when truncation let them be longer."""
        rows, arrays = self._last if self._last is not None else ({}, {})
        if not all(text in rows for text in texts):
            self.count_tokens(texts)
            rows, arrays = self._last  # type: ignore[misc]
        index = [rows[text] for text in texts]
        ids, mask = arrays["input_ids"][index], arrays["attention_mask"][index]
        limit = self.spec.max_input_tokens
        if ids.shape[1] > limit:
            lengths = mask.sum(axis=1)
            ends = ids[np.arange(len(index)), np.maximum(lengths - 1, 0)]
            ids, mask = ids[:, :limit].copy(), mask[:, :limit].copy()
            cut = lengths > limit
            ids[cut, limit - 1] = ends[cut]
        return ids, mask

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One inference of at most `batch` rows on the smallest bucket that holds the longest."""
        n = len(ids)
        longest = int(mask.sum(axis=1).max())
        length = next(b for b in self.buckets if b >= longest)
        shape = (self.batch, length)
        tokens = {"input_ids": np.zeros(shape, np.int64), "attention_mask": np.zeros(shape, np.int64),
                  "token_type_ids": np.zeros(shape, np.int64)}
        width = min(length, ids.shape[1])
        tokens["input_ids"][:n, :width] = ids[:, :width]
        tokens["attention_mask"][:n, :width] = mask[:, :width]
        tokens["attention_mask"][n:, 0] = 1  # padding rows: one token each, their vectors dropped
        hidden = self.models[length]({name: tokens[name] for name in self._inputs})[0]
        return pool(self.spec, hidden[:n], tokens["attention_mask"][:n])
