"""`moai-edge export`: a checkpoint (real, or a tiny one built on the spot) -> an engine package."""

from __future__ import annotations

import json
import logging
import tempfile
from functools import partial
from pathlib import Path

from moai_edge.engines.errors import CheckpointError

from .checkpoint import load_checkpoint_with_report
from .experts.package import build_tiny_experts, label_sources
from .families import family_of
from .package import build_package
from .precision import precision_preset
from .reduce_package import reduce_and_check, reduce_package
from .tiny import build_tiny_checkpoint

log = logging.getLogger(__name__)


def reference_experts(family: str) -> dict[str, str]:
    """The expert checkpoints the reference uses, by hub id."""
    return dict(family_of(family).reference_experts)


def parse_vision_config(text: str | dict | None) -> dict | None:
    """--vision-config: a JSON object of vision tower fields no tensor gives, e.g. '{"num_heads": 12}'."""
    if text is None or isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"--vision-config: expected a JSON object such as '{{\"num_heads\": 12}}', "
                              f"found {text!r} ({exc})") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"--vision-config: expected a JSON object such as '{{\"num_heads\": 12}}', "
                              f"found {text!r}")
    return value


def export_checkpoint(checkpoint: str | Path, out_dir: Path, *, family: str | None = None, validate: bool = True,
                      experts: dict[str, str | Path] | None = None, with_experts: bool = True,
                      vision_config: str | dict | None = None, decode_io_dtype: str | None = None,
                      precision: str = "fp32", expert_settings: dict[str, dict] | None = None):
    """`experts` names each expert's checkpoint (folder or hub id); left out, the reference's hub ids.
    `vision_config`: the vision tower's fields no tensor gives (its head count), a dict or its JSON text.
    `decode_io_dtype`: "float16" for a decode graph with float16 inputs and outputs (export.package.build_package);
    None: the preset's (float16 for the GPU presets).
    `precision`: a preset of export.precision; below fp32 the package is exported (and validated) in float32 first,
    then lowered and held to the float32 one (export.reduce_package). `expert_settings`: see
    export.package.build_package."""
    target = precision_preset(precision)
    decode_io_dtype = decode_io_dtype or target.decode_io
    vision_config = parse_vision_config(vision_config)
    model, root, report = load_checkpoint_with_report(checkpoint, family=family, vision_config=vision_config)
    for note in report.notes:
        log.info("%s: %s", checkpoint, note)
    tok = root / "tokenizer.model"
    if not tok.is_file():
        raise CheckpointError(f"no tokenizer.model in checkpoint folder '{root}'")
    if with_experts:
        experts = {**reference_experts(model.cfg.family), **(experts or {})}
    source = {"checkpoint": str(Path(root).resolve()), "checkpoint_arg": str(checkpoint), "load_notes": report.notes,
              **({"vision_config": vision_config} if vision_config else {})}  # reloads (bench) need it again
    build = partial(build_package, model, tokenizer_file=tok, source=source, validate=validate,
                    experts=experts if with_experts else None, decode_io_dtype=decode_io_dtype,
                    expert_settings=expert_settings)
    if target.name == "fp32":
        return build(out_dir=out_dir)
    with tempfile.TemporaryDirectory(prefix="moai-edge-fp32-") as work:
        build(out_dir=Path(work))
        return (reduce_and_check(Path(work), out_dir, target) if validate
                else reduce_package(Path(work), out_dir, target))


def export_tiny(family: str, out_dir: Path, *, preset: str = "tiny", seed: int = 0, validate: bool = True,
                with_experts: bool = True, labels: dict[str, list[str]] | None = None,
                decode_io_dtype: str | None = None, precision: str = "fp32"):
    """Seeded checkpoints (VLM in `out_dir/checkpoint`, experts in `out_dir/experts`) exported through the real
    loading code. `labels` may replace the detector's queries / the scene graph's predicates (e.g. MoAI's 1847
    queries for `small`); the lists the family's experts do not take are left out. `decode_io_dtype`,
    `precision`: see export_checkpoint."""
    precision_preset(precision)  # refuse an unknown preset before building anything
    out_dir = Path(out_dir)
    ckpt = build_tiny_checkpoint(family, out_dir / "checkpoint", preset=preset, seed=seed)
    experts = build_tiny_experts(family, out_dir / "experts", preset=preset, seed=seed) if with_experts else None
    if experts is not None:
        experts.update(label_sources(family, labels or {}))
    manifest = export_checkpoint(ckpt, out_dir, family=family, validate=validate, experts=experts,
                                 with_experts=with_experts, decode_io_dtype=decode_io_dtype, precision=precision)
    manifest.source.update({"preset": preset, "seed": seed})
    manifest.save(out_dir)
    return manifest
