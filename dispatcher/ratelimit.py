"""Per-app limits shared by every facade: requests at once, requests per second, tokens per minute.

Kept in Redis, checked in one round trip by a small Lua script: the three limits are judged together and
atomically (a request refused by one takes nothing from the others), through the facade's own client (so
under Sentinel it follows a failover like every other command). The `limits` library would take one round
trip per limit and builds its own Redis client from a URL, which our Sentinel-managed clients are not.

Windows are fixed (a second for requests, a minute for tokens), keyed by the window's number, expiring by
themselves. Tokens are known only once a request is answered, so a request is admitted while the app's
window has tokens left and its tokens are charged after (`charge`): an app may overshoot its budget by
the requests in flight when it ran out, never by more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .apps import AppLimits
from .protocol import Keys

_ACQUIRE = """
local running, requests, tokens = KEYS[1], KEYS[2], KEYS[3]
local now_ms, member = tonumber(ARGV[1]), ARGV[2]
local max_running, max_requests, max_tokens = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local hold_ms = tonumber(ARGV[6])
local used_requests = tonumber(redis.call('GET', requests) or '0')
local used_tokens = tonumber(redis.call('GET', tokens) or '0')
local busy = 0
if max_running > 0 then
  redis.call('ZREMRANGEBYSCORE', running, '-inf', now_ms)
  busy = redis.call('ZCARD', running)
end
if max_running > 0 and busy >= max_running then return {0, 'concurrent', used_requests, used_tokens, busy} end
if max_requests > 0 and used_requests >= max_requests then return {0, 'requests', used_requests, used_tokens, busy} end
if max_tokens > 0 and used_tokens >= max_tokens then return {0, 'tokens', used_requests, used_tokens, busy} end
if max_requests > 0 then
  used_requests = redis.call('INCR', requests)
  if used_requests == 1 then redis.call('PEXPIRE', requests, 2000) end
end
if max_running > 0 then
  redis.call('ZADD', running, now_ms + hold_ms, member)
  redis.call('PEXPIRE', running, hold_ms)
end
return {1, '', used_requests, used_tokens, busy + 1}
"""


@dataclass(frozen=True)
class Verdict:
    """One request's admission, and what OpenAI's `x-ratelimit-*` headers say about the app's windows."""

    ok: bool
    limit: str
    """Which limit refused it: concurrent, requests, tokens ("" when admitted)."""
    limits: AppLimits
    used_requests: int
    used_tokens: int
    requests_reset_s: float
    tokens_reset_s: float

    @property
    def retry_after_s(self) -> float:
        if self.limit == "tokens":
            return self.tokens_reset_s
        return self.requests_reset_s if self.limit == "requests" else 1.0

    def headers(self) -> dict[str, str]:
        """OpenAI's rate-limit headers, so its clients' retry logic works unchanged."""
        out: dict[str, str] = {}
        rps, tpm = self.limits.requests_per_second, self.limits.tokens_per_minute
        if rps is not None:
            limit = math.floor(rps)
            out |= {"x-ratelimit-limit-requests": str(limit),
                    "x-ratelimit-remaining-requests": str(max(0, limit - self.used_requests)),
                    "x-ratelimit-reset-requests": _duration(self.requests_reset_s)}
        if tpm is not None:
            out |= {"x-ratelimit-limit-tokens": str(tpm),
                    "x-ratelimit-remaining-tokens": str(max(0, tpm - self.used_tokens)),
                    "x-ratelimit-reset-tokens": _duration(self.tokens_reset_s)}
        if not self.ok:
            out |= {"retry-after": str(max(1, math.ceil(self.retry_after_s))),
                    "retry-after-ms": str(max(1, math.ceil(self.retry_after_s * 1000)))}
        return out


def _duration(seconds: float) -> str:
    """As OpenAI writes resets: `1s`, `250ms`, `6m0s`."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s" if minutes else f"{rest:.3g}s"


class RateLimiter:
    """The apps' limits over one async Redis client (the facade's)."""

    def __init__(self, redis: Any, keys: Keys, limits: dict[str, AppLimits], hold_s: float):
        self.redis, self.keys, self.limits = redis, keys, limits
        self.hold_ms = int(hold_s * 1000)
        """How long a running request's slot is held at most (a facade that died releases nothing)."""
        self._acquire = redis.register_script(_ACQUIRE)

    def applies(self, app: str) -> AppLimits | None:
        limits = self.limits.get(app)
        if limits is None or (limits.concurrent is None and limits.requests_per_second is None
                              and limits.tokens_per_minute is None):
            return None
        return limits

    def _keys(self, app: str, now: float) -> tuple[str, str, str]:
        base = f"{self.keys.prefix}:limit:{app}"
        return f"{base}:running", f"{base}:requests:{int(now)}", f"{base}:tokens:{int(now // 60)}"

    async def acquire(self, app: str, limits: AppLimits, member: str, now: float) -> Verdict:
        """Admit one request of `app` (holding a running slot named `member` when concurrency is limited)."""
        running, requests, tokens = self._keys(app, now)
        rps = limits.requests_per_second
        got = await self._acquire(keys=[running, requests, tokens], args=[
            int(now * 1000), member, limits.concurrent or 0, math.floor(rps) if rps else 0,
            limits.tokens_per_minute or 0, self.hold_ms])
        ok, which = int(got[0]), got[1].decode() if isinstance(got[1], bytes) else str(got[1])
        return Verdict(bool(ok), which, limits, int(got[2]), int(got[3]), requests_reset_s=1 - now % 1,
                       tokens_reset_s=60 - now % 60)

    async def release(self, app: str, member: str) -> None:
        await self.redis.zrem(f"{self.keys.prefix}:limit:{app}:running", member)

    async def charge(self, app: str, tokens: int, now: float) -> None:
        """Count an answered request's tokens in its app's minute."""
        key = self._keys(app, now)[2]
        pipe = self.redis.pipeline(transaction=False)
        pipe.incrby(key, tokens)
        pipe.expire(key, 120)
        await pipe.execute()
