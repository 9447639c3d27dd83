"""Point 3: a stranger hears only 401, before a byte of the body is read or parsed; a caller who may call
the route has its body capped while it streams in (413 `body_too_large`)."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from dispatcher.settings import Settings
from dispatcher.signing import sign_headers
from tests.cloud_server import ThreadedServer
from tests.conftest import ADMIN_TOKEN, SERVICE_ID, SERVICE_KEY, VIEWER_TOKEN

from .helpers import JSON, MODEL, Counting, app, bearer

BODY_ROUTES = ["/embeddings", "/inference", "/v1/embeddings", "/v1/chat/completions", "/api/fleet/nodes",
               "/api/npu/load-balancing"]


@pytest.fixture
def counted(isolated: Settings) -> Iterator[tuple[TestClient, Counting]]:
    wrapped = Counting(app(isolated, max_body_bytes=64 * 1024))
    with TestClient(wrapped) as client:  # type: ignore[arg-type]
        yield client, wrapped


@pytest.mark.parametrize("path", BODY_ROUTES)
@pytest.mark.parametrize("body", [b'{"texts": [', b"not json at all", b'{"texts": ["x"], "unknown": 1}',
                                  b"x" * (2 * 1024 * 1024)])
def test_a_stranger_gets_401_and_nothing_of_the_body_is_read(counted: tuple[TestClient, Counting], path: str,
                                                             body: bytes) -> None:
    client, app = counted
    for headers in ({}, bearer("not-a-token"), {"X-Service-ID": "x", "X-Service-Timestamp": "1",
                                                 "X-Service-Signature": "0" * 64, "X-Service-Nonce": "n" * 20}):
        response = client.post(path, content=body, headers={**JSON, **headers})
        assert response.status_code == 401, (path, headers, response.text)
    assert app.received == 0


@pytest.mark.parametrize("path", ["/embeddings", "/api/fleet/nodes"])
def test_a_caller_without_the_role_gets_403_before_the_body_is_read(counted: tuple[TestClient, Counting],
                                                                    path: str) -> None:
    client, app = counted
    response = client.post(path, content=b'{"broken', headers={**JSON, **bearer(VIEWER_TOKEN)})
    assert response.status_code == 403 and app.received == 0


def test_an_authenticated_body_over_the_cap_is_refused_while_it_streams(isolated: Settings) -> None:
    """Over uvicorn (the TestClient hands the app a whole body in one message): 160 MB offered without a
    Content-Length, only counting as it arrives can stop it."""
    counting = Counting(app(isolated, max_body_bytes=64 * 1024))
    server = ThreadedServer(counting).start()  # type: ignore[arg-type]
    chunk = b" " * 16 * 1024

    def endless() -> Iterator[bytes]:
        for _ in range(10_000):
            yield chunk

    try:
        with httpx.Client(base_url=server.url, timeout=30, headers=bearer(ADMIN_TOKEN)) as http:
            try:
                response = http.post("/embeddings", content=endless(), headers=JSON)
                assert response.status_code == 413, response.text
                assert response.json()["error"] == "body_too_large" and response.json()["limit"] == 64 * 1024
            except httpx.HTTPError:
                pass  # the server answered and closed while httpx was still sending: fine, what it read counts
            assert counting.received < 2 * 1024 * 1024, counting.received  # stopped near the cap, not at 160 MB
            counting.received = 0
            declared = http.post("/embeddings", content=b"x" * (64 * 1024 + 1), headers=JSON)
            assert declared.status_code == 413 and counting.received == 0  # Content-Length said so: none read
            under = http.post("/embeddings", json={"texts": ["x"] * 3, "model": MODEL, "allow_cloud": False,
                                                   "deadline_s": 0.5})
            assert under.status_code == 503 and under.json()["error"] == "unavailable"  # read; no worker here
    finally:
        server.stop()


def test_a_stranger_with_a_huge_declared_body_gets_401_at_once_over_a_real_socket(isolated: Settings) -> None:
    """Over uvicorn: 20 MB declared, 20 bytes sent; the 401 comes without waiting for the rest."""
    counting = Counting(app(isolated))
    server = ThreadedServer(counting).start()  # type: ignore[arg-type]
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"POST /embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                         b"content-length: 20971520\r\n\r\n" + b'{"texts": ["x"], "mo')
            started = time.monotonic()
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert time.monotonic() - started < 5 and counting.received == 0
    finally:
        server.stop()


# --- round 3, point 1: v2 service headers are checked before the body; the cap is told only to a verified caller

BIG = b"x" * (2 * 1024 * 1024)


def _v2(body: bytes, service_id: str = SERVICE_ID, key: str = SERVICE_KEY, host: str = "testserver",
        nonce: str | None = None) -> dict[str, str]:
    return {**JSON, **sign_headers(service_id, key, "POST", "/embeddings", body=body, v2=True, host=host,
                                   nonce=nonce)}


def test_v2_headers_that_cannot_verify_are_refused_before_the_body_is_read(
        counted: tuple[TestClient, Counting]) -> None:
    client, app = counted
    made_up = _v2(BIG, service_id="made-up", key=secrets.token_hex(32))  # current timestamp, 64 hex, a nonce
    assert client.post("/embeddings", content=BIG, headers=made_up).status_code == 401
    other_host = _v2(BIG, host="node.example")
    assert client.post("/embeddings", content=BIG, headers={**other_host, "host": "node.example"}).status_code == 401
    assert app.received == 0
    small = json.dumps({"texts": ["x"], "model": MODEL, "allow_cloud": False, "deadline_s": 0.5}).encode()
    once = _v2(small)
    assert client.post("/embeddings", content=small, headers=once).status_code == 503  # verified: no worker here
    app.received = 0
    assert client.post("/embeddings", content=BIG, headers={**once, "content-length": str(len(BIG))}).status_code == 401
    assert app.received == 0  # the nonce was spent: refused unread


def test_over_the_cap_only_a_verified_v2_caller_hears_413(counted: tuple[TestClient, Counting]) -> None:
    client, _ = counted
    wrong_key = client.post("/embeddings", content=BIG, headers=_v2(BIG, key=secrets.token_hex(32)))
    assert wrong_key.status_code == 401, wrong_key.text  # the stranger does not learn the cap
    verified = client.post("/embeddings", content=BIG, headers=_v2(BIG))
    assert verified.status_code == 413 and verified.json()["error"] == "body_too_large", verified.text
    small = json.dumps({"texts": ["x"], "model": MODEL, "allow_cloud": False, "deadline_s": 0.5}).encode()
    assert client.post("/embeddings", content=small, headers=_v2(small)).status_code == 503  # body read, kept


def test_a_made_up_service_with_a_huge_body_is_answered_before_it_is_sent(isolated: Settings) -> None:
    """Over uvicorn: 20 MB declared under v2-looking headers of an unknown service, 20 bytes sent; the 401
    comes without waiting for the rest."""
    counting = Counting(app(isolated))
    server = ThreadedServer(counting).start()  # type: ignore[arg-type]
    headers = sign_headers("made-up", secrets.token_hex(32), "POST", "/embeddings", body=b"", v2=True,
                           host=f"127.0.0.1:{server.port}")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(f"POST /embeddings HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode()
                         + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
                         + b"content-type: application/json\r\ncontent-length: 20971520\r\n\r\n"
                         + b'{"texts": ["x"], "mo')
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert counting.received == 0
    finally:
        server.stop()
