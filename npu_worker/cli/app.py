"""The typer app every command module registers on, and `main`, which turns expected failures into one
`error:` line and an exit code (2 for bad input, 1 otherwise), as the README promises."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Inference worker pool on OpenVINO and Redis.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console(stderr=True)


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

    from .checks import redis_shown

    try:
        app()
    except Failure as exc:
        fail(exc.message, exc.code)
    except redis.RedisError as exc:
        fail(f"cannot reach Redis at {redis_shown()}: {exc} (set REDIS_URL, or start `npu-worker up`)", 1)
    except NPUError as exc:
        fail(exc.message, 2)


def fail(message: str, code: int) -> None:
    console.print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


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
