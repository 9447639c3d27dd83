"""Service request signatures and HTTP clients that never send a request unsigned (see docs/architecture.md).

v1, the seed's format, kept byte for byte because existing backends sign it:

    X-Service-Signature = hex HMAC-SHA256(key, "service_id:METHOD:path:timestamp")

v2, ours, binds what v1 leaves open to tampering and replay (the target host, query, body, a one-time
nonce):

    hex HMAC-SHA256(key, "v2:service_id:METHOD:host:path:canonical_query:timestamp:nonce:sha256hex(body)")

`path` is the URL path without the query exactly as sent on the request line (percent-encoding kept:
`/a%20b` is signed as `/a%20b`), so a signature made for one path never runs another: decoding is a
function, so one raw path routes to one path, and no two raw paths share a signature. `host` is the Host
header as sent, lowercased (`facade.example:8081`): like AWS SigV4, a signature made for one server is
refused by another, so a request signed to a node that turned out hostile cannot be replayed against
ours (a proxy in front of a facade must pass Host through). A facade accepts the names it serves as
(`api/hosts.py`; NPU_AUTH_HOSTS to name others), so this holds by default. `timestamp` is the
X-Service-Timestamp header exactly as sent (integer unix seconds); `canonical_query` is the query's
name=value pairs sorted by name, the values of a repeated name in the order sent (`?role=a&role=b` and
`?role=b&role=a` are different requests: a route reading one value reads the last), percent-encoded (RFC
3986 unreserved characters left as they are), empty when there is none. (Earlier releases sorted repeated values
too; a client of theirs signs the same message whenever it sends a repeated name's values
in sorted order, and every other query alike.) A request that carries X-Service-Nonce is a v2 request.
The "v2:" prefix keeps a v2 signature from ever verifying as v1, so stripping the nonce header cannot
downgrade a request.

v1 binds neither host, query, body nor a nonce: a v1 request seen by anyone (a log, a proxy, a node it
was sent to) can be replayed, to any facade that trusts the key, until its timestamp leaves the window.
`NPU_AUTH_REQUIRE_V2=true` refuses it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import httpx
from pydantic import SecretStr

from .credentials import outbound_identity
from .errors import AuthConfigError, UnauthorizedError
from .settings import Settings, get_settings

HEADER_ID = "X-Service-ID"
HEADER_SIGNATURE = "X-Service-Signature"
HEADER_TIMESTAMP = "X-Service-Timestamp"
HEADER_NONCE = "X-Service-Nonce"
AUTH_HEADERS = (HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, HEADER_NONCE)

# Wire-format rules, not knobs: a nonce must be unguessable and short enough for a Redis key.
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_UNKNOWN_SERVICE_KEY = secrets.token_hex(32)
"""An unknown service is checked against this throwaway key, so it costs the same time as a wrong key."""


def canonical_query(query: str | bytes) -> str:
    """Sorted by name and re-encoded, so the order of different names and the `+` / `%20` choices of
    clients and proxies do not matter; the values of a repeated name keep their order (a stable sort),
    since that order is meaning: a scalar parameter reads the last one."""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    pairs = sorted(parse_qsl(query, keep_blank_values=True), key=lambda pair: pair[0])
    return urlencode(pairs, safe="", quote_via=quote)


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def v1_message(service_id: str, method: str, path: str, timestamp: str) -> str:
    return f"{service_id}:{method.upper()}:{path}:{timestamp}"


def v2_message(service_id: str, method: str, path: str, query: str | bytes, timestamp: str, nonce: str,
               body: bytes, host: str = "", body_sha256: str | None = None) -> str:
    """`body_sha256`, when given, stands for the body: a verifier that hashed it as it streamed in."""
    digest = body_digest(body) if body_sha256 is None else body_sha256
    return (f"v2:{service_id}:{method.upper()}:{host.lower()}:{path}:{canonical_query(query)}:{timestamp}:{nonce}:"
            f"{digest}")


def raw_path(raw: bytes) -> str:
    """The signed path of a request target as sent: without the query, percent-encoding kept."""
    return raw.split(b"?", 1)[0].decode("latin-1")


def hmac_hex(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def sign_headers(service_id: str, key: str, method: str, path: str, *, query: str | bytes = b"",
                 body: bytes = b"", v2: bool = False, timestamp: int | None = None,
                 nonce: str | None = None, host: str = "") -> dict[str, str]:
    """The auth headers of one request; `path` as it will be sent (percent-encoded), `host` its Host."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = {HEADER_ID: service_id, HEADER_TIMESTAMP: ts}
    if v2:
        nonce = nonce or secrets.token_urlsafe(18)
        headers[HEADER_NONCE] = nonce
        headers[HEADER_SIGNATURE] = hmac_hex(key, v2_message(service_id, method, path, query, ts, nonce, body,
                                                             host))
    else:
        headers[HEADER_SIGNATURE] = hmac_hex(key, v1_message(service_id, method, path, ts))
    return headers


