"""One embedding batch, whichever lane its jobs came from: count every text once, check each job, run the
accepted ones together, and hand each job its own rows back.

The interactive lane feeds it jobs read from a stream and turns the results into replies; the bulk lane
feeds it RQ jobs and turns the results into RQ results. text-embeddings-inference builds its `NextBatch`
the same way regardless of where the requests came from.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from . import inference
from .engines import EmbeddingEngine
from .stats import Stats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Texts:
    """One job's input."""

    texts: list[str]
    truncate: bool


@dataclass(frozen=True)
class Embedded:
    """One job's output."""

    vectors: np.ndarray
    token_counts: list[int]
    truncated: list[bool]


@dataclass(frozen=True)
class Batch:
    results: list[Embedded | Exception]
    """Per job, in order: its vectors, or why it was refused (an `NPUError`) or failed."""
    texts: int
    """Texts run together in the inference."""
    started: float
    """Wall-clock time the inference began."""
    inference_ms: float


def embed_batch(engine: EmbeddingEngine, jobs: list[Texts], batch_max: int, max_request_tokens: int | None,
                stats: Stats) -> Batch:
    """A job the engine refuses fails alone; when the inference fails, every accepted job gets its error.
    One tokenizer call counts the whole batch (`engine.check` is handed each job's share)."""
    results: dict[int, Embedded | Exception] = {}
    accepted: list[tuple[int, list[int], list[bool]]] = []
    all_texts = [t for job in jobs for t in job.texts]
    counts = engine.count_tokens(all_texts) if all_texts else []
    row = 0
    for i, job in enumerate(jobs):
        n = len(job.texts)
        try:
            accepted.append((i, *engine.check(job.texts, job.truncate, counts[row:row + n], max_request_tokens)))
        except Exception as exc:  # refused: this job only, the rest of the batch goes on
            results[i] = exc
        row += n
    texts = [t for i, _, _ in accepted for t in jobs[i].texts]
    started = time.time()
    if accepted:
        try:
            vectors = inference.embed(engine, texts, batch_max, stats, [n for _, own, _ in accepted for n in own])
        except Exception as exc:
            log.exception("embedding inference failed for %d jobs", len(accepted))
            results.update((i, exc) for i, _, _ in accepted)
        else:
            row = 0
            for i, own, truncated in accepted:
                n = len(jobs[i].texts)
                results[i] = Embedded(vectors[row:row + n], own, truncated)
                row += n
    return Batch([results[i] for i in range(len(jobs))], len(texts), started, (time.time() - started) * 1000)
