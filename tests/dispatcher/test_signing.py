"""Signatures, credentials and the signing clients, without a server (no Redis, no OpenVINO)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.credentials import accepted, ensure_generated, outbound_identity
from dispatcher.errors import AuthConfigError, UnauthorizedError
from dispatcher.settings import Settings
from dispatcher.signing import (
    HEADER_ID,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    AsyncServiceHTTPClient,
    ServiceAuth,
    ServiceHTTPClient,
    Verified,
    canonical_query,
    raw_path,
    sign_headers,
    verify,
)

KEYS = {"svc": ("old-key", "new-key"), "other": ("other-key",)}
WINDOW = 300


def check(headers: dict[str, str], method: str = "POST", path: str = "/embeddings", query: str = "",
          body: bytes = b"", **options: bool) -> Verified:
    return verify(headers, method, path, query, body, KEYS, window_s=WINDOW, **options)


def refusal(headers: dict[str, str], **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(UnauthorizedError) as caught:
        check(headers, **kwargs)
    return caught.value.message, caught.value.reason


def test_v1_is_the_seed_string_signed_by_hand() -> None:
    ts = str(int(time.time()))
    by_hand = hmac.new(b"new-key", f"svc:POST:/embeddings:{ts}".encode(), hashlib.sha256).hexdigest()
    assert sign_headers("svc", "new-key", "post", "/embeddings", timestamp=int(ts))[HEADER_SIGNATURE] == by_hand
    verified = check({HEADER_ID: "svc", HEADER_TIMESTAMP: ts, HEADER_SIGNATURE: by_hand.upper()})
    assert verified.service_id == "svc" and verified.version == 1


def test_every_key_of_a_rotated_service_verifies() -> None:
    for key in KEYS["svc"]:
        assert check(sign_headers("svc", key, "POST", "/embeddings")).service_id == "svc"


@pytest.mark.parametrize("headers, message, reason", [
    ({}, "missing credentials", "missing_headers"),
    ({HEADER_ID: "svc", HEADER_TIMESTAMP: "1"}, "missing credentials", "incomplete_headers"),
    ({HEADER_ID: "svc", HEADER_TIMESTAMP: "soon", HEADER_SIGNATURE: "0" * 64}, "invalid credentials",
     "malformed_timestamp"),
    ({HEADER_ID: "svc", HEADER_TIMESTAMP: "NOW", HEADER_SIGNATURE: "zz"}, "invalid credentials",
     "malformed_signature"),
])
def test_missing_and_malformed_headers(headers: dict[str, str], message: str, reason: str) -> None:
    headers = {k: str(int(time.time())) if v == "NOW" else v for k, v in headers.items()}
    assert refusal(headers) == (message, reason)


@pytest.mark.parametrize("skew", [-WINDOW - 5, WINDOW + 5])
def test_a_timestamp_outside_the_window_is_expired(skew: int) -> None:
    headers = sign_headers("svc", "new-key", "POST", "/embeddings", timestamp=int(time.time()) + skew)
    assert refusal(headers) == ("expired signature", "outside_window")


def test_inside_the_window_either_side_is_accepted() -> None:
    for skew in (-WINDOW + 5, WINDOW - 5):
        check(sign_headers("svc", "new-key", "POST", "/embeddings", timestamp=int(time.time()) + skew))


def test_unknown_service_and_wrong_key_look_the_same_to_the_caller() -> None:
    unknown = refusal(sign_headers("nobody", "new-key", "POST", "/embeddings"))
    wrong = refusal(sign_headers("svc", "other-key", "POST", "/embeddings"))
    assert unknown == ("invalid credentials", "unknown_service")
    assert wrong == ("invalid credentials", "bad_signature")


def test_v1_binds_method_and_path() -> None:
    headers = sign_headers("svc", "new-key", "GET", "/health")
    assert refusal(headers, method="POST", path="/health")[1] == "bad_signature"
    assert refusal(headers, method="GET", path="/models")[1] == "bad_signature"


def test_v2_binds_query_body_and_nonce() -> None:
    body = b'{"texts":["hi"]}'
    headers = sign_headers("svc", "new-key", "POST", "/embeddings", query="b=2&a=1", body=body, v2=True)
    verified = check(headers, query="a=1&b=2", body=body)  # order does not matter
    assert verified.version == 2 and verified.nonce == headers[HEADER_NONCE]
    assert refusal(headers, query="a=1&b=3", body=body)[1] == "bad_signature"
    assert refusal(headers, query="a=1&b=2", body=b'{"texts":["hj"]}')[1] == "bad_signature"
    other_nonce = {**headers, HEADER_NONCE: "A" * 24}
    assert refusal(other_nonce, query="a=1&b=2", body=body)[1] == "bad_signature"
    assert refusal({**headers, HEADER_NONCE: "short"}, query="a=1&b=2", body=body)[1] == "malformed_nonce"


def test_stripping_the_nonce_does_not_downgrade_v2_to_v1() -> None:
    headers = sign_headers("svc", "new-key", "POST", "/embeddings", v2=True)
    del headers[HEADER_NONCE]
    assert refusal(headers)[1] == "bad_signature"


def test_require_v2_refuses_a_valid_v1_signature() -> None:
    assert refusal(sign_headers("svc", "new-key", "POST", "/embeddings"), require_v2=True) == (
        "invalid credentials", "v1_refused")
    check(sign_headers("svc", "new-key", "POST", "/embeddings", v2=True), require_v2=True)


def test_canonical_query() -> None:
    assert canonical_query("b=2&a=0&a=1") == canonical_query(b"a=0&a=1&b=2") == "a=0&a=1&b=2"
    # a repeated name's values keep their order: a route reading one value reads the last (SigV4 would sort them)
    assert canonical_query("a=1&a=0") == "a=1&a=0" != canonical_query("a=0&a=1")
    assert canonical_query("q=a+b") == canonical_query("q=a%20b") == "q=a%20b"
    assert canonical_query("flag&x=") == "flag=&x="
    assert canonical_query("") == ""


def test_nonce_is_remembered_until_the_timestamp_leaves_the_window() -> None:
    now = time.time()
    verified = check(sign_headers("svc", "new-key", "POST", "/embeddings", v2=True, timestamp=int(now) + 100))
    assert WINDOW + 100 <= verified.nonce_ttl(WINDOW, now) <= WINDOW + 102


# --- clients


def verifying_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    """Stands in for the network only: the request that would be sent is checked by the real verify()."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        try:
            verified = verify(request.headers, request.method, raw_path(request.url.raw_path), request.url.query,
                              request.content, KEYS, window_s=WINDOW, host=request.headers["host"])
        except UnauthorizedError as exc:
            return httpx.Response(401, json={"reason": exc.reason})
        return httpx.Response(200, json={"service": verified.service_id, "version": verified.version})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("v2", [False, True])