@dataclass(frozen=True)
class Verified:
    service_id: str
    version: int
    timestamp: int
    nonce: str | None

    def nonce_ttl(self, window_s: int, now: float | None = None) -> int:
        """Seconds a nonce must be remembered: until its timestamp leaves the window."""
        now = time.time() if now is None else now
        return max(1, int(self.timestamp + window_s - now) + 1)


def verify(headers: Mapping[str, str], method: str, path: str, query: str | bytes, body: bytes,
           keys: Mapping[str, Sequence[str]], *, window_s: int, require_v2: bool = False,
           now: float | None = None, host: str = "", body_sha256: str | None = None) -> Verified:
    """Checks one request's service signature; raises `UnauthorizedError` (public message, private reason).

    `path` is the raw path as received (`raw_path`), `host` the Host header, `body_sha256` the body's
    digest when the caller hashed it while it streamed (then `body` is not read). `headers` holds each auth
    header once (the caller refuses duplicates). Replay of a v2 nonce is the caller's check, since it
    needs shared state (Redis).
    """
    service_id, signature, timestamp, nonce = verify_headers(headers, window_s=window_s, now=now)
    if nonce is not None:
        message = v2_message(service_id, method, path, query, timestamp, nonce, body, host, body_sha256)
    elif require_v2:
        raise UnauthorizedError(UnauthorizedError.INVALID, "v1_refused")
    else:
        message = v1_message(service_id, method, path, timestamp)
    candidates = keys.get(service_id) or (_UNKNOWN_SERVICE_KEY,)
    given = signature.lower().encode()
    matched = False
    for key in candidates:  # every key is tried, so timing does not tell which (or whether one) matched
        matched |= hmac.compare_digest(hmac_hex(key, message).encode(), given)
    if service_id not in keys:
        raise UnauthorizedError(UnauthorizedError.INVALID, "unknown_service")
    if not matched:
        raise UnauthorizedError(UnauthorizedError.INVALID, "bad_signature")
    return Verified(service_id, 2 if nonce is not None else 1, int(timestamp), nonce)


def verify_headers(headers: Mapping[str, str], *, window_s: int,
                   now: float | None = None) -> tuple[str, str, str, str | None]:
    """The checks that need no key and no body: present, well-formed, within the window. The facade runs
    them before it reads a v2 request's body, so a request that cannot verify is refused unread.
    Returns (service id, signature, timestamp, nonce)."""
    service_id, signature = headers.get(HEADER_ID), headers.get(HEADER_SIGNATURE)
    timestamp, nonce = headers.get(HEADER_TIMESTAMP), headers.get(HEADER_NONCE)
    if not (service_id or signature or timestamp):
        raise UnauthorizedError(UnauthorizedError.MISSING, "missing_headers")
    if not (service_id and signature and timestamp):
        raise UnauthorizedError(UnauthorizedError.MISSING, "incomplete_headers")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise UnauthorizedError(UnauthorizedError.INVALID, "malformed_timestamp")
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > window_s:
        raise UnauthorizedError(UnauthorizedError.EXPIRED, "outside_window")
    if not _SIGNATURE.fullmatch(signature):
        raise UnauthorizedError(UnauthorizedError.INVALID, "malformed_signature")
    if nonce is not None and not _NONCE.fullmatch(nonce):
        raise UnauthorizedError(UnauthorizedError.INVALID, "malformed_nonce")
    return service_id, signature, timestamp, nonce


