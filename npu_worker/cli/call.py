"""Commands that talk to a running facade or run beside it: `call` (one signed request) and `bench`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from dispatcher.settings import get_settings

from .app import Failure, console


def call(
    method: Annotated[str, typer.Argument(help="HTTP method, e.g. GET or POST.")],
    path: Annotated[str, typer.Argument(help="Path (and query), e.g. /health or /embeddings.")],
    body: Annotated[str | None, typer.Argument(help="JSON body, or - to read it from stdin.")] = None,
    url: Annotated[str | None, typer.Option(help="Facade base URL [the running `up`'s, or "
                                                 "http://NPU_HOST:NPU_PORT].")] = None,
    v1: Annotated[bool, typer.Option("--v1", help="Sign with the seed's v1 format instead of v2.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 60.0,
) -> None:
    """Make a signed request to the facade and print its answer; exits 1 on an HTTP error status.

    Signs as NPU_SERVICE_ID / NPU_SERVICE_KEY, or with the credentials `up` / `serve` generated here.
    """
    import httpx

    from dispatcher.errors import AuthConfigError

    from ..http import NoFacade, base_url, signed_request

    settings = get_settings()
    content = None
    if body is not None:
        text = sys.stdin.read() if body == "-" else body
        try:
            json.loads(text)
        except ValueError as exc:
            raise Failure(f"the body is not JSON: {exc}", 2) from None
        content = text.encode()
    try:
        base = base_url(settings, url)
        response = signed_request(settings, method, path, base, content, v1=v1, timeout=timeout)
    except NoFacade as exc:
        raise Failure(str(exc)) from None
    except AuthConfigError as exc:
        raise Failure(exc.message) from None
    except httpx.HTTPError as exc:
        raise Failure(f"{base}: {exc}") from None
    sys.stdout.write(response.text if response.text.endswith("\n") else response.text + "\n")
    if response.is_error:
        raise Failure(f"HTTP {response.status_code} from {base}{path}")


def bench(args: Annotated[list[str] | None, typer.Argument(help="Options for scripts/bench.py.")] = None) -> None:
    """Run the side-by-side benchmark, scripts/bench.py. Source checkout only: the script, its peers and its
    corpus are not installed with the package."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "scripts" / "bench.py").exists():
        console.print("[red]scripts/bench.py is not here: the benchmark runs from a source checkout")
        raise typer.Exit(2)
    # A module of the checkout's `scripts` package, run from the caller's directory (relative --json paths).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    raise typer.Exit(subprocess.call([sys.executable, "-m", "scripts.bench", *(args or [])], env=env))