def test_sync_client_signs_every_request(v2: bool) -> None:
    seen: list[httpx.Request] = []
    with ServiceHTTPClient("svc", "new-key", v2=v2, base_url="http://facade",
                           transport=verifying_transport(seen)) as client:
        assert client.get("/health").json() == {"service": "svc", "version": 2 if v2 else 1}
        answer = client.post("/embeddings", params={"z": "1", "a": "2"}, json={"texts": ["hi"]})
        assert answer.status_code == 200
    assert all(HEADER_SIGNATURE in r.headers for r in seen)


def test_async_client_signs_every_request() -> None:
    seen: list[httpx.Request] = []

    async def run() -> list[int]:
        async with AsyncServiceHTTPClient("svc", "old-key", v2=True, base_url="http://facade",
                                          transport=verifying_transport(seen)) as client:
            return [(await client.post("/inference", json={"prompt": "hi"})).status_code,
                    (await client.get("/models?x=1")).status_code]

    assert asyncio.run(run()) == [200, 200]


def test_caller_headers_never_override_the_auth_headers() -> None:
    seen: list[httpx.Request] = []
    forged = {HEADER_ID: "other", HEADER_SIGNATURE: "0" * 64, HEADER_TIMESTAMP: "1", HEADER_NONCE: "N" * 20}
    with ServiceHTTPClient("svc", "new-key", v2=False, headers=forged, base_url="http://facade",
                           transport=verifying_transport(seen)) as client:
        assert client.get("/health", headers=forged).json() == {"service": "svc", "version": 1}
    sent = seen[0].headers
    assert sent[HEADER_ID] == "svc" and HEADER_NONCE not in sent  # the forged nonce would have made it v2
    assert all(len(sent.get_list(name)) == 1 for name in (HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP))


