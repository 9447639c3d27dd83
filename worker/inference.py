"""Running the loaded engines with the bookkeeping both lanes share: busy time, batch and model counters."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from .stats import Stats

if TYPE_CHECKING:
    from .engines import EmbeddingEngine, GenerationEngine

PADDED_TOKENS = 2048
"""Most tokens in one embedding inference, counted as the engine runs them (texts x the longest, padded).
The engine keeps the buffers of the largest shape it ran for good, so the largest shape decides a worker's
footprint: long texts go fewer per inference, short ones still go a whole batch at a time."""


def chunks(counts: list[int], cap: int, limit: int) -> list[int]:
    """Sizes of consecutive inferences: at most `cap` texts and `PADDED_TOKENS` padded tokens each."""
    sizes: list[int] = []
    n = longest = 0
    for count in counts:
        count = min(count, limit)
        if n and (n + 1 > cap or (n + 1) * max(longest, count) > PADDED_TOKENS):
            sizes.append(n)
            n = longest = 0
        n, longest = n + 1, max(longest, count)
    return sizes + [n] if n else sizes


def embed(engine: EmbeddingEngine, texts: list[str], cap: int, stats: Stats,
          counts: list[int] | None = None) -> np.ndarray:
    """Inferences of at most `cap` texts and `PADDED_TOKENS` tokens, counted as busy time for utilization."""
    started = time.perf_counter()
    sizes = chunks(engine.count_tokens(texts) if counts is None else counts, cap, engine.spec.max_input_tokens)
    with stats.inference(len(texts)):
        parts, row = [], 0
        for size in sizes:
            parts.append(engine.embed(texts[row:row + size]))
            row += size
    stats.count_batches(sizes)
    stats.count_model(engine.spec.name, len(parts), len(texts), time.perf_counter() - started)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def advance(generators: Iterable[GenerationEngine], stats: Stats) -> None:
    """Every running generation gains a token; the step counts as busy time."""
    with stats.inference():
        for generator in generators:
            generator.step()
