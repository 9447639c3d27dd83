"""The OpenVINO pipelines a worker keeps in memory, one per model, built once at start."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino_genai as og
import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations with OpenVINO)

from dispatcher.errors import InputTooLargeError, InvalidInputError
from dispatcher.models import ModelSpec

from .devices import first_that_compiles

CPU_SHAPE_CACHE = 256
"""Input shapes whose compiled kernels the CPU plugin keeps (CPU_RUNTIME_CACHE_CAPACITY; its default 5000).
Every new (batch, tokens) shape of an embedding batch, and every new token count of a generation step, adds
an entry: with the default, an embedding worker fed batches of 1-32 texts of varying length grew
230 -> 653 MB over 3,500 batches and was still growing; with 50 entries, 230 -> 470 MB."""


# One synchronous pipeline per worker process with the LATENCY hint: THROUGHPUT with one synchronous
# caller ran at half speed here, and a second pipeline in another thread was slower (docs/architecture.md).
def plugin_config(threads: int = 0, device: str = "CPU") -> dict[str, object]:
    """`threads` > 0 caps the CPU threads of one inference (NPU_INFERENCE_THREADS), for several worker
    processes sharing the cores; 0 lets OpenVINO use them all. The shape cache is bounded on CPU only (other
    plugins refuse the property)."""
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    if device.upper().startswith("CPU"):
        config["CPU_RUNTIME_CACHE_CAPACITY"] = CPU_SHAPE_CACHE
    return config


def require_model_dir(spec: ModelSpec) -> None:
    if not spec.path.is_dir():
        raise FileNotFoundError(f"{spec.name}: no model directory at {spec.path}; run `npu-worker "
                                "prepare-models` (bundled models) or `npu-worker export`")


class Embedder:
    def __init__(self, spec: ModelSpec, chain: list[str], threads: int = 0):
        require_model_dir(spec)
        self.spec = spec
        config = og.TextEmbeddingPipeline.Config()
        config.pooling_type = (og.TextEmbeddingPipeline.PoolingType.MEAN if spec.pooling == "mean"
                               else og.TextEmbeddingPipeline.PoolingType.CLS)
        config.normalize = spec.normalize
        # The pipeline truncates to this; the worker refuses longer input first unless truncation is asked.
        config.max_length = spec.max_input_tokens
        self.pipeline, self.device = first_that_compiles(
            lambda device: og.TextEmbeddingPipeline(str(spec.path), device, config, **plugin_config(threads, device)),
            chain, spec.name)
        # The tokenizer model compiled on its own counts tokens 4x faster than openvino_genai.Tokenizer.encode
        # (0.4 vs 1.7 ms for 32 short texts here), and every text is counted before it is embedded.
        self._tokenize = ov.Core().compile_model(spec.path / "openvino_tokenizer.xml", "CPU")

    def warm_up(self, cap: int, padded_tokens: int) -> None:
        """Run the largest shapes this worker will ever run (worker.inference.PADDED_TOKENS) once, at load: the
        engine keeps the buffers of the largest shape it ran, so the worker's footprint is reached here, not
        whenever traffic first brings such a batch."""
        if self.__dict__.get("warmed"):  # once per pipeline: its buffers stay
            return
        self.warmed = True
        longest = self.spec.max_input_tokens
        for n, tokens in ((max(1, min(cap, padded_tokens // longest)), longest),
                          (cap, max(1, min(longest, padded_tokens // cap)))):
            self.embed(["word " * tokens] * n)  # the pipeline cuts each text at max_input_tokens

    def count_tokens(self, texts: list[str]) -> list[int]:
        mask = self._tokenize(texts)["attention_mask"]
        return [int(n) for n in mask.sum(axis=1)]

    def check(self, texts: list[str], truncate: bool, counts: list[int] | None = None,
              max_total: int | None = None) -> tuple[list[int], list[bool]]:
        """Token counts and truncation flags; refuses over-long input unless truncation was asked for, and
        a request whose texts together exceed `max_total` tokens (counted as they will run, i.e. cut).

        Pass `counts` from one `count_tokens` call over a whole batch: one tokenizer call for 32 texts
        costs 0.4 ms here, 32 calls of one text 7.7 ms.
        """
        limit = self.spec.max_input_tokens
        counts = self.count_tokens(texts) if counts is None else counts
        too_long = [i for i, n in enumerate(counts) if n > limit]
        if too_long and not truncate:
            i = too_long[0]
            raise InvalidInputError(
                f"texts[{i}] has {counts[i]} tokens; {self.spec.name} takes at most {limit} "
                "(ask for truncate=true to cut it)", code="input_too_long", index=i, tokens=counts[i],
                limit=limit)
        total = sum(min(n, limit) for n in counts)
        if max_total is not None and total > max_total:
            raise InputTooLargeError(f"the texts have {total} tokens together; one request may have at most "
                                     f"{max_total}", code="too_many_tokens", tokens=total, limit=max_total)
        return counts, [n > limit for n in counts]

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.pipeline.embed_documents(texts), dtype=np.float32)