def test_signing_cannot_be_turned_off() -> None:
    with pytest.raises(TypeError):
        ServiceHTTPClient("svc", "new-key", auth=None)
    with ServiceHTTPClient("svc", "new-key", v2=False, transport=verifying_transport([])) as client:
        with pytest.raises(TypeError):
            client.get("http://facade/health", auth=None)
        client.auth = None  # even replacing the client's auth leaves requests signed
        assert client.get("http://facade/health").status_code == 200


def test_no_key_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError):
        ServiceAuth("svc", "")
    with pytest.raises(AuthConfigError):
        ServiceHTTPClient(settings=Settings(state_dir=tmp_path))  # nothing configured, nothing generated
    with pytest.raises(AuthConfigError):
        AsyncServiceHTTPClient(settings=Settings(state_dir=tmp_path, service_id="svc"))  # an id without a key


def test_auth_repr_shows_no_key() -> None:
    with ServiceHTTPClient("svc", "new-key") as client:
        assert "new-key" not in repr(ServiceAuth("svc", "new-key")) + repr(client.auth) + repr(client.service_auth)


# --- credentials


def test_generated_credentials_are_private_reused_and_accepted(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    path = ensure_generated(settings)
    assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o600
    first = json.loads(path.read_text())
    assert ensure_generated(settings) == path and json.loads(path.read_text()) == first
    assert len(first["service_key"]) >= 64 and len(first["admin_token"]) >= 40
    got = accepted(settings)
    assert got.service_keys == {"local": (first["service_key"],)} and got.admin_tokens == (first["admin_token"],)
    assert outbound_identity(settings) == ("local", first["service_key"])
    assert first["service_key"] not in repr(got) + got.summary()


def test_configured_credentials_replace_the_generated_ones(tmp_path: Path) -> None:
    ensure_generated(Settings(state_dir=tmp_path))
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"svc": "from-file", "batch": ["b1", "b2"]}))
    settings = Settings(state_dir=tmp_path, service_keys={"svc": "from-env"}, service_keys_file=keys_file)
    assert ensure_generated(settings) is None
    assert accepted(settings).service_keys == {"svc": ("from-env", "from-file"), "batch": ("b1", "b2")}
    with pytest.raises(AuthConfigError):  # configured, so the generated key is not an identity to sign with
        outbound_identity(settings)


def test_bad_key_sets_are_refused_without_echoing_keys(tmp_path: Path) -> None:
    for keys in ({"svc": ""}, {"a:b": "secret-value"}, {"svc": []}):
        with pytest.raises(AuthConfigError) as caught:
            accepted(Settings(state_dir=tmp_path, service_keys=keys))
        assert "secret-value" not in caught.value.message


def test_settings_parse_tokens_and_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPU_ADMIN_TOKENS", "a1, a2")
    monkeypatch.setenv("NPU_VIEWER_TOKENS", '["v1"]')
    monkeypatch.setenv("NPU_SERVICE_KEYS", '{"svc": ["k1", "k2"], "one": "k3"}')
    monkeypatch.setenv("NPU_AUTH_REQUIRE_V2", "true")
    s = Settings()
    assert [t.get_secret_value() for t in s.admin_tokens] == ["a1", "a2"]
    assert [t.get_secret_value() for t in s.viewer_tokens] == ["v1"]
    assert s.auth_require_v2 and "k1" not in repr(s) and "a1" not in repr(s)
    monkeypatch.setenv("NPU_SERVICE_KEYS", "")
    monkeypatch.setenv("NPU_ADMIN_TOKENS", "")
    assert Settings().service_keys == {} and Settings().admin_tokens == []
