"""A batch's lines: the whole input checked before any work, grouped into bulk jobs, and answered.

Each line's body is checked by the very models and limits its `/v1` route uses (`api/routes/openai.py`,
`dispatcher.limits`), and answered by that route's own body builders, so a batch line and a direct
request get the same refusal or the same answer.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from dispatcher.client import AsyncDispatcher
from dispatcher.errors import NPUError
from dispatcher.results import EmbedResult, GenerateResult

from ..errors import openai_validation
from ..routes.openai import ChatRequest, OpenAIEmbeddingsRequest, chat_body, embedding_body, max_tokens

ENDPOINTS = {"/v1/embeddings": "embedding", "/v1/chat/completions": "generation"}
MAX_ERRORS = 100
"""Problems listed in a failed batch's `errors`: enough to fix a file, not a copy of a broken one."""


GROUP_BATCHES = 4
"""Worker batches of texts in one bulk job: RQ's bookkeeping is a few dozen commands per job, which jobs of
one worker batch paid too often (docs/benchmarks.md, the Batch API); the worker still infers at most
NPU_BATCH_MAX texts at once."""
GROUP_CHARS = 32_000
"""Characters in one job's texts (about 8,000 tokens at 4 a token, half the worker's default
NPU_MAX_REQUEST_TOKENS), so a group of long texts is not refused whole and re-run line by line."""

@dataclass
class Plan:
    """What a valid file becomes: groups of lines, each group one bulk job (`Group.kwargs`)."""

    groups: list[dict[str, Any]] = field(default_factory=list)
    lines: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


def plan(data: bytes, endpoint: str, dispatcher: AsyncDispatcher) -> Plan:
    """Check every line; on success group them: embedding lines of one model together, up to
    `GROUP_BATCHES` worker batches of texts (`NPU_BATCH_MAX`, within NPU_MAX_TEXTS) and `GROUP_CHARS`
    characters, so the worker batches them as it does any bulk work; a chat line is a job of its own, as the
    engine batches generations itself."""
    out, seen = Plan(), set[str]()
    settings = dispatcher.settings
    budget = min(GROUP_BATCHES * settings.batch_max, settings.max_texts)
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = _line(raw, endpoint, dispatcher, seen)
        except _Refused as refused:
            if len(out.errors) < MAX_ERRORS:
                out.errors.append({"code": refused.code, "message": refused.message, "param": refused.param,
                                   "line": number})
            continue
        line["n"] = out.lines
        out.lines += 1
        if out.errors:
            continue
        last = out.groups[-1] if out.groups else None
        if (line["kind"] == "embed" and last is not None and last["kind"] == "embed"
                and last["model"] == line["model"] and last["texts"] + len(line["texts"]) <= budget
                and last["chars"] + sum(map(len, line["texts"])) <= GROUP_CHARS):
            last["lines"].append(line)
            last["texts"] += len(line["texts"])
            last["chars"] += sum(map(len, line["texts"]))
        else:
            out.groups.append({"kind": line["kind"], "model": line["model"], "texts": len(line.get("texts", ())),
                               "chars": sum(map(len, line.get("texts", ()))), "lines": [line]})
    if not out.lines and not out.errors:
        out.errors.append({"code": "empty_file", "message": "The file has no request lines.", "param": None,
                           "line": None})
    return out


class _Refused(Exception):
    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _line(raw: bytes, endpoint: str, dispatcher: AsyncDispatcher, seen: set[str]) -> dict[str, Any]:
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Refused("invalid_json", f"This line is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise _Refused("invalid_request", "A line must be a JSON object.")
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _Refused("missing_required_parameter", "Missing custom_id: a non-empty string.", "custom_id")
    if custom_id in seen:
        raise _Refused("duplicate_custom_id", f"The custom_id {custom_id!r} is used by an earlier line.",
                       "custom_id")
    seen.add(custom_id)
    if request.get("method") != "POST":
        raise _Refused("invalid_method", "The method must be POST.", "method")
    if request.get("url") != endpoint:
        raise _Refused("mismatched_endpoint", f"The url {request.get('url')!r} does not match the batch's "
                       f"endpoint {endpoint!r}.", "url")
    body = request.get("body")
    if not isinstance(body, dict):
        raise _Refused("invalid_request", "Missing body: a JSON object.", "body")
    try:
        if endpoint == "/v1/embeddings":
            return _embedding(OpenAIEmbeddingsRequest.model_validate(body), custom_id, dispatcher)
        return _chat(ChatRequest.model_validate(body), custom_id, dispatcher)
    except ValidationError as exc:
        param, message = openai_validation(exc.errors())
        raise _Refused("invalid_request", message, f"body.{param}" if param else "body") from None
    except NPUError as exc:
        where = exc.extra.get("param") or exc.extra.get("field")
        raise _Refused(str(exc.code), exc.message, f"body.{where}" if where else None) from None


def _embedding(body: OpenAIEmbeddingsRequest, custom_id: str, dispatcher: AsyncDispatcher) -> dict[str, Any]:
    spec = dispatcher.policy.spec(body.model, "embedding")
    texts = dispatcher.check_texts([body.input] if isinstance(body.input, str) else body.input)
    if body.dimensions is not None and spec.dim is not None and body.dimensions != spec.dim:
        raise _Refused("invalid_input", f"{spec.name} returns {spec.dim} dimensions; it cannot return "
                       f"{body.dimensions}", "body.dimensions")
    return {"kind": "embed", "model": spec.name, "custom_id": custom_id, "texts": texts,
            "body": body.model_dump(exclude={"input"})}


def _chat(body: ChatRequest, custom_id: str, dispatcher: AsyncDispatcher) -> dict[str, Any]:
    if body.stream:
        raise _Refused("invalid_request", "A batch line cannot stream.", "body.stream")
    if body.stop:
        raise _Refused("invalid_request", "stop is not supported in a batch line.", "body.stop")
    spec = dispatcher.policy.spec(body.model, "generation")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    dispatcher.check_prompt(messages, max_tokens(body), body.temperature)
    return {"kind": "generate", "model": spec.name, "custom_id": custom_id, "messages": messages,
            "max_tokens": max_tokens(body), "temperature": body.temperature}


def answers(group: dict[str, Any], result: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each line of a finished job with its response body, built by the `/v1` route's own code."""
    if group["kind"] == "generate":
        body = chat_body(GenerateResult.from_body(result), f"chatcmpl-{uuid.uuid4().hex}", int(time.time()))
        return [(group["lines"][0], body)]
    whole, row, out = EmbedResult.from_body(result), 0, []
    for line in group["lines"]:
        n = len(line["texts"])
        part = EmbedResult(whole.vectors[row:row + n], whole.model, whole.source, whole.device, whole.node_id,
                           whole.token_counts[row:row + n] if whole.token_counts else None)
        row += n
        out.append((line, embedding_body(OpenAIEmbeddingsRequest(input=line["texts"], **line["body"]), part)))
    return out
