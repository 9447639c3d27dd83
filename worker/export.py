"""`npu-worker export`: a Hugging Face model (hub id or local directory) to an OpenVINO model directory,
registered so workers serve it.

Wraps optimum-intel's exporter (the optional `export` extra: torch, optimum-intel, nncf; about 1.6 GB
installed), which also converts the tokenizer. The registry entry goes to `NPU_MODELS_FILE`, or to
`$NPU_STATE_DIR/models.toml`, which the registry reads by default.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from dispatcher.models import ModelSpec, Registry
from dispatcher.settings import WorkerSettings

from .precision import Recipe, detected, npu_recipe, read_config

log = logging.getLogger(__name__)
Task = Literal["feature-extraction", "text-generation"]
Target = Literal["any", "npu"]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def describe(name: str, task: Task, model_dir: Path, source_dir: Path | None) -> dict[str, object]:
    """Registry fields, read from the exported config and (for sentence-transformers) the source's modules."""
    config = _read_json(model_dir / "config.json")
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json")
    max_tokens = int(min(tokenizer_config.get("model_max_length") or 512, config.get("max_position_embeddings")
                         or 512, 1 << 20))
    if task == "text-generation":
        return {"task": "generation", "path": str(model_dir), "max_input_tokens": max_tokens}
    pooling, normalize = "mean", True
    if source_dir is not None:
        st_pooling = _read_json(source_dir / "1_Pooling" / "config.json")
        if st_pooling.get("pooling_mode_cls_token"):
            pooling = "cls"
        modules = _read_json(source_dir / "modules.json") if (source_dir / "modules.json").exists() else None
        if isinstance(modules, list):
            normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        max_tokens = int(_read_json(source_dir / "sentence_bert_config.json").get("max_seq_length") or max_tokens)
    return {"task": "embedding", "path": str(model_dir), "dim": int(config["hidden_size"]), "pooling": pooling,
            "normalize": normalize, "max_input_tokens": max_tokens}


def registry_file(settings: WorkerSettings) -> Path:
    return settings.models_file or settings.state_dir / "models.toml"


def register(settings: WorkerSettings, name: str, fields: dict[str, object]) -> Path:
    """Add or replace one `[models.<name>]` table. TOML written by hand: flat scalars only, JSON-quoted
    strings are valid TOML basic strings."""
    path = registry_file(settings)
    lines = path.read_text().splitlines() if path.exists() else []
    header = f"[models.{name}]"
    if header in lines:  # drop the old table up to the next header
        start = lines.index(header)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
        lines = lines[:start] + lines[end:]
    while lines and not lines[-1].strip():
        lines.pop()
    body = [header] + [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines + ([""] if lines else []) + body) + "\n")
    return path


def compress(xml: Path, recipe: Recipe) -> None:
    """Apply `recipe` to an exported model in place, with NNCF (what optimum-cli's `--weight-format int4 --sym
    --ratio --group-size` runs; optimum's `main_export` alone does not compress)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(xml)
    if recipe.bits == 4:
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM if recipe.sym
                                      else nncf.CompressWeightsMode.INT4_ASYM, ratio=recipe.ratio,
                                      group_size=recipe.group_size)
    staged = xml.with_name("compressed.xml")
    ov.save_model(model, staged, compress_to_fp16=recipe.dtype == "fp16")
    del model
    staged.rename(xml)
    staged.with_suffix(".bin").rename(xml.with_suffix(".bin"))


def export(settings: WorkerSettings, source: str, task: Task, name: str, force: bool = False,
           target: Target = "any") -> ModelSpec:
    """`target` "npu": the weights GenAI's NPU guide asks for (`worker.precision.npu_recipe`); "any":
    optimum-intel's defaults. The registry entry records the precision either way."""
    try:
        from optimum.exporters.openvino import main_export
    except ImportError as exc:
        raise RuntimeError("export needs the optional extra: pip install 'npu-worker[export]' "
                           "(torch, optimum-intel; about 1.6 GB)") from exc
    out = settings.models_dir / name
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    source_dir = Path(source) if Path(source).is_dir() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{name}-") as tmp:
        work = Path(tmp) / "model"
        recipe = npu_recipe(task, read_config(source)) if target == "npu" else None
        main_export(model_name_or_path=source, output=work,
                    task="text-generation-with-past" if task == "text-generation" else task, convert_tokenizer=True)
        if recipe is not None:
            compress(work / "openvino_model.xml", recipe)
        if not (work / "openvino_tokenizer.xml").exists():
            raise RuntimeError("the export produced no OpenVINO tokenizer; is openvino-tokenizers installed?")
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    precision = recipe.precision if recipe is not None else detected(out)
    register(settings, name, describe(name, task, out, source_dir) | {"precision": precision})
    spec = Registry.load(settings).get(name)
    log.info("exported %s to %s and registered it in %s", source, out, registry_file(settings))
    return spec
