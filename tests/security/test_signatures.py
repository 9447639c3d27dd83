"""Points 5-7 and the attacks that held: every way of getting a service signature accepted where it was
not made for, against the real app and real Redis (v2 nonces). Each row: the attack, the status it gets."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from dispatcher.settings import Settings
from dispatcher.signing import (
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    ServiceAuth,
    ServiceHTTPClient,
    sign_headers,
)
from tests.conftest import ADMIN_TOKEN, SERVICE_ID, SERVICE_KEY, signed

from .helpers import JSON, MODEL, app, bearer, seed_v1

NODE = "/api/nodes/vm/npu/status"


@pytest.fixture
def client(isolated: Settings) -> Iterator[TestClient]:
    with TestClient(app(isolated)) as c:
        yield c


def v2(method: str, path: str, **kw: object) -> dict[str, str]:
    return sign_headers(SERVICE_ID, SERVICE_KEY, method, path, v2=True, host="testserver", **kw)  # type: ignore[arg-type]


def test_the_signed_path_is_the_routed_path(client: TestClient) -> None:
    accepted = client.get(NODE, headers=seed_v1("GET", NODE))
    assert accepted.status_code == 404 and accepted.json()["error"] == "not_found"  # past auth: no such node
    for variant in ("/api/nodes/vm%0a/npu/status", "/api/nodes/vm%0A/npu/status", "/api/nodes/v%6d/npu/status",
                    "/api/nodes/vm%20/npu/status", "/api/nodes//vm/npu/status", "/api/nodes/vm/npu/status/"):
        for headers in (seed_v1("GET", NODE), v2("GET", NODE)):
            response = client.get(variant, headers=headers)
            # refused, or no route at all (Starlette's 404): never the handler ("no node ...")
            assert response.status_code == 401 or response.json()["message"] == "Not Found", variant


def test_a_seed_client_signing_the_encoded_path_it_sends_is_accepted(client: TestClient) -> None:
    path = "/api/nodes/my%20vm/npu/status"
    answer = client.get(path, headers=seed_v1("GET", path))
    assert answer.status_code == 404 and answer.json()["message"] == "no node 'my vm'"  # past auth, decoded
    assert client.get(path, headers=seed_v1("GET", "/api/nodes/my vm/npu/status")).status_code == 401


def test_our_clients_sign_the_path_they_send(isolated: Settings) -> None:
    with signed(TestClient(app(isolated)), ServiceAuth(SERVICE_ID, SERVICE_KEY, v2=True)) as c:
        assert c.get("/api/nodes/my%20vm/npu/status").status_code == 404
        assert c.get("/api/nodes/my vm/npu/status").status_code == 404  # httpx encodes it, then signs that


def test_a_v2_signature_made_for_another_host_is_refused(client: TestClient) -> None:
    other = sign_headers(SERVICE_ID, SERVICE_KEY, "GET", "/health", v2=True, host="hostile.example:8081")
    assert client.get("/health", headers=other).status_code == 401
    assert client.get("/health", headers=v2("GET", "/health")).status_code in (200, 503)
    moved = v2("GET", "/health")
    assert client.get("/health", headers={**moved, "host": "hostile.example"}).status_code == 401


def test_service_http_client_defaults_to_v2() -> None:
    with ServiceHTTPClient(SERVICE_ID, SERVICE_KEY) as http:
        assert http.service_auth.v2
        request = http.build_request("GET", "http://facade.example/health")
        flow = http.service_auth.auth_flow(request)
        assert HEADER_NONCE in next(flow).headers


def _attacks() -> list[tuple[str, Callable[[], dict[str, str]], str, str, int]]:
    """(attack, headers, method, path, status)."""
    def now() -> int:  # at the request, not at collection
        return int(time.time())

    def fine() -> dict[str, str]:
        return seed_v1("GET", "/models")

    return [
        ("no headers", lambda: {}, "GET", "/models", 401),
        ("stale timestamp (v1)", lambda: seed_v1("GET", "/models", ts=now() - 301), "GET", "/models", 401),
        # well past the window: a timestamp 1 s past it comes within it if a second passes before the check
        ("future timestamp (v1)", lambda: seed_v1("GET", "/models", ts=now() + 310), "GET", "/models", 401),
        ("stale timestamp (v2)", lambda: v2("GET", "/models", timestamp=now() - 301), "GET", "/models", 401),
        ("wrong key", lambda: seed_v1("GET", "/models", key="not-the-key"), "GET", "/models", 401),
        ("unknown service", lambda: seed_v1("GET", "/models", service_id="nobody"), "GET", "/models", 401),
        ("other path", lambda: seed_v1("GET", "/health"), "GET", "/models", 401),
        ("other method", lambda: seed_v1("GET", "/embeddings"), "POST", "/embeddings", 401),
        ("v2 other method", lambda: v2("GET", "/embeddings"), "POST", "/embeddings", 401),
        ("percent-encoded variant of the signed path", lambda: seed_v1("GET", "/models"), "GET", "/%6Dodels", 401),
        ("trailing slash (no redirect to follow)", lambda: seed_v1("GET", "/models"), "GET", "/models/", 404),
        ("malformed signature", lambda: {**fine(), HEADER_SIGNATURE: "zz"}, "GET", "/models", 401),
        ("malformed timestamp", lambda: {**fine(), HEADER_TIMESTAMP: "1e9"}, "GET", "/models", 401),
        ("nonce added to a v1 signature", lambda: {**fine(), HEADER_NONCE: "n" * 20}, "GET", "/models", 401),
        ("bearer token added to a bad signature", lambda: {**seed_v1("GET", "/models", key="x"),
                                                          **bearer(ADMIN_TOKEN)}, "GET", "/models", 401),
        ("the seed's v1, correct", lambda: seed_v1("GET", "/models"), "GET", "/models", 200),
        ("v2, correct", lambda: v2("GET", "/models"), "GET", "/models", 200),
    ]


@pytest.mark.parametrize("attack", _attacks(), ids=lambda a: a[0])
def test_signature_attacks(client: TestClient, attack: tuple[str, Callable[[], dict[str, str]], str, str, int]) -> None:
    _, headers, method, path, status = attack
    body = {"texts": ["hi"], "model": MODEL} if method == "POST" else None
    assert client.request(method, path, headers=headers(), json=body).status_code == status


def test_duplicate_auth_headers_are_refused(client: TestClient) -> None:
    good = seed_v1("GET", "/models")
    for name in good:
        headers = [(k, v) for k, v in good.items()] + [(name, good[name])]
        assert client.get("/models", headers=httpx.Headers(headers)).status_code == 401, name


def test_v2_nonce_replay_and_body_or_query_tamper(client: TestClient) -> None:
    once = v2("GET", "/models")
    assert client.get("/models", headers=once).status_code == 200
    assert client.get("/models", headers=once).status_code == 401  # replayed nonce
    body = b'{"texts": ["hi"], "model": "all-minilm-l6-v2", "allow_cloud": false, "deadline_s": 0.5}'
    headers = {**v2("POST", "/embeddings", body=body), **JSON}
    assert client.post("/embeddings", content=body.replace(b"hi", b"yo"), headers=headers).status_code == 401
    query = v2("GET", "/models", query="a=1")
    assert client.get("/models?a=2", headers=query).status_code == 401


def test_v1_is_refused_when_v2_is_required(isolated: Settings) -> None:
    with TestClient(app(isolated, auth_require_v2=True)) as c:
        assert c.get("/models", headers=seed_v1("GET", "/models")).status_code == 401
        assert c.get("/models", headers=v2("GET", "/models")).status_code == 200


def test_the_order_of_a_repeated_query_name_is_signed(client: TestClient) -> None:
    """Round 3, point 9: `?role=a&role=b` is another request than `?role=b&role=a` (a route reads the last)."""
    reordered = client.get("/models?role=b&role=a", headers=v2("GET", "/models", query="role=a&role=b"))
    assert reordered.status_code == 401
    as_signed = client.get("/models?role=a&role=b", headers=v2("GET", "/models", query="role=a&role=b"))
    assert as_signed.status_code == 200
    names_moved = client.get("/models?role=a&x=1", headers=v2("GET", "/models", query="x=1&role=a"))
    assert names_moved.status_code == 200  # different names: their order is free
