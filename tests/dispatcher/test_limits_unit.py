"""`dispatcher.limits`: the input checks, their codes and statuses, and that the JSON Schema the facade
states accepts exactly what the checks accept (validated by jsonschema_rs, an ECMA-262 regex engine like a
schema-driven client's)."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest

from api.app import create_app
from dispatcher.errors import ErrorCode, InputTooLargeError, InvalidInputError, NPUError
from dispatcher.limits import ROLES, Limits
from dispatcher.settings import Settings

SETTINGS = Settings(max_texts=3, max_text_chars=10, max_prompt_chars=12, max_messages=3, max_new_tokens=5,
                    admin_tokens=["t" * 32])
LIMITS = Limits.of(SETTINGS)
BLANKS = ["", " ", "\t\n", "\ufeff", "\x1c\x1f", "\x85", "\u2003"]
"""Empty, whitespace of several kinds, a byte-order mark, separators: none makes a text non-blank."""


def refusal(call: Any) -> tuple[type[NPUError], ErrorCode, int, str, dict[str, object]]:
    with pytest.raises(NPUError) as err:
        call()
    e = err.value
    return type(e), e.code, e.status, e.message, e.extra


def test_texts_within_the_limits_pass_unchanged() -> None:
    texts = ["a", " b ", "x" * 10]
    assert LIMITS.check_texts(texts) is texts


@pytest.mark.parametrize(("texts", "kind", "code", "extra"), [
    ("a text", InvalidInputError, ErrorCode.INVALID_INPUT, {}),
    ([], InvalidInputError, ErrorCode.INVALID_INPUT, {}),
    (None, InvalidInputError, ErrorCode.INVALID_INPUT, {}),
    (["a", "b", "c", "d"], InputTooLargeError, ErrorCode.TOO_MANY_TEXTS, {"limit": 3}),
    (["a", " \ufeff"], InvalidInputError, ErrorCode.INVALID_INPUT, {"index": 1}),
    (["a", 7], InvalidInputError, ErrorCode.INVALID_INPUT, {"index": 1}),
    (["x" * 11], InputTooLargeError, ErrorCode.INPUT_TOO_LARGE, {"index": 0, "limit": 10}),
])
def test_texts_refused(texts: Any, kind: type[NPUError], code: ErrorCode, extra: dict[str, object]) -> None:
    got_kind, got_code, status, _, got_extra = refusal(lambda: LIMITS.check_texts(texts))
    assert (got_kind, got_code, got_extra) == (kind, code, extra)
    assert status == (413 if kind is InputTooLargeError else 422)


def test_prompts_within_the_limits_pass() -> None:
    chat = [{"role": r, "content": "four"} for r in ROLES]  # 3 messages, 12 characters together
    assert LIMITS.check_prompt(chat, 5, 2) is chat
    assert LIMITS.check_prompt("x" * 12, 1, 0) == "x" * 12
    assert LIMITS.check_prompt([{"role": "user", "content": ""}, {"role": "user", "content": "hi"}], None, None)


@pytest.mark.parametrize(("prompt", "max_tokens", "temperature", "kind", "code", "extra"), [
    (" \n", None, None, InvalidInputError, ErrorCode.INVALID_INPUT, {}),
    (None, None, None, InvalidInputError, ErrorCode.INVALID_INPUT, {}),
    ([], None, None, InvalidInputError, ErrorCode.INVALID_INPUT, {}),
    ([{"role": "tool", "content": "hi"}], None, None, InvalidInputError, ErrorCode.INVALID_INPUT, {}),
    ([{"role": "user", "content": 5}], None, None, InvalidInputError, ErrorCode.INVALID_INPUT, {}),
    ([{"role": "user", "content": " "}] * 2, None, None, InvalidInputError, ErrorCode.INVALID_INPUT, {}),
    ([{"role": "user", "content": "hi"}] * 4, None, None, InputTooLargeError, ErrorCode.TOO_MANY_MESSAGES,
     {"limit": 3}),
    ([{"role": "user", "content": "seven77"}] * 2, None, None, InputTooLargeError, ErrorCode.INPUT_TOO_LARGE,
     {"limit": 12}),
    ("x" * 13, None, None, InputTooLargeError, ErrorCode.INPUT_TOO_LARGE, {"limit": 12}),
    ("hi", 0, None, InvalidInputError, ErrorCode.INVALID_INPUT, {"limit": 5}),
    ("hi", 6, None, InvalidInputError, ErrorCode.INVALID_INPUT, {"limit": 5}),
    ("hi", None, -0.01, InvalidInputError, ErrorCode.INVALID_INPUT, {}),
    ("hi", None, 2.01, InvalidInputError, ErrorCode.INVALID_INPUT, {}),
])
def test_prompts_refused(prompt: Any, max_tokens: int | None, temperature: float | None, kind: type[NPUError],
                         code: ErrorCode, extra: dict[str, object]) -> None:
    got_kind, got_code, status, _, got_extra = refusal(lambda: LIMITS.check_prompt(prompt, max_tokens, temperature))
    assert (got_kind, got_code, got_extra) == (kind, code, extra)
    assert status == (413 if kind is InputTooLargeError else 422)


def accepted(call: Any) -> bool:
    try:
        call()
    except NPUError:
        return False
    return True


@pytest.mark.parametrize("text", [*BLANKS, "a", " a ", "\ufeffa", "x" * 10, "x" * 11, "é" * 10])
def test_the_text_schema_accepts_what_the_check_accepts(text: str) -> None:
    schema = {"type": "array", "items": {"type": "string", **LIMITS.text()}, **LIMITS.texts()}
    assert jsonschema_rs.validator_for(schema).is_valid([text]) == accepted(lambda: LIMITS.check_texts([text]))
    prompt = {"type": "string", **LIMITS.prompt()}
    assert jsonschema_rs.validator_for(prompt).is_valid(text) == accepted(lambda: LIMITS.check_prompt(text, 1, 1))


@pytest.mark.parametrize("count", [0, 1, 3, 4])
def test_count_schemas_accept_what_the_checks_accept(count: int) -> None:
    texts = {"type": "array", **LIMITS.texts()}
    assert jsonschema_rs.validator_for(texts).is_valid(["a"] * count) == \
        accepted(lambda: LIMITS.check_texts(["a"] * count))
    messages = {"type": "array", **LIMITS.messages()}
    chat = [{"role": "user", "content": "a"}] * count
    assert jsonschema_rs.validator_for(messages).is_valid(chat) == accepted(lambda: LIMITS.check_prompt(chat, 1, 1))


@pytest.mark.parametrize("value", [-1, 0, 1, 2, 2.5, 5, 6])
def test_number_schemas_accept_what_the_checks_accept(value: float) -> None:
    tokens = {"type": "number", **LIMITS.max_tokens()}
    assert jsonschema_rs.validator_for(tokens).is_valid(value) == accepted(lambda: LIMITS.check_prompt("a", value, 1))
    temperature = {"type": "number", **LIMITS.temperature()}
    assert jsonschema_rs.validator_for(temperature).is_valid(value) == \
        accepted(lambda: LIMITS.check_prompt("a", 1, value))


def test_the_facade_schema_states_this_deployments_limits() -> None:
    bodies = create_app(SETTINGS).openapi()["components"]["schemas"]
    texts = bodies["EmbeddingsRequest"]["properties"]["texts"]
    assert (texts["maxItems"], texts["items"]["maxLength"]) == (3, 10)
    assert bodies["ChatRequest"]["properties"]["messages"]["maxItems"] == 3
    content = bodies["ChatMessage"]["properties"]["content"]["anyOf"]
    assert next(b for b in content if b.get("type") == "string")["maxLength"] == 12
    assert bodies["TextPart"]["properties"]["text"]["maxLength"] == 12
    assert bodies["ChatMessage"]["properties"]["role"]["enum"] == list(ROLES)
    tokens = next(b for b in bodies["InferenceRequest"]["properties"]["max_tokens"]["anyOf"] if "maximum" in b)
    assert tokens["maximum"] == 5
