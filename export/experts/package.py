"""Export the family's experts into an engine package: graphs validated like the backbone's, and their
settings (thresholds, sizes, label lists) in the manifest's `experts` section.

Each expert is registered with `@expert(name, build_tiny=..., labels=...)`: how it is exported, how its
tiny seeded checkpoint is built, and which label lists (--labels) it takes. A family
(export.families) names the experts it packages.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from moai_edge.engines.errors import InputError
from moai_edge.engines.manifest import Component, sha256_of
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.protocol import TensorSpec
from moai_edge.engines.registry import open_file

from ..config import CLIP_MEAN, CLIP_STD, ModelConfig
from ..families import family_of
from ..onnx_export import Tolerance, export_graph, validate_graph
from ..package import io_specs
from . import detector as owl
from . import scene_graph as psgtr
from .labels import COCO_PANOPTIC_CLASSES, PSG_PREDICATES
from .ocr_models import export_ocr
from .panoptic import PANOPTIC, build_tiny_panoptic, input_size, labels_of, load_panoptic, post_process_settings

# Mask2Former's decoder thresholds its intermediate masks at 0.5 for masked attention: fp32 noise flips the
# pixels that sit on the threshold and moves a query's logits by up to ~2e-3 of their range (seen on random
# inputs), where the rest of the graph agrees to ~1e-6. A flip can also change a query's attention enough to move
# its logits by any amount: on the `small` CoLLaVO's Swin-B at batch 4, 7 of 800 queries were off (all in one
# image; up to 2.6% of the range), the other 793 within 1e-6. So 97% of the queries must agree: a graph that mixed
# the images of a batch would put at least a quarter of a batch of 4 off.
TOLERANCES = {"panoptic": Tolerance(atol=1e-4, rtol=1e-2, of_max=True, query_agreement=0.97),
              # the best query is an argmax: near-tied logits may pick another query on a few boxes. With full-size
              # random weights (the `small` preset) PyTorch's own fp32 boxes are 1.9e-3 off a float64 run, where
              # onnxruntime's are 0.9e-3 off, so the two fp32 runs may differ by ~3e-3 of the image.
              "detector": Tolerance(atol=1e-4, rtol=5e-3, of_max=True, index_agreement=0.99),
              "scene_graph": Tolerance(atol=1e-4, rtol=1e-3, of_max=True),
              "scene_graph_masks": Tolerance(atol=1e-4, rtol=1e-3, of_max=True)}


def export_onnx_expert(target, model, out_dir: Path, work: Path) -> tuple[Component, dict[str, float]]:
    """Export (with its structural checks), validate on onnxruntime (batches 1 and 4), copy into the package."""
    import onnx

    path = work / f"{target.name}.onnx"
    export_graph(target, model, path)
    with open_file(path, RuntimeOptions(), name=target.name) as engine:
        diffs = validate_graph(target, model, engine.run, tol=TOLERANCES[target.name], batches=(1, 4))
    dest = out_dir / path.name
    shutil.copyfile(path, dest)
    inputs, outputs = io_specs(onnx.load(str(path), load_external_data=False))
    return Component(file=dest.name, sha256=sha256_of(dest), inputs=inputs, outputs=outputs), diffs


@dataclass(frozen=True)
class ExpertSources:
    """Where each expert's checkpoint comes from (a folder or hub id), and the label lists that replace its defaults."""

    panoptic: str | Path | None = None
    detector: str | Path | None = None
    queries: list[str] | None = None
    scene_graph: str | Path | None = None
    predicates: list[str] | None = None


Exported = tuple[dict, dict, dict]  # (components, experts manifest section, validation max diffs)


@dataclass(frozen=True)
class ExpertKind:
    export: Callable[[ModelConfig, Path, Path, ExpertSources], Exported]
    build_tiny: Callable[..., dict]  # (out_dir, *, family, preset, seed) -> ExpertSources fields
    labels: tuple[str, ...] = ()  # the ExpertSources label lists it takes


EXPERTS: dict[str, ExpertKind] = {}


def expert(name: str, *, build_tiny: Callable[..., dict], labels: tuple[str, ...] = ()):
    def register(export):
        EXPERTS[name] = ExpertKind(export, build_tiny, labels)
        return export
    return register


def export_experts(cfg: ModelConfig, out_dir: Path, work: Path, *, panoptic: str | Path,
                   detector: str | Path | None = None, queries: list[str] | None = None,
                   scene_graph: str | Path | None = None, predicates: list[str] | None = None) -> Exported:
    """Returns (components, experts manifest section, validation max diffs) of the experts the family packages."""
    sources = ExpertSources(panoptic=panoptic, detector=detector, queries=queries, scene_graph=scene_graph,
                            predicates=predicates)
    components, section, diffs = {}, {}, {}
    for name in family_of(cfg.family).experts:
        for part, more in zip((components, section, diffs), EXPERTS[name].export(cfg, out_dir, work, sources)):
            part.update(more)
    return components, section, diffs


def build_tiny_panoptic_sources(out_dir: Path, *, family: str, preset: str, seed: int) -> dict:
    return {"panoptic": build_tiny_panoptic(out_dir / "panoptic", family=family, preset=preset,
                                            labels=COCO_PANOPTIC_CLASSES, seed=seed)}


