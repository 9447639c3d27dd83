"""The facade's OpenAPI schema, with this deployment's input limits written into the request bodies.

The limits come from settings, so the pydantic models cannot carry them; `dispatcher.limits.Limits` both
checks them (one place, stable 413/422 codes for every caller) and states them as JSON Schema, which is
placed here on the bodies that carry each input. Stating them lets clients and schema-driven tools (the
schemathesis fuzz test) know what will be refused before sending. Token limits (per text, per request)
need the model's tokenizer and are documented in words only.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from dispatcher.limits import Limits
from dispatcher.models import Registry
from dispatcher.settings import FacadeSettings


def _bound(prop: dict[str, Any], limits: dict[str, Any]) -> None:
    """Limits on the numeric branch of an optional (`anyOf` with null) or plain property."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") in ("integer", "number"):
            branch.update(limits)


def _texts(prop: dict[str, Any], limits: Limits) -> None:
    """A list of texts, or (the OpenAI body's `input`) one text or a list of them."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == "string":
            branch.update(limits.text())
        elif branch.get("type") == "array":
            branch.update(limits.texts())
            branch["items"].update(limits.text())


def _generation(props: dict[str, Any], limits: Limits, token_fields: tuple[str, ...]) -> None:
    for name in token_fields:
        _bound(props[name], limits.max_tokens())
    _bound(props["temperature"], limits.temperature())


def apply_limits(schema: dict[str, Any], limits: Limits, dims: list[int]) -> None:
    bodies = schema["components"]["schemas"]
    _texts(bodies["EmbeddingsRequest"]["properties"]["texts"], limits)
    inference = bodies["InferenceRequest"]["properties"]
    inference["prompt"].update(limits.prompt())
    _generation(inference, limits, ("max_tokens",))
    # the OpenAI-compatible bodies (`/v1/embeddings`, `/v1/chat/completions`)
    embedding = bodies["OpenAIEmbeddingsRequest"]["properties"]
    _texts(embedding["input"], limits)
    for branch in embedding["dimensions"].get("anyOf", []):
        if branch.get("type") == "integer":
            branch["enum"] = dims
    content = bodies["ChatMessage"]["properties"]["content"]
    for branch in content.get("anyOf", [content]):
        if branch.get("type") == "string":
            branch.update(limits.prompt())
        elif branch.get("type") == "array":  # text parts: at least one, each as a prompt's text
            branch["minItems"] = 1
    bodies["TextPart"]["properties"]["text"].update(limits.prompt())
    chat = bodies["ChatRequest"]["properties"]
    chat["messages"].update(limits.messages())
    _generation(chat, limits, ("max_tokens", "max_completion_tokens"))


def document_limits(app: FastAPI, settings: FacadeSettings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        dims = sorted({spec.dim for spec in Registry.load(settings).specs.values() if spec.dim})
        apply_limits(schema, Limits.of(settings), dims)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
