"""The embedded stack of `npu-worker up`: its Redis, and the files in the state directory that tell the
other tools of this user (`status`, `call`, `rq info`, a backend) where it runs.

Every process `up` starts finds the embedded Redis the same way those tools do, through `redis.url` (the
settings read it when REDIS_URL is unset), so nothing edits the environment or a settings cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import redis

from dispatcher.protocol import Keys
from dispatcher.settings import Settings

from .redis_server import EmbeddedRedis, write_private

REDIS_FILE = "redis.url"
"""The embedded Redis's URL, password included (0600); present only while `up` runs."""
FACADE_FILE = "facade.url"
"""The facade's base URL (0600), for `call`; present only while `up` (or a lone `serve`) runs."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def announced_redis(settings: Settings) -> str | None:
    return _read(settings.state_dir / REDIS_FILE)


def announced_facade(settings: Settings) -> str | None:
    return _read(settings.state_dir / FACADE_FILE)


def facade_url(host: str, port: int) -> str:
    """The address a client on this machine uses for a facade bound to `host`."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def announce_facade(settings: Settings, url: str, replace: bool = True) -> bool:
    """Write `facade.url`; with `replace=False` (a lone `serve`) only if no other facade announced itself
    there. True when written."""
    from dispatcher.credentials import private_dir

    private_dir(settings.state_dir)
    path = settings.state_dir / FACADE_FILE
    if not replace and path.exists():
        return False
    write_private(path, url + "\n")
    return True


def withdraw_facade(settings: Settings, url: str) -> None:
    """Remove `facade.url` if it still names this facade (another may have announced itself since)."""
    if announced_facade(settings) == url:
        (settings.state_dir / FACADE_FILE).unlink(missing_ok=True)


def forget_previous_run(client: redis.Redis, prefix: str) -> int:
    """Mark every worker the embedded Redis remembers as dead now.

    Its append-only file keeps the heartbeats of a run that was stopped uncleanly, valid for their TTL, so
    routing and readiness would count workers that no longer exist while the new ones still load. Only
    this stack's workers use its Redis, so none of them is alive before `up` starts one. Their scores are
    set to now (not removed), so peers still see them as dead workers and take over their jobs.
    """
    keys, now = Keys(prefix), time.time()
    stale = [m.decode() for m in cast("list[bytes]", client.zrangebyscore(keys.workers, now, "+inf"))]
    if not stale:
        return 0
    pipe = client.pipeline(transaction=False)
    pipe.zadd(keys.workers, dict.fromkeys(stale, now), xx=True)
    for live in client.scan_iter(match=keys.live("*"), _type="zset"):
        pipe.zrem(live, *stale)
    for worker_id in stale:
        pipe.delete(keys.worker(worker_id))
    pipe.execute()
    return len(stale)


def start_embedded(settings: Settings) -> tuple[EmbeddedRedis, Settings]:
    """Start the embedded Redis in the state directory, forget the previous run's workers, announce it,
    and return it with the settings that point at it."""
    from dispatcher.credentials import private_dir

    private_dir(settings.state_dir)
    announced = settings.state_dir / REDIS_FILE
    announced.unlink(missing_ok=True)  # a stale one from a killed `up`
    embedded = EmbeddedRedis(settings.state_dir / "redis", maxmemory_mb=settings.redis_maxmemory_mb).start()
    ours = settings.model_copy(update={"redis_url": embedded.url})
    client = ours.redis()
    try:
        forget_previous_run(client, settings.key_prefix)
    finally:
        client.close()
    # Other tools (`status`, rq info, a backend of this user) and the processes `up` starts find the
    # embedded Redis, password included, here; 0600, like the password file itself.
    write_private(announced, embedded.url + "\n")
    return embedded, ours


def stop_embedded(settings: Settings, embedded: EmbeddedRedis) -> None:
    embedded.stop()
    (settings.state_dir / REDIS_FILE).unlink(missing_ok=True)
