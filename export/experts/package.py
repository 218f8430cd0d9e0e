"""Export the family's experts into an engine package: graphs validated like the backbone's, and their
settings (thresholds, sizes, label lists) in the manifest's `experts` section."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from moai_edge.engines.errors import InputError
from moai_edge.engines.manifest import Component, sha256_of
from moai_edge.engines.ort_engine import OrtEngine, OrtOptions
from moai_edge.engines.protocol import TensorSpec

from ..config import CLIP_MEAN, CLIP_STD, ModelConfig
from ..onnx_export import Tolerance, export_graph, validate_graph
from ..package import io_specs
from . import detector as owl
from . import scene_graph as psgtr
from .labels import COCO_PANOPTIC_CLASSES, PSG_PREDICATES
from .ocr_models import export_ocr
from .panoptic import IMAGE_SIZE, PANOPTIC, build_tiny_panoptic, labels_of, load_panoptic

# Mask2Former's decoder thresholds its intermediate masks at 0.5 for masked attention: fp32 noise flips the
# pixels that sit on the threshold and moves a query's logits by up to ~2e-3 of their range (seen on random
# inputs), where the rest of the graph agrees to ~1e-6.
TOLERANCES = {"panoptic": Tolerance(atol=1e-4, rtol=1e-2, of_max=True),
              # the best query is an argmax: near-tied logits may pick another query on a few boxes. With full-size
              # random weights (the `small` preset) PyTorch's own fp32 boxes are 1.9e-3 off a float64 run, where
              # onnxruntime's are 0.9e-3 off, so the two fp32 runs may differ by ~3e-3 of the image.
              "detector": Tolerance(atol=1e-4, rtol=5e-3, of_max=True, index_agreement=0.99),
              "scene_graph": Tolerance(atol=1e-4, rtol=1e-3, of_max=True)}


def export_onnx_expert(target, model, out_dir: Path, work: Path) -> tuple[Component, dict[str, float]]:
    """Export (with its structural checks), validate on onnxruntime (batches 1 and 4), copy into the package."""
    import onnx

    path = work / f"{target.name}.onnx"
    export_graph(target, model, path)
    with OrtEngine.load(path, options=OrtOptions(), name=target.name) as engine:
        diffs = validate_graph(target, model, engine.run, tol=TOLERANCES[target.name], batches=(1, 4))
    dest = out_dir / path.name
    shutil.copyfile(path, dest)
    inputs, outputs = io_specs(onnx.load(str(path), load_external_data=False))
    return Component(file=dest.name, sha256=sha256_of(dest), inputs=inputs, outputs=outputs), diffs


def export_experts(cfg: ModelConfig, out_dir: Path, work: Path, *, panoptic: str | Path,
                   detector: str | Path | None = None, queries: list[str] | None = None,
                   scene_graph: str | Path | None = None, predicates: list[str] | None = None) -> tuple[dict, dict, dict]:
    """Returns (components, experts manifest section, validation max diffs). MoAI also gets the detector,
    the scene graph and OCR."""
    components, section, diffs = export_panoptic(cfg, out_dir, work, panoptic)
    if cfg.family == "moai":
        for new in (export_detector(out_dir, work, detector, queries), export_scene_graph(out_dir, work, scene_graph, predicates)):
            for part, more in zip((components, section, diffs), new):
                part.update(more)
        ocr_components, ocr_section = export_ocr(out_dir)
        components.update(ocr_components)
        section.update(ocr_section)
    return components, section, diffs


def export_panoptic(cfg: ModelConfig, out_dir: Path, work: Path, source: str | Path) -> tuple[dict, dict, dict]:
    model = load_panoptic(source)
    component, diffs = export_onnx_expert(PANOPTIC, model, out_dir, work)
    # segments are mapped onto CoLLaVO's vision grid (35 for the real model) and MoAI's image (490)
    target = cfg.vision.grid if cfg.family == "collavo" else cfg.vision.image_size
    section = {
        "component": "panoptic", "source": str(source), "image_size": IMAGE_SIZE,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "threshold": 0.5, "mask_threshold": 0.95,
        "overlap_mask_area_threshold": 0.8, "target_size": target, "labels": labels_of(model),
    }
    return {"panoptic": component}, {"panoptic": section}, {"panoptic": max(diffs.values())}


def export_detector(out_dir: Path, work: Path, source: str | Path, queries: list[str] | None) -> tuple[dict, dict, dict]:
    """The image graph, and the query embeddings computed once here (the reference recomputes them per image)."""
    if not queries:
        raise InputError("the detector needs its text queries: --labels FILE or --moai-repo DIR")
    model = owl.load_detector(source)
    component, diffs = export_onnx_expert(owl.DETECTOR, model, out_dir, work)
    embeds = owl.query_embeddings(model, queries, tokenizer_dir=source)
    np.save(out_dir / "detector_queries.npy", embeds)
    queries_component = Component(file="detector_queries.npy", sha256=sha256_of(out_dir / "detector_queries.npy"), kind="npy",
                                  outputs=[TensorSpec("query_embeds", "float32", tuple(embeds.shape))])
    section = {
        "component": "detector", "queries": "detector_queries", "source": str(source), "image_size": owl.IMAGE_SIZE,
        "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "threshold": 0.1, "keep_score": 0.5, "target_size": 490, "labels": list(queries),
    }
    return ({"detector": component, "detector_queries": queries_component}, {"detector": section},
            {"detector": max(diffs.values())})


def export_scene_graph(out_dir: Path, work: Path, source: str | Path | None,
                       predicates: list[str] | None) -> tuple[dict, dict, dict]:
    if source is None:
        raise InputError(f"MoAI's scene-graph expert needs OpenPSG's checkpoint: --scene-graph PATH/{psgtr.REFERENCE_FILE}")
    model = psgtr.load_scene_graph(source)
    component, diffs = export_onnx_expert(psgtr.SCENE_GRAPH, model, out_dir, work)
    predicates = list(predicates or PSG_PREDICATES)
    if len(predicates) != model.cfg.num_relations:
        raise InputError(f"{source}: predicts {model.cfg.num_relations} predicates, the predicate list has {len(predicates)}")
    section = {"component": "scene_graph", "source": str(source), "scale": list(model.test_scale),
               "labels": list(COCO_PANOPTIC_CLASSES), "predicates": predicates}
    return {"scene_graph": component}, {"scene_graph": section}, {"scene_graph": max(diffs.values())}


def build_tiny_experts(family: str, out_dir: Path, *, preset: str, seed: int) -> dict:
    """Seeded expert checkpoints in their published layouts, next to the tiny VLM checkpoint."""
    experts = {"panoptic": build_tiny_panoptic(out_dir / "panoptic", family=family, preset=preset,
                                               labels=COCO_PANOPTIC_CLASSES, seed=seed)}
    if family == "moai":  # tiny checkpoints query the COCO names; real exports take --labels / --moai-repo
        experts.update(detector=owl.build_tiny_detector(out_dir / "detector", preset=preset, seed=seed),
                       queries=list(COCO_PANOPTIC_CLASSES),
                       scene_graph=psgtr.build_tiny_scene_graph(out_dir / "scene_graph", preset=preset, seed=seed))
    return experts
