"""The documented input limits, stated once: the checks every caller's input passes before anything is
enqueued, and the JSON Schema fragments the facade's OpenAPI document states, both read from one `Limits`.

Counts and characters only: token limits need the model's tokenizer, so the worker enforces them.
A check refuses with a stable code: 413 for input over a size limit, 422 for input no model can take.

Text must be text: a lone UTF-16 surrogate (JSON's `"\ud800"`) decodes to a Python string that no
encoder takes (msgpack, Redis, a tokenizer), so it is refused here, 422, rather than failing later as a
500. NUL and other control characters are valid text and pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .errors import ErrorCode, InputTooLargeError, InvalidInputError
from .protocol import Prompt
from .settings import Settings

NOT_BLANK = r"[^\s\x1c-\x1f\x85\ufeff]"
"""A character that makes a text or prompt non-blank: not whitespace, nor a byte-order mark. Written so
Python's and ECMA-262's regex engines read it alike (JSON Schema patterns search, unanchored, so the
schema states it as is: "has one such character")."""
_NOT_BLANK = re.compile(NOT_BLANK)

ChatRole = Literal["system", "user", "assistant"]
"""Who speaks in a chat message."""
ROLES: tuple[str, ...] = get_args(ChatRole)

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
"""In a JSON body, the only way to write a surrogate (raw UTF-8 cannot encode one)."""


def check_text(value: str, where: str) -> None:
    """Refuses a string no encoder takes: one holding a lone surrogate."""
    if _SURROGATE.search(value):
        where = where.encode("utf-8", "backslashreplace").decode()  # a key may hold one too: never echo it raw
        raise InvalidInputError(f"{where} is not valid text: it holds a lone UTF-16 surrogate", field=where)


def _strings(value: Any) -> Iterator[tuple[str, str]]:
    """Every string of a JSON value, keys included, with where it is; a loop, not recursion, so no
    nesting depth a body can have makes it fail."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            yield where, item
        elif isinstance(item, dict):
            for key, inner in reversed(item.items()):
                path = f"{where}.{key}" if where else str(key)
                stack.append((path, inner))
                stack.append((path, str(key)))
        elif isinstance(item, list):
            stack.extend((f"{where}.{i}" if where else str(i), inner) for i, inner in reversed(list(enumerate(item))))


def check_json_text(body: bytes) -> None:
    """Every string of a JSON body, keys included, is valid text (the facade checks each body once, before
    its fields are parsed, so no field, however little it matters, fails later on a surrogate). Cheap
    when there is no surrogate escape; a body that is not JSON is left to the parser's own error, one
    nested deeper than the parser goes is refused here."""
    if not _SURROGATE_ESCAPE.search(body):
        return
    try:
        data = json.loads(body)
    except RecursionError:
        raise InvalidInputError("the body nests arrays or objects too deeply", code=ErrorCode.INVALID_REQUEST) from None
    except ValueError:
        return
    for where, value in _strings(data):
        check_text(value, where or "body")


MAX_STOP = 4
"""Stop strings per generation, as OpenAI allows."""
MAX_STOP_CHARS = 256
"""Characters per stop string: a stop string ends text the model writes, and no such ending is longer; a
longer one only costs memory in every queue and worker it passes."""

TEMPERATURE: tuple[float, float] = (0, 2)
"""Sampling temperature a generation may ask for (OpenAI's range); fixed, not a setting."""


