"""Round 3, point 2: a client that is slow on purpose holds nothing for long. Over uvicorn with the options
`serve` and `up` pass, on raw sockets: headers held or trickled are cut after NPU_HEADER_TIMEOUT_S, a body
after NPU_BODY_TIMEOUT_S (408 `request_timeout`), and a client that leaves mid-body is one INFO access
line, not an error with a traceback."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from dispatcher.settings import Settings
from tests.cloud_server import ThreadedServer
from tests.conftest import ADMIN_TOKEN

from .helpers import served

TIMEOUT_S = 1.0
GIVE_UP_S = 6.0
"""Longer than uvicorn's own keep-alive timeout (5 s): a connection still open then was never cut."""


@pytest.fixture
def server(isolated: Settings) -> Iterator[ThreadedServer]:
    running = served(isolated.model_copy(update={"header_timeout_s": TIMEOUT_S, "body_timeout_s": TIMEOUT_S}))
    yield running
    running.stop()


def _open_for(sock: socket.socket, trickle: bytes | None) -> tuple[float, bytes]:
    """Seconds until the server closed the connection (or GIVE_UP_S), sending `trickle` a byte at a time
    every 0.2 s meanwhile (None: holding); and what it answered."""
    sock.settimeout(0.2)
    started, answer, sent = time.monotonic(), b"", 0
    while time.monotonic() - started < GIVE_UP_S:
        if trickle is not None and sent < len(trickle):
            try:
                sock.sendall(trickle[sent:sent + 1])
                sent += 1
            except OSError:
                break
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if not data:
            break
        answer += data
    return time.monotonic() - started, answer


@pytest.mark.parametrize("trickle", [None, b"X-Slow: " + b"a" * 100], ids=["held", "trickled"])
def test_headers_held_or_trickled_are_cut(server: ThreadedServer, trickle: bytes | None) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        open_s, answer = _open_for(sock, trickle)
    assert open_s < TIMEOUT_S + 2 and answer == b"", (open_s, answer)


def test_a_fresh_connection_that_sends_nothing_is_cut(server: ThreadedServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        open_s, _ = _open_for(sock, None)
    assert open_s < TIMEOUT_S + 2, open_s


def test_a_kept_alive_connection_must_send_its_next_headers_in_time(server: ThreadedServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.3)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /livez HTTP/1.1\r\n")
        open_s, answer = _open_for(sock, b"X-Slow: " + b"a" * 100)
    assert open_s < TIMEOUT_S + 2 and answer == b"", (open_s, answer)


@pytest.mark.parametrize("trickle", [None, b"a" * 100], ids=["held", "trickled"])
def test_a_body_held_or_trickled_gets_408(server: ThreadedServer, trickle: bytes | None) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                     b"authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\ncontent-length: 1000\r\n\r\n{")
        open_s, answer = _open_for(sock, trickle)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b'"error":"request_timeout"' in answer and open_s < TIMEOUT_S + 2, (open_s, answer)


def test_a_client_that_leaves_mid_body_is_one_info_line(server: ThreadedServer,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"POST /embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                         b"authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\ncontent-length: 1000\r\n\r\n{\"te")
    deadline = time.monotonic() + 5
    while len([r for r in caplog.records if r.name == "npu.access"]) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # anything else those requests would log
    access = [r for r in caplog.records if r.name == "npu.access"]
    assert len(access) == 3 and all(r.levelno == logging.INFO and " 499 " in r.getMessage() for r in access), \
        [r.getMessage() for r in access]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
