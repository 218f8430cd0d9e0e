"""`moai-edge export`: a checkpoint (real, or a tiny one built on the spot) -> an engine package."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_checkpoint
from .package import build_package
from .tiny import build_tiny_checkpoint


def export_checkpoint(checkpoint: str | Path, out_dir: Path, *, family: str | None = None, validate: bool = True):
    model, root = load_checkpoint(checkpoint, family=family)
    tok = root / "tokenizer.model"
    if not tok.is_file():
        from moai_edge.engines.errors import CheckpointError

        raise CheckpointError(f"no tokenizer.model in checkpoint folder '{root}'")
    source = {"checkpoint": str(Path(root).resolve()), "checkpoint_arg": str(checkpoint)}
    return build_package(model, tokenizer_file=tok, out_dir=out_dir, source=source, validate=validate)


def export_tiny(family: str, out_dir: Path, *, preset: str = "tiny", seed: int = 0, validate: bool = True):
    """Build a seeded tiny checkpoint in `out_dir/checkpoint` and export it through the real loading code."""
    out_dir = Path(out_dir)
    ckpt = build_tiny_checkpoint(family, out_dir / "checkpoint", preset=preset, seed=seed)
    manifest = export_checkpoint(ckpt, out_dir, family=family, validate=validate)
    manifest.source.update({"preset": preset, "seed": seed})
    manifest.save(out_dir)
    return manifest
