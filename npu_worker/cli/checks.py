"""Checks a command makes before it starts anything, each failing in one line."""

from __future__ import annotations

from dispatcher.settings import Settings, get_settings

from ..stack import announced_redis
from .app import Failure


def redis_shown() -> str:
    """The Redis address without a password."""
    try:
        from redis.connection import parse_url

        parts = parse_url(get_settings().redis_address)
        return f"{parts.get('host', parts.get('path', '?'))}:{parts.get('port', '')}".rstrip(":")
    except Exception:
        return "(unparsable REDIS_URL)"


def where(settings: Settings) -> str:
    """Where a command reads from, without the password a Redis URL may carry."""
    from ..redis_server import redacted

    return (f"sentinel master {settings.redis_sentinel_master}" if settings.redis_sentinels
            else redacted(settings.redis_address))


def require_redis(settings: Settings) -> None:
    """With no REDIS_URL and no sentinels, the only Redis a command may use is the one a running `up`
    announced in the state directory: never a guessed localhost:6379 that belongs to something else."""
    if settings.redis_url or settings.redis_sentinels or announced_redis(settings) is not None:
        return
    raise Failure(f"no Redis: REDIS_URL is not set and no `npu-worker up` is running with state directory "
                  f"{settings.state_dir} (start `npu-worker up`, set NPU_STATE_DIR to its directory, or set "
                  "REDIS_URL)")


def check_redis(settings: Settings) -> None:
    """Fail at once, in one line, on no Redis at all, a malformed REDIS_URL or a Redis that does not answer."""
    import redis

    require_redis(settings)
    try:
        client = settings.redis()
    except ValueError as exc:
        raise Failure(f"bad REDIS_URL: {exc}", 2) from None
    try:
        client.ping()
    except redis.RedisError as exc:
        raise Failure(f"cannot reach Redis at {redis_shown()}: {exc} (set REDIS_URL, or start `npu-worker up`)") \
            from None
    finally:
        client.close()


def check_port(host: str, port: int) -> None:
    """Fail before starting anything when the facade's port cannot be bound (in use, or not allowed)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is not "busy"
        try:
            s.bind((host, port))
        except OSError as exc:
            raise Failure(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another process has it? "
                          "use --port)") from None


def configure_logging(settings: Settings) -> None:
    from dispatcher.logs import configure

    configure(settings)
