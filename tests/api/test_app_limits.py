"""Apps and their limits through a live facade: the official `openai` client retries a 429 by its own headers
and succeeds; limits are kept in Redis (so shared by facades); jobs carry the caller's app."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from dispatcher.apps import AppLimits, parse_apps
from dispatcher.protocol import Keys
from dispatcher.ratelimit import RateLimiter
from dispatcher.settings import Settings
from tests.conftest import LiveFacade, WorkerProcess

MODEL = "all-minilm-l6-v2"
RATED, BUSY = "limits-rated-key", "limits-busy-key"


@pytest.fixture(scope="module")
def limited(settings: Settings, worker: WorkerProcess) -> Iterator[LiveFacade]:
    apps = {"rated": {"keys": [RATED], "weight": 2, "limits": {"requests_per_second": 2}},
            "busy": {"keys": [BUSY], "limits": {"concurrent": 1}}}
    live = LiveFacade(settings.model_copy(update={"apps": json.dumps(apps)}))
    yield live
    live.stop()


def _fresh_second() -> None:
    """Start at the beginning of a one-second window, so the requests below share one."""
    time.sleep(1 - time.time() % 1 + 0.01)


def test_the_openai_client_retries_a_429_by_its_headers_and_succeeds(limited: LiveFacade) -> None:
    sent: list[int] = []

    def count(response: httpx.Response) -> None:
        sent.append(response.status_code)

    client = openai.OpenAI(base_url=f"{limited.url}/v1", api_key=RATED, max_retries=10,
                           http_client=httpx.Client(event_hooks={"response": [count]}))
    _fresh_second()
    with ThreadPoolExecutor(4) as pool:  # 8 calls at once, 2 per second allowed: some are refused, then retried
        dims = list(pool.map(lambda _: len(client.embeddings.create(input="hello", model=MODEL).data[0].embedding),
                             range(8)))
    assert dims == [384] * 8
    assert sent.count(429) >= 1 and sent.count(200) == 8 and len(sent) == 8 + sent.count(429), sent

    strict = openai.OpenAI(base_url=f"{limited.url}/v1", api_key=RATED, max_retries=0)
    _fresh_second()
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _: _outcome(strict), range(4)))
    refusals = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    assert refusals, outcomes
    headers = refusals[0].response.headers
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("ms") and headers["retry-after"] == "1"
    assert refusals[0].response.json()["error"]["code"] == "rate_limit_exceeded"


def _outcome(client: openai.OpenAI) -> object:
    try:
        return client.embeddings.create(input="a", model=MODEL)
    except openai.RateLimitError as exc:
        return exc


def test_an_app_without_limits_is_not_limited_and_apps_are_counted_apart(limited: LiveFacade,
                                                                         settings: Settings) -> None:
    """A bare key (the session's) has no limits: 4 requests in one second pass, where `rated` gets 2."""
    from tests.conftest import APP_KEY

    client = openai.OpenAI(base_url=f"{limited.url}/v1", api_key=APP_KEY, max_retries=0)
    _fresh_second()
    for _ in range(4):
        client.embeddings.create(input="x", model=MODEL)
    metrics = httpx.get(f"{limited.url}/metrics", headers={"Authorization": f"Bearer {_admin()}"}).text
    rated = [line for line in metrics.splitlines() if line.startswith("npu_requests_total") and 'app="rated"' in line]
    assert rated, "requests of the app `rated` are counted under its name"
    # the worker counts the work it served per app (the job carried the app): the operator's details panel
    node = settings.node_id
    end = time.monotonic() + 10
    while True:
        details = httpx.get(f"{limited.url}/api/nodes/{node}/npu/details",
                            headers={"Authorization": f"Bearer {_admin()}"}).json()
        served = {a["name"]: a["work"] for a in details.get("apps", [])}
        if served.get("rated", 0) >= 9 or time.monotonic() > end:  # 8 + 1 or more texts in the first test
            break
        time.sleep(0.5)
    assert served.get("rated", 0) >= 9, served


def test_priority_and_service_tier_are_taken(limited: LiveFacade) -> None:
    """`priority` (native) and `service_tier` (/v1) are accepted with their values, refused otherwise."""
    from tests.conftest import APP_KEY

    with httpx.Client(base_url=limited.url, headers={"Authorization": f"Bearer {APP_KEY}"}, timeout=60) as c:
        assert c.post("/embeddings", json={"texts": ["x"], "model": MODEL, "priority": "low"}).status_code == 200
        assert c.post("/embeddings", json={"texts": ["x"], "model": MODEL, "priority": "urgent"}).status_code == 422
        for tier in ("flex", "auto", "default"):
            body = {"input": "x", "model": MODEL, "service_tier": tier}
            assert c.post("/v1/embeddings", json=body).status_code == 200, tier
        refused = c.post("/v1/embeddings", json={"input": "x", "model": MODEL, "service_tier": "scale"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "service_tier"


def _admin() -> str:
    from tests.conftest import ADMIN_TOKEN

    return ADMIN_TOKEN


def test_concurrency_and_token_limits_in_redis(settings: Settings) -> None:
    """Two limiters (two facades) over one Redis see each other's requests; tokens are charged after."""
    async def run() -> None:
        keys = Keys(settings.key_prefix + "rl")
        r1, r2 = settings.aredis(), settings.aredis()
        one = RateLimiter(r1, keys, {}, hold_s=30)
        two = RateLimiter(r2, keys, {}, hold_s=30)
        limits = AppLimits(concurrent=1, tokens_per_minute=100)
        now = time.time()
        first = await one.acquire("app", limits, "req-1", now)
        second = await two.acquire("app", limits, "req-2", now)
        assert first.ok and not second.ok and second.limit == "concurrent"
        await one.release("app", "req-1")
        third = await two.acquire("app", limits, "req-3", now)
        assert third.ok
        await two.release("app", "req-3")
        await one.charge("app", 150, now)
        over = await two.acquire("app", limits, "req-4", now)
        assert not over.ok and over.limit == "tokens" and 0 < over.retry_after_s <= 60
        assert over.headers()["x-ratelimit-remaining-tokens"] == "0"
        await r1.delete(*[k async for k in r1.scan_iter(match=f"{keys.prefix}:*")])
        await r1.aclose()
        await r2.aclose()

    asyncio.run(run())


def test_apps_config() -> None:
    apps = parse_apps('{"search": {"keys": ["k1", "k2"], "weight": 3, "limits": {"concurrent": 4}}}', ["k1", "k3"])
    assert apps["search"].weight == 3 and apps["search"].limits.concurrent == 4
    bare = [a for a in apps.values() if a.keys == ["k3"]]
    assert len(bare) == 1 and bare[0].name.startswith("key-")  # a bare key is an app of its own, by key id
    with pytest.raises(ValueError, match="two apps"):
        parse_apps('{"a": {"keys": ["k"]}, "b": {"keys": ["k"]}}')
    with pytest.raises(ValueError):
        parse_apps('{"bad name!": {"keys": ["k"]}}')