@expert("panoptic", build_tiny=build_tiny_panoptic_sources)
def export_panoptic(cfg: ModelConfig, out_dir: Path, work: Path, sources: ExpertSources) -> Exported:
    model = load_panoptic(sources.panoptic)
    component, diffs = export_onnx_expert(PANOPTIC, model, out_dir, work)
    section = {
        "component": "panoptic", "source": str(sources.panoptic), "image_size": input_size(model),
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], **post_process_settings(model),
        "target_size": family_of(cfg.family).panoptic_target_size(cfg),
        "labels": labels_of(model),
    }
    return {"panoptic": component}, {"panoptic": section}, {"panoptic": max(diffs.values())}


def build_tiny_detector_sources(out_dir: Path, *, family: str, preset: str, seed: int) -> dict:
    """Tiny checkpoints query the COCO names; real exports take --labels / --moai-repo."""
    return {"detector": owl.build_tiny_detector(out_dir / "detector", preset=preset, seed=seed),
            "queries": list(COCO_PANOPTIC_CLASSES)}


@expert("detector", build_tiny=build_tiny_detector_sources, labels=("queries",))
def export_detector(cfg: ModelConfig, out_dir: Path, work: Path, sources: ExpertSources) -> Exported:
    """The image graph, and the query embeddings computed once here (the reference recomputes them per image)."""
    source, queries = sources.detector, sources.queries
    if not queries:
        raise InputError("the detector needs its text queries: --labels FILE or --moai-repo DIR")
    model = owl.load_detector(source)
    component, diffs = export_onnx_expert(owl.DETECTOR, model, out_dir, work)
    embeds = owl.query_embeddings(model, queries, tokenizer_dir=source)
    np.save(out_dir / "detector_queries.npy", embeds)
    queries_component = Component(file="detector_queries.npy", sha256=sha256_of(out_dir / "detector_queries.npy"),
                                  kind="npy", outputs=[TensorSpec("query_embeds", "float32", tuple(embeds.shape))])
    section = {
        "component": "detector", "queries": "detector_queries", "source": str(source), "image_size": owl.IMAGE_SIZE,
        "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "threshold": 0.1, "keep_score": 0.5, "target_size": 490,
        "labels": list(queries),
    }
    return ({"detector": component, "detector_queries": queries_component}, {"detector": section},
            {"detector": max(diffs.values())})


def build_tiny_scene_graph_sources(out_dir: Path, *, family: str, preset: str, seed: int) -> dict:
    return {"scene_graph": psgtr.build_tiny_scene_graph(out_dir / "scene_graph", preset=preset, seed=seed)}


@expert("scene_graph", build_tiny=build_tiny_scene_graph_sources, labels=("predicates",))
def export_scene_graph(cfg: ModelConfig, out_dir: Path, work: Path, sources: ExpertSources) -> Exported:
    source = sources.scene_graph
    if source is None:
        raise InputError(f"MoAI's scene-graph expert needs OpenPSG's checkpoint: "
                         f"--scene-graph PATH/{psgtr.REFERENCE_FILE}")
    model = psgtr.load_scene_graph(source)
    predicates = list(sources.predicates or PSG_PREDICATES)
    if len(predicates) != model.cfg.num_relations:
        raise InputError(f"{source}: predicts {model.cfg.num_relations} predicates, "
                         f"the predicate list has {len(predicates)}")
    components, diffs = {}, {}
    for target in (psgtr.SCENE_GRAPH, psgtr.SCENE_GRAPH_MASKS):
        components[target.name], graph_diffs = export_onnx_expert(target, model, out_dir, work)
        diffs[target.name] = max(graph_diffs.values())
    section = {"component": "scene_graph", "masks": "scene_graph_masks", "source": str(source),
               "scale": list(model.test_scale), "keep_score": 0.8, "labels": list(COCO_PANOPTIC_CLASSES),
               "predicates": predicates}  # keep_score: MoAI's make_sgg_prompt keeps relations scoring >= 0.8
    return components, {"scene_graph": section}, diffs


def no_tiny_ocr(out_dir: Path, *, family: str, preset: str, seed: int) -> dict:
    """OCR has no tiny checkpoint: packages always carry the real PP-OCR models from the rapidocr wheel."""
    return {}


@expert("ocr", build_tiny=no_tiny_ocr)
def export_ocr_expert(cfg: ModelConfig, out_dir: Path, work: Path, sources: ExpertSources) -> Exported:
    components, section = export_ocr(out_dir)
    return components, section, {}


def build_tiny_experts(family: str, out_dir: Path, *, preset: str, seed: int) -> dict:
    """Seeded checkpoints of the family's experts in their published layouts, next to the tiny VLM checkpoint:
    the ExpertSources fields that name them."""
    sources: dict = {}
    for name in family_of(family).experts:
        sources.update(EXPERTS[name].build_tiny(out_dir, family=family, preset=preset, seed=seed))
    return sources


def label_sources(family: str, labels: dict[str, list[str]]) -> dict[str, list[str]]:
    """The label lists (queries, predicates) that the family's experts take; the others do not apply to it."""
    taken = {key for name in family_of(family).experts for key in EXPERTS[name].labels}
    return {key: value for key, value in labels.items() if key in taken}
