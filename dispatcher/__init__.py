"""What backends import: embed or generate on local workers (with cloud fallback), or submit bulk jobs.

    from dispatcher import embed, submit_embed
    vectors = embed(["hello"], "all-minilm-l6-v2").vectors

The module-level functions use one dispatcher built from the environment (`NPU_*`, `REDIS_URL`);
build a `Dispatcher` / `AsyncDispatcher` yourself for anything else.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from .client import AsyncDispatcher, Dispatcher
from .errors import (
    InputTooLargeError,
    InvalidInputError,
    JobFailedError,
    ModelNotFoundError,
    NPUError,
    NPUUnavailableError,
    OverloadedError,
    WorkerLostError,
)
from .protocol import Prompt
from .results import EmbedResult, GenerateResult, StreamChunk
from .settings import CallerSettings, FacadeSettings, RedisSettings, Settings, WorkerSettings, get_settings
from .signing import AsyncServiceHTTPClient, ServiceHTTPClient

__all__ = [
    "AsyncDispatcher", "AsyncServiceHTTPClient", "CallerSettings", "Dispatcher", "EmbedResult", "FacadeSettings",
    "GenerateResult", "InputTooLargeError", "InvalidInputError", "JobFailedError", "ModelNotFoundError", "NPUError",
    "NPUUnavailableError", "OverloadedError", "RedisSettings", "ServiceHTTPClient", "Settings", "StreamChunk",
    "WorkerLostError", "WorkerSettings", "aembed", "agenerate", "embed", "generate", "get_settings", "submit_embed",
    "submit_generate",
]


@cache
def _sync() -> Dispatcher:
    return Dispatcher()


@cache
def _async() -> AsyncDispatcher:
    return AsyncDispatcher()


def embed(texts: list[str], model: str | None = None, **options: Any) -> EmbedResult:
    return _sync().embed(texts, model, **options)


def generate(prompt: Prompt, model: str | None = None, **options: Any) -> GenerateResult:
    return _sync().generate(prompt, model, **options)


async def aembed(texts: list[str], model: str | None = None, **options: Any) -> EmbedResult:
    return await _async().embed(texts, model, **options)


async def agenerate(prompt: Prompt, model: str | None = None, **options: Any) -> GenerateResult:
    return await _async().generate(prompt, model, **options)


def submit_embed(texts: list[str], model: str | None = None, **options: Any) -> Any:
    return _sync().submit_embed(texts, model, **options)


def submit_generate(prompt: Prompt, model: str | None = None, **options: Any) -> Any:
    return _sync().submit_generate(prompt, model, **options)
