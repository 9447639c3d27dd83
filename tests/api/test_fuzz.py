"""Property-based fuzzing of the facade over its own OpenAPI schema (schemathesis), in-process, with a real
worker and a cloud behind it: no server errors, and every response matches the schema.

Driven through Hypothesis directly (`as_strategy`), not schemathesis's pytest plugin, whose fixture
mode does not run under pytest 9. Both schema-valid and schema-violating requests are generated.
The examples are derandomized so CI is reproducible; `FUZZ_RANDOM=1` explores new ones on each run.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode

from api.app import create_app
from dispatcher.settings import Settings
from tests.cloud_server import CloudServer
from tests.conftest import ADMIN_TOKEN, WorkerProcess

EXAMPLES = 50
"""Per operation and mode; keeps the whole run well under a minute here."""
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FUZZED = {"/health", "/models", "/embeddings", "/inference", "/v1/embeddings", "/v1/chat/completions", "/v1/models"}
"""The request-serving endpoints. The fleet's admin endpoints change shared state (nodes, the routing
strategy) that the rest of the session relies on; their input is covered by tests/api/test_fleet.py."""
CONFIG = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {
    # 413 is how this API refuses input over a documented size limit (too many texts, too long).
    "expected-statuses": [400, 404, 405, 413, 415, 422]}}})


@pytest.fixture(scope="module")
def facade_schema(settings: Settings, worker: WorkerProcess, cloud: CloudServer) -> schemathesis.BaseSchema:
    # Small limits so generated inputs reach them (and texts stay under the model's 256 tokens, which the
    # schema cannot state); short generations so the run stays bounded.
    app = create_app(settings.model_copy(update={
        "cloud_base_url": cloud.base_url, "max_texts": 8, "max_text_chars": 100, "max_prompt_chars": 500,
        "max_new_tokens": 4, "deadline_s": 10}))
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG, headers=AUTH)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_facade_answers_every_request_as_documented(facade_schema: schemathesis.BaseSchema,
                                                    mode: GenerationMode) -> None:
    seen: Counter[tuple[str, int]] = Counter()
    for result in facade_schema.get_all_operations():
        operation = result.ok()
        if operation.path not in FUZZED:
            continue
        if mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # no parameters, nothing to get wrong

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  derandomize=not os.environ.get("FUZZ_RANDOM"))
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(headers=AUTH)  # 5xx, undocumented status, schema mismatch: a failure
            seen[(case.operation.label, response.status_code)] += 1

        run()
    print(f"\n{mode.value}: {sum(seen.values())} requests: {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= 2 * 10


# --- text that is not (quite) text: lone surrogates, NULs and control characters, bytes in other encodings

SURROGATE = st.sampled_from(["\\ud800", "\\udbff", "\\udc00", "\\udfff", "\\ud83d", "\\ude00"])
"""JSON escapes of lone surrogates (raw UTF-8 cannot carry one)."""
PIECE = st.one_of(st.text(max_size=8).map(lambda t: json.dumps(t, ensure_ascii=False)[1:-1]), SURROGATE,
                  st.sampled_from(["\\u0000", "\\u001b[31m", "\\ud83d\\ude00", "\\n", "\\u2028", "\x00", "é"]))
JSON_TEXT = st.lists(PIECE, min_size=1, max_size=6).map(lambda parts: '"' + "".join(parts) + '"')
"""A JSON string literal mixing ordinary text (raw, any script), lone surrogates, NULs, control characters."""
RAW = st.sampled_from(["latin-1", "utf-16", "cp1252"])
TEXT_FIELDS = {
    "/embeddings": lambda t: f'{{"texts": [{t}], "model": "all-minilm-l6-v2"}}',
    "/inference": lambda t: f'{{"prompt": {t}, "model": "smollm2-135m-instruct", "max_tokens": 2}}',
    "/v1/embeddings": lambda t: f'{{"input": {t}, "model": "all-minilm-l6-v2"}}',
    "/v1/chat/completions": lambda t: ('{"model": "smollm2-135m-instruct", "max_tokens": 2, "messages": '
                                       f'[{{"role": "user", "content": {t}}}]}}'),
}


@pytest.fixture(scope="module")
def text_client(settings: Settings, worker: WorkerProcess) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"max_new_tokens": 4, "deadline_s": 10})),
                    headers=AUTH) as client:
        yield client


@pytest.mark.parametrize("path", TEXT_FIELDS)
def test_any_text_is_answered_or_refused_never_a_server_error(text_client: TestClient, path: str) -> None:
    seen: Counter[int] = Counter()
    refused = 400 if path.startswith("/v1/") else 422  # OpenAI's status for a bad body on the /v1 routes

    @given(text=JSON_TEXT, encoding=st.one_of(st.none(), RAW))
    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              derandomize=not os.environ.get("FUZZ_RANDOM"))
    def run(text: str, encoding: str | None) -> None:
        body = TEXT_FIELDS[path](text)
        # Other encodings than UTF-8: latin-1 and cp1252 bytes are malformed UTF-8 once non-ASCII (422),
        # UTF-16 is JSON that Python's parser detects.
        raw = body.encode(encoding or "utf-8", errors="replace")
        response = text_client.post(path, content=raw, headers={"content-type": "application/json"})
        assert response.status_code in (200, 413, refused), (body, encoding, response.status_code, response.text)
        seen[response.status_code] += 1

    run()
    assert seen[refused] > 0 and sum(seen.values()) >= 20, seen