@dataclass(frozen=True)
class Limits:
    max_texts: int
    max_text_chars: int
    max_prompt_chars: int
    max_messages: int
    max_new_tokens: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(max_texts=settings.max_texts, max_text_chars=settings.max_text_chars,
                   max_prompt_chars=settings.max_prompt_chars, max_messages=settings.max_messages,
                   max_new_tokens=settings.max_new_tokens)

    # --- checks

    def check_texts(self, texts: Any) -> list[str]:
        """Texts to embed: a non-empty list of non-blank strings, within the count and length limits."""
        if isinstance(texts, str) or not isinstance(texts, list) or not texts:
            raise InvalidInputError("texts must be a non-empty list of strings")
        if len(texts) > self.max_texts:
            raise InputTooLargeError(f"{len(texts)} texts in one request; the limit is {self.max_texts}",
                                     code=ErrorCode.TOO_MANY_TEXTS, limit=self.max_texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not _NOT_BLANK.search(text):
                raise InvalidInputError(f"texts[{i}] must be a non-empty string", index=i)
            check_text(text, f"texts[{i}]")
            if len(text) > self.max_text_chars:
                raise InputTooLargeError(
                    f"texts[{i}] has {len(text)} characters; the limit is {self.max_text_chars}",
                    code=ErrorCode.INPUT_TOO_LARGE, index=i, limit=self.max_text_chars)
        return texts

    def check_prompt(self, prompt: Any, max_tokens: int | None, temperature: float | None) -> Prompt:
        """A generation's input: a non-blank user message, or chat messages of known roles with some
        non-blank content; all characters together within `max_prompt_chars`."""
        if isinstance(prompt, list):
            roles = "|".join(f'"{r}"' for r in ROLES)
            shape = f'messages must be a non-empty list of {{"role": {roles}, "content": string}}'
            if not prompt:
                raise InvalidInputError(shape)
            if len(prompt) > self.max_messages:
                raise InputTooLargeError(f"{len(prompt)} messages in one request; the limit is {self.max_messages}",
                                         code=ErrorCode.TOO_MANY_MESSAGES, limit=self.max_messages)
            if not all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                       for m in prompt):
                raise InvalidInputError(shape)
            for i, m in enumerate(prompt):
                check_text(m["content"], f"messages[{i}].content")
            chars = sum(len(m["content"]) for m in prompt)
            if not any(_NOT_BLANK.search(m["content"]) for m in prompt):
                raise InvalidInputError("messages are all empty")
        elif isinstance(prompt, str) and _NOT_BLANK.search(prompt):
            check_text(prompt, "prompt")
            chars = len(prompt)
        else:
            raise InvalidInputError("prompt must be a non-empty string")
        if chars > self.max_prompt_chars:
            raise InputTooLargeError(f"prompt has {chars} characters; the limit is {self.max_prompt_chars}",
                                     code=ErrorCode.INPUT_TOO_LARGE, limit=self.max_prompt_chars)
        if max_tokens is not None and not 1 <= max_tokens <= self.max_new_tokens:
            raise InvalidInputError(f"max_tokens must be between 1 and {self.max_new_tokens}",
                                    limit=self.max_new_tokens)
        low, high = TEMPERATURE
        if temperature is not None and not low <= temperature <= high:
            raise InvalidInputError(f"temperature must be between {low:g} and {high:g}")
        checked: Prompt = prompt
        return checked

    # --- what the OpenAPI schema states (JSON Schema keywords to merge into a property)

    def text(self) -> dict[str, Any]:
        """One text to embed."""
        return {"minLength": 1, "maxLength": self.max_text_chars, "pattern": NOT_BLANK}

    def texts(self) -> dict[str, Any]:
        """The list of texts of one embedding request (each item: `text()`)."""
        return {"minItems": 1, "maxItems": self.max_texts}

    def prompt(self) -> dict[str, Any]:
        """A prompt, or one chat message's content (the limit is on all messages together: a schema can
        only state it per message)."""
        return {"minLength": 1, "maxLength": self.max_prompt_chars, "pattern": NOT_BLANK}

    def messages(self) -> dict[str, Any]:
        return {"minItems": 1, "maxItems": self.max_messages}

    def max_tokens(self) -> dict[str, Any]:
        return {"minimum": 1, "maximum": self.max_new_tokens}

    @staticmethod
    def temperature() -> dict[str, Any]:
        low, high = TEMPERATURE
        return {"minimum": low, "maximum": high}
