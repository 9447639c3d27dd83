"""Commands that run the service: `up` (everything), `serve` (the facade) and `work` (one worker)."""

from __future__ import annotations

import signal
import threading
import time
from typing import Annotated

import typer

from dispatcher.settings import Settings, get_settings

from ..stack import announce_facade, facade_url, start_embedded, stop_embedded, withdraw_facade
from ..supervisor import Supervisor
from .app import console
from .checks import check_port, check_redis, configure_logging


def _credentials(settings: Settings, host: str, port: int) -> None:
    """With nothing configured, make sure the generated credentials exist and say how to use them,
    naming the file and the field of each secret rather than printing it."""
    from dispatcher.credentials import LOCAL_SERVICE_ID, ensure_generated

    path = ensure_generated(settings)
    if path is None:
        return
    url = facade_url(host, port)
    option = "" if url == facade_url(settings.host, settings.port) else f" --url {url}"
    console.print(f"no credentials configured: using {path} (service '{LOCAL_SERVICE_ID}', an admin token and an "
                  "app key, mode 0600)\n"
                  f"  signed request: npu-worker call{option} GET /health\n"
                  "  operator:       Authorization: Bearer <admin_token from that file>\n"
                  f"  OpenAI client:  base_url {url}/v1, api_key <app_key from that file>", soft_wrap=True)


def _prepare(settings: Settings) -> None:
    from worker.prepare import prepare_all

    with console.status("preparing bundled models..."):
        done = prepare_all(settings)
    if done:
        console.print(f"prepared {', '.join(done)} under {settings.models_dir}")


def work(
    model: Annotated[list[str] | None, typer.Option(help="Serve only this model (repeatable).")] = None,
) -> None:
    """Run one worker process: load models, serve both lanes until SIGTERM/Ctrl-C."""
    from dispatcher.models import Registry
    from worker.main import Worker

    settings = get_settings()
    configure_logging(settings)
    registry = Registry.load(settings)
    for name in model or []:
        registry.get(name)  # an unknown model: one line and exit 2, before anything is loaded
    check_redis(settings)
    worker = Worker(settings, model)
    worker.install_signal_handlers()
    worker.run()


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [NPU_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [NPU_PORT].")] = None,
    api_workers: Annotated[int | None, typer.Option(help="Facade processes on the port [NPU_API_WORKERS].")] = None,
) -> None:
    """Run the HTTP facade only."""
    settings = get_settings()
    configure_logging(settings)
    host, port = host or settings.host, port or settings.port
    check_port(host, port)
    check_redis(settings)
    _credentials(settings, host, port)
    url = facade_url(host, port)
    announced = announce_facade(settings, url, replace=False)
    try:
        _run_facade(settings, host, port, api_workers)
    finally:
        if announced:
            withdraw_facade(settings, url)


def _announce_ready(settings: Settings, host: str, port: int, timeout_s: float = 300) -> None:
    """Say when every model has a live worker: until then a request gets 503 `no_worker`, which a
    newcomer trying the quick start right after the facade's own start-up line would not expect."""
    from dispatcher.models import Registry
    from dispatcher.protocol import Keys

    try:
        r, keys, names = settings.redis(), Keys(settings.key_prefix), Registry.load(settings).names
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            pipe = r.pipeline(transaction=False)
            for name in names:
                pipe.zcount(keys.live(name), time.time(), "+inf")
            if all(pipe.execute()):
                console.print(f"ready: {', '.join(names)} served at {facade_url(host, port)}")
                return
            time.sleep(0.2)
        console.print(f"[yellow]not every model has a live worker after {timeout_s:.0f}s; see `npu-worker status`")
    except Exception as exc:  # only a message is lost
        console.print(f"[yellow]could not tell when the workers are ready: {exc}")


class _Stop(Exception):
    pass


def _raise_stop(*_: object) -> None:
    raise _Stop


def up(
    host: Annotated[str | None, typer.Option(help="Bind address [NPU_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [NPU_PORT].")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes [NPU_WORKERS].")] = None,
    api_workers: Annotated[int | None, typer.Option(help="Facade processes on the port [NPU_API_WORKERS].")] = None,
) -> None:
    """Start everything: Redis (embedded when neither REDIS_URL nor NPU_REDIS_SENTINELS is set), N workers
    and the facade. SIGHUP restarts the workers one after the other, each replaced only once its
    successor is live (a rolling restart without errors)."""
    settings = get_settings()
    configure_logging(settings)
    host, port = host or settings.host, port or settings.port
    check_port(host, port)
    if settings.redis_url:
        check_redis(settings)
    _prepare(settings)
    _credentials(settings, host, port)
    embedded = None
    if not settings.redis_url and not settings.redis_sentinels:
        embedded, settings = start_embedded(settings)
        console.print(f"embedded redis at 127.0.0.1:{embedded.port}, password in {embedded.directory / 'password'} "
                      f"(URL in {settings.state_dir / 'redis.url'}; data in {embedded.directory})")
    url = facade_url(host, port)
    announce_facade(settings, url)
    count = settings.workers if workers is None else workers
    supervisor = Supervisor(count, settings, say=console.print)
    supervisor.start()
    signal.signal(signal.SIGHUP, lambda *_: supervisor.request_restart())
    console.print(f"facade on http://{host}:{port} with {count} worker process(es); Ctrl-C stops all")
    if count:
        threading.Thread(target=_announce_ready, args=(settings, host, port), daemon=True).start()
    # uvicorn stops gracefully on SIGTERM/SIGINT and then raises the signal again; this handler turns
    # that into an exception, so the clean-up below runs and `up` exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_stop)
    try:
        _run_facade(settings, host, port, api_workers)
    except _Stop:
        pass
    finally:
        supervisor.stop()
        withdraw_facade(settings, url)
        if embedded:
            stop_embedded(settings, embedded)


def _run_facade(settings: Settings, host: str, port: int, api_workers: int | None) -> None:
    """uvicorn with its fast loop and parser (uvloop, httptools: `uvicorn[standard]`); with several
    processes, each builds its own app (and dispatcher) and the kernel spreads connections over them.
    Each finds Redis as every other process here does (REDIS_URL, or the `redis.url` of a running `up`)."""
    import uvicorn

    from api.app import server_options

    count = settings.api_workers if api_workers is None else api_workers
    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=count if count > 1 else None,
                loop="auto", log_level=settings.log_level.lower(), access_log=False, log_config=None,
                **server_options(settings))
