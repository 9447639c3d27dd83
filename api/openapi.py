"""The facade's OpenAPI schema, with this deployment's input limits written into the request bodies.

The limits come from settings, so the pydantic models cannot carry them, and the checks themselves stay
in the dispatcher (one place, stable 413/422 codes for every caller). Stating them in the schema lets
clients and schema-driven tools (the schemathesis fuzz test) know what will be refused before sending.
Token limits (per text, per request) need the model's tokenizer and are documented in words only.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from dispatcher.flow import NOT_BLANK  # JSON Schema patterns search (unanchored): one such character
from dispatcher.models import Registry
from dispatcher.settings import Settings


def _bound(prop: dict[str, Any], **limits: float) -> None:
    """Limits on the numeric branch of an optional (`anyOf` with null) or plain property."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") in ("integer", "number"):
            branch.update(limits)


def _openai_limits(bodies: dict[str, Any], settings: Settings) -> None:
    """The same limits on the OpenAI-compatible bodies (`/v1/embeddings`, `/v1/chat/completions`)."""
    text = {"minLength": 1, "maxLength": settings.max_text_chars, "pattern": NOT_BLANK}
    for branch in bodies["EmbeddingRequest"]["properties"]["input"]["anyOf"]:
        if branch.get("type") == "string":
            branch.update(text)
        elif branch.get("type") == "array":
            branch.update(minItems=1, maxItems=settings.max_texts)
            branch["items"].update(text)
    dims = sorted({spec.dim for spec in Registry.load(settings).specs.values() if spec.dim})
    for branch in bodies["EmbeddingRequest"]["properties"]["dimensions"].get("anyOf", []):
        if branch.get("type") == "integer":
            branch["enum"] = dims
    bodies["ChatMessage"]["properties"]["content"].update(minLength=1, maxLength=settings.max_prompt_chars,
                                                          pattern=NOT_BLANK)
    chat = bodies["ChatRequest"]["properties"]
    chat["messages"]["maxItems"] = 256
    for name in ("max_tokens", "max_completion_tokens"):
        _bound(chat[name], minimum=1, maximum=settings.max_new_tokens)
    _bound(chat["temperature"], minimum=0, maximum=2)


def document_limits(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        bodies = schema["components"]["schemas"]
        texts = bodies["EmbeddingsRequest"]["properties"]["texts"]
        texts.update(minItems=1, maxItems=settings.max_texts)
        texts["items"].update(minLength=1, maxLength=settings.max_text_chars, pattern=NOT_BLANK)
        inference = bodies["InferenceRequest"]["properties"]
        inference["prompt"].update(minLength=1, maxLength=settings.max_prompt_chars, pattern=NOT_BLANK)
        _bound(inference["max_tokens"], minimum=1, maximum=settings.max_new_tokens)
        _bound(inference["temperature"], minimum=0, maximum=2)
        _openai_limits(bodies, settings)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
