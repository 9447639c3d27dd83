"""The OpenAI-compatible cloud fallback (any server speaking `/embeddings` and `/chat/completions`)."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from .errors import NPUUnavailableError
from .models import ModelSpec
from .protocol import Prompt, as_messages
from .settings import Settings


class CloudClient:
    """Sync and async calls to the cloud API; one instance per dispatcher, connections pooled."""

    def __init__(self, settings: Settings):
        self.base_url = (settings.cloud_base_url or "").rstrip("/")
        self.timeout = settings.cloud_timeout_s
        self.headers = {"Authorization": f"Bearer {settings.cloud_api_key}"} if settings.cloud_api_key else {}
        self._sync: httpx.Client | None = None
        self._async: httpx.AsyncClient | None = None

    def available_for(self, spec: ModelSpec) -> bool:
        return bool(self.base_url and spec.cloud_model)

    # --- request bodies and answers, shared by both forms

    @staticmethod
    def _embed_body(spec: ModelSpec, texts: list[str]) -> dict[str, Any]:
        return {"model": spec.cloud_model, "input": texts, "encoding_format": "float"}

    @staticmethod
    def _generate_body(spec: ModelSpec, prompt: Prompt, max_tokens: int | None,
                       temperature: float | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": spec.cloud_model, "messages": as_messages(prompt)}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        return body

    @staticmethod
    def _check(response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise NPUUnavailableError(f"cloud fallback answered {response.status_code}: {response.text[:200]}")
        return response.json()

    @staticmethod
    def _vectors(spec: ModelSpec, data: dict[str, Any], n: int) -> np.ndarray:
        rows = sorted(data["data"], key=lambda item: item.get("index", 0))
        vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
        if vectors.shape[0] != n:
            raise NPUUnavailableError(f"cloud fallback returned {vectors.shape[0]} vectors for {n} texts")
        # Vectors of another space cannot be compared with local ones: refuse rather than mix them in.
        if spec.dim and vectors.shape[1] != spec.dim:
            raise NPUUnavailableError(
                f"cloud model {spec.cloud_model!r} returns {vectors.shape[1]}-dim vectors, "
                f"{spec.name!r} has {spec.dim}; refusing to mix embedding spaces",
                reason="cloud_dimension_mismatch",
            )
        return vectors

    @staticmethod
    def _text(data: dict[str, Any]) -> tuple[str, int | None, int | None]:
        usage = data.get("usage") or {}
        return (data["choices"][0]["message"]["content"], usage.get("prompt_tokens"),
                usage.get("completion_tokens"))

    # --- sync

    def _client(self) -> httpx.Client:
        if self._sync is None:
            self._sync = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout)
        return self._sync

    def embed(self, spec: ModelSpec, texts: list[str]) -> np.ndarray:
        try:
            response = self._client().post("/embeddings", json=self._embed_body(spec, texts))
        except httpx.HTTPError as exc:
            raise NPUUnavailableError(f"cloud fallback unreachable: {exc!r}") from exc
        return self._vectors(spec, self._check(response), len(texts))

    def generate(self, spec: ModelSpec, prompt: Prompt, max_tokens: int | None,
                 temperature: float | None) -> tuple[str, int | None, int | None]:
        try:
            response = self._client().post("/chat/completions",
                                           json=self._generate_body(spec, prompt, max_tokens, temperature))
        except httpx.HTTPError as exc:
            raise NPUUnavailableError(f"cloud fallback unreachable: {exc!r}") from exc
        return self._text(self._check(response))

    # --- async

    def _aclient(self) -> httpx.AsyncClient:
        if self._async is None:
            self._async = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout)
        return self._async

    async def aembed(self, spec: ModelSpec, texts: list[str]) -> np.ndarray:
        try:
            response = await self._aclient().post("/embeddings", json=self._embed_body(spec, texts))
        except httpx.HTTPError as exc:
            raise NPUUnavailableError(f"cloud fallback unreachable: {exc!r}") from exc
        return self._vectors(spec, self._check(response), len(texts))

    async def agenerate(self, spec: ModelSpec, prompt: Prompt, max_tokens: int | None,
                        temperature: float | None) -> tuple[str, int | None, int | None]:
        try:
            response = await self._aclient().post(
                "/chat/completions", json=self._generate_body(spec, prompt, max_tokens, temperature))
        except httpx.HTTPError as exc:
            raise NPUUnavailableError(f"cloud fallback unreachable: {exc!r}") from exc
        return self._text(self._check(response))

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