class ServiceAuth(httpx.Auth):
    """Signs each request as the last step before it is sent, after the caller's and the client's headers
    are merged, so no caller-supplied header can replace or add to the auth headers."""

    def __init__(self, service_id: str, key: str | SecretStr, *, v2: bool = False):
        """`v2=False` signs v1, for a facade that accepts nothing else (a seed's); a replayable format."""
        key = key.get_secret_value() if isinstance(key, SecretStr) else key
        if not service_id or not key:
            raise AuthConfigError("a service id and a non-empty key are needed to sign; refusing to send unsigned")
        if ":" in service_id:
            raise AuthConfigError(f"service id {service_id!r} must not contain ':'")
        self.service_id, self._key, self.v2 = service_id, key, v2
        self.requires_request_body = v2  # httpx then reads a streamed body before auth_flow sees it

    def __repr__(self) -> str:
        return f"ServiceAuth({self.service_id!r}, v{2 if self.v2 else 1})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        for name in AUTH_HEADERS:
            request.headers.pop(name, None)
        request.headers.update(sign_headers(
            self.service_id, self._key, request.method, raw_path(request.url.raw_path), query=request.url.query,
            body=request.content if self.v2 else b"", v2=self.v2, host=request.headers.get("host", "")))
        yield request


class _Signing:
    """Makes an httpx client sign every request, for both client classes below (the sign flow itself is
    one `httpx.Auth`, shared by httpx's sync and async sending)."""

    service_auth: ServiceAuth

    def __init__(self, service_id: str | None = None, key: str | SecretStr | None = None, *, v2: bool = True,
                 settings: Settings | None = None, **kwargs: Any):
        if "auth" in kwargs:
            raise TypeError("a service client signs every request itself; it takes no auth=")
        if service_id is None and key is None:
            service_id, key = outbound_identity(settings or get_settings())
        self.service_auth = ServiceAuth(service_id or "", key or "", v2=v2)
        super().__init__(auth=self.service_auth, **kwargs)  # type: ignore[call-arg]

    def _build_request_auth(self, request: httpx.Request, auth: Any = httpx.USE_CLIENT_DEFAULT) -> httpx.Auth:
        # httpx's one hook between a request (and any per-request `auth=`) and the auth flow that sends it,
        # in `Client.send` and `AsyncClient.send` alike; private, so a newer httpx is checked by the tests
        # (tests/dispatcher/test_signing.py) before its pin moves.
        if auth is not httpx.USE_CLIENT_DEFAULT:
            raise TypeError("a service client signs every request itself; per-request auth= is refused")
        return self.service_auth


class ServiceHTTPClient(_Signing, httpx.Client):
    """`httpx.Client` for service-to-service calls: every request is signed, v2 (`v2=False`: v1, only for a
    facade that accepts nothing else; v1 can be replayed within its window).

    Identity: `service_id` and `key`, else NPU_SERVICE_ID / NPU_SERVICE_KEY, else the generated local
    credentials. Without a key it raises `AuthConfigError` at construction; `auth=` is refused, on the
    client and per request, so nothing can turn signing off.
    """


class AsyncServiceHTTPClient(_Signing, httpx.AsyncClient):
    """The asyncio form of `ServiceHTTPClient`, with the same guarantees."""
