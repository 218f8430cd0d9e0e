"""Export the family's experts into an engine package: graphs validated like the backbone's, and their
settings (thresholds, sizes, label lists) in the manifest's `experts` section."""

from __future__ import annotations

import shutil
from pathlib import Path

from moai_edge.engines.manifest import Component, sha256_of
from moai_edge.engines.ort_engine import OrtEngine, OrtOptions

from ..config import ModelConfig
from ..onnx_export import Tolerance, check_grid_sample_modes, check_symbolic_axes, export_graph, validate_graph
from ..package import io_specs
from .labels import COCO_PANOPTIC_CLASSES
from .panoptic import IMAGE_SIZE, PANOPTIC, build_tiny_panoptic, labels_of, load_panoptic

# Mask2Former's decoder thresholds its intermediate masks at 0.5 for masked attention: fp32 noise flips the
# pixels that sit on the threshold and moves a query's logits by up to ~2e-3 of their range (seen on random
# inputs), where the rest of the graph agrees to ~1e-6.
TOLERANCES = {"panoptic": Tolerance(atol=1e-4, rtol=1e-2, of_max=True)}


def export_onnx_expert(target, model, out_dir: Path, work: Path) -> tuple[Component, dict[str, float]]:
    """Export, check axes and GridSample modes, validate on onnxruntime (batches 1 and 4), copy into the package."""
    import onnx

    path = work / f"{target.name}.onnx"
    export_graph(target, model, path)
    check_symbolic_axes(target, model, path)
    check_grid_sample_modes(path)
    with OrtEngine.load(path, options=OrtOptions(), name=target.name) as engine:
        diffs = validate_graph(target, model, engine.run, tol=TOLERANCES[target.name], batches=(1, 4))
    dest = out_dir / path.name
    shutil.copyfile(path, dest)
    inputs, outputs = io_specs(onnx.load(str(path), load_external_data=False))
    return Component(file=dest.name, sha256=sha256_of(dest), inputs=inputs, outputs=outputs), diffs


def export_experts(cfg: ModelConfig, out_dir: Path, work: Path, *, panoptic: str | Path) -> tuple[dict, dict, dict]:
    """Returns (components, experts manifest section, validation max diffs)."""
    # segments are mapped onto CoLLaVO's vision grid (35 for the real model) and MoAI's image (490)
    target = cfg.vision.grid if cfg.family == "collavo" else cfg.vision.image_size
    model = load_panoptic(panoptic)
    component, diffs = export_onnx_expert(PANOPTIC, model, out_dir, work)
    section = {"panoptic": {
        "component": "panoptic", "source": str(panoptic), "image_size": IMAGE_SIZE,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "threshold": 0.5, "mask_threshold": 0.95,
        "overlap_mask_area_threshold": 0.8, "target_size": target, "labels": labels_of(model),
    }}
    return {"panoptic": component}, section, {"panoptic": max(diffs.values())}


def build_tiny_experts(family: str, out_dir: Path, *, preset: str, seed: int) -> dict[str, Path]:
    """Seeded expert checkpoints in their published layouts, next to the tiny VLM checkpoint."""
    return {"panoptic": build_tiny_panoptic(out_dir / "panoptic", family=family, preset=preset,
                                            labels=COCO_PANOPTIC_CLASSES, seed=seed)}
