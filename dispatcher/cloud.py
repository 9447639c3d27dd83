"""The OpenAI-compatible cloud fallback (any server speaking `/embeddings` and `/chat/completions`).

Written without I/O, as requests to build and responses to read: the dispatch flow (`dispatcher/flow.py`)
yields the request and whichever driver runs it, sync or async, sends it with its own httpx client. So
the cloud's protocol is written once for both.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from .errors import NPUUnavailableError
from .models import ModelSpec
from .protocol import Prompt, as_messages
from .settings import CallerSettings


class CloudAPI:
    def __init__(self, settings: CallerSettings):
        self.base_url = (settings.cloud_base_url or "").rstrip("/")
        self.timeout_s = settings.cloud_timeout_s
        self.headers = {"Authorization": f"Bearer {settings.cloud_api_key}"} if settings.cloud_api_key else {}

    def available_for(self, spec: ModelSpec) -> bool:
        return bool(self.base_url and spec.cloud_model)

    def _request(self, path: str, body: dict[str, Any], timeout_s: float) -> httpx.Request:
        return httpx.Request("POST", self.base_url + path, json=body, headers=self.headers,
                             extensions={"timeout": httpx.Timeout(timeout_s).as_dict()})

    def embed_request(self, spec: ModelSpec, texts: list[str], timeout_s: float) -> httpx.Request:
        return self._request("/embeddings", {"model": spec.cloud_model, "input": texts, "encoding_format": "float"},
                             timeout_s)

    def chat_request(self, spec: ModelSpec, prompt: Prompt, max_tokens: int | None, temperature: float | None,
                     timeout_s: float, stop: list[str] | None = None) -> httpx.Request:
        body: dict[str, Any] = {"model": spec.cloud_model, "messages": as_messages(prompt)}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        if stop:
            body["stop"] = stop
        return self._request("/chat/completions", body, timeout_s)

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise NPUUnavailableError(f"cloud fallback answered {response.status_code}: {response.text[:200]}")
        data: dict[str, Any] = response.json()
        return data

    def read_vectors(self, spec: ModelSpec, response: httpx.Response, n: int) -> np.ndarray:
        rows = sorted(self._json(response)["data"], key=lambda item: item.get("index", 0))
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

    def read_text(self, response: httpx.Response) -> tuple[str, int | None, int | None]:
        data = self._json(response)
        usage = data.get("usage") or {}
        return (data["choices"][0]["message"]["content"], usage.get("prompt_tokens"),
                usage.get("completion_tokens"))
