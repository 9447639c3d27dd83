"""Running the loaded pipelines with the bookkeeping both lanes share: busy time, batch and model counters."""

from __future__ import annotations

import time

import numpy as np

from .generation import Generator
from .pipelines import Embedder
from .stats import Stats


def embed(pipeline: Embedder, texts: list[str], cap: int, stats: Stats) -> np.ndarray:
    """One inference per `cap` texts, counted as busy time for utilization."""
    started = time.perf_counter()
    with stats.inference(len(texts)):
        parts = [pipeline.embed(texts[i:i + cap]) for i in range(0, len(texts), cap)]
    stats.count_batches([len(texts[i:i + cap]) for i in range(0, len(texts), cap)])
    stats.count_model(pipeline.spec.name, len(parts), len(texts), time.perf_counter() - started)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def advance(generators: list[Generator], stats: Stats) -> None:
    """Every running generation gains a token; the step counts as busy time."""
    with stats.inference():
        for generator in generators:
            generator.step()
