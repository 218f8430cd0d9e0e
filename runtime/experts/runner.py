"""Run the package's experts on images: each expert an independent step, so they may run concurrently."""

from __future__ import annotations

import time
from concurrent.futures import Executor
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Callable

import numpy as np

from moai_edge.engines.manifest import Manifest
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.registry import open_engine

from .detector import DetectorConfig, post_process_detections, preprocess_detector
from .ocr import OcrConfig, OcrLine, OcrReader
from .panoptic import PanopticConfig, PanopticResult, post_process_panoptic, preprocess_panoptic
from .schedule import StageGate
from .scene_graph import (LOGITS, MASK_INPUTS, SceneGraphConfig, SceneGraphResult, mask_size, preprocess_scene_graph,
                          relations_of, scene_graph_of, top_triplets)
from .verbalize import Detection, clean_class, segment_boxes


@dataclass
class ExpertResults:
    panoptic: PanopticResult
    labels: list[str]
    detections: list[Detection] = field(default_factory=list)
    detector_labels: list[str] = field(default_factory=list)
    scene_graph: SceneGraphResult | None = None
    ocr: list[OcrLine] = field(default_factory=list)  # the lines MoAI keeps (confidence >= 0.85)

    def to_json(self) -> dict:
        p = self.panoptic
        boxes = segment_boxes(p, 1 / p.segmentation.shape[0])
        return {
            "segments": [{"id": s.id, "label_id": s.label_id, "label": clean_class(self.labels[s.label_id]),
                          "score": s.score, "box": [round(float(v), 4) for v in b]} for s, b in zip(p.segments, boxes)],
            "detections": [{"label_id": d.label_id, "label": self.detector_labels[d.label_id], "score": round(d.score, 6),
                            "box": [round(float(v), 2) for v in d.box]} for d in self.detections],
            "relations": [{"subject": s, "predicate": p, "object": o}
                          for s, p, o in (self.scene_graph.relations if self.scene_graph else [])],
            "ocr": [{"text": line.text, "confidence": round(line.confidence, 4), "box": line.box} for line in self.ocr],
        }


def config_from(cls, section: dict):
    """A config dataclass from the manifest's section for it (which also names files and sources)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in section.items() if k in names})


class Experts:
    """The package's experts, each on its own engines. `threads` / `memory_arena` override the runtime options for
    the expert engines: concurrently run experts get one thread each, and their large activations go back to the
    system after each run instead of staying pooled."""

    def __init__(self, manifest: Manifest, options: RuntimeOptions, *, threads: int | None = None,
                 memory_arena: bool | None = False):
        self.manifest = manifest
        self.open = partial(open_engine, manifest, options=options, threads=threads, memory_arena=memory_arena)
        section = manifest.experts["panoptic"]
        self.panoptic_cfg = config_from(PanopticConfig, section)
        self.panoptic = self.open(section["component"])
        self.detector = self.detector_cfg = None
        if "detector" in manifest.experts:
            d = manifest.experts["detector"]
            self.detector_cfg = config_from(DetectorConfig, d)
            self.detector = self.open(d["component"])
            self.query_embeds = manifest.load_array(d["queries"])
        self.scene_graph = self.scene_graph_masks = self.scene_graph_cfg = None
        if "scene_graph" in manifest.experts:
            g = manifest.experts["scene_graph"]
            self.scene_graph_cfg = config_from(SceneGraphConfig, g)
            self.scene_graph, self.scene_graph_masks = self.open(g["component"]), self.open(g["masks"])
        self.ocr = None
        if "ocr" in manifest.experts:
            o = manifest.experts["ocr"]
            self.ocr = OcrReader.from_engines(*(self.open(o[k]) for k in ("det", "cls", "rec")),
                                              cfg=config_from(OcrConfig, o))

    def close(self) -> None:
        for part in (self.panoptic, self.detector, self.scene_graph, self.scene_graph_masks, self.ocr):
            if part is not None:
                part.close()

    def steps(self) -> dict[str, Callable[[list[np.ndarray]], list]]:
        """Each packaged expert as a function of the images; they are independent and may run concurrently."""
        steps = {"panoptic": self.run_panoptic}
        if self.detector is not None:
            steps["detector"] = self.run_detector
        if self.scene_graph is not None:
            steps["scene_graph"] = self.run_scene_graph
        if self.ocr is not None:
            steps["ocr"] = self.run_ocr
        return steps

    def run(self, images: list[np.ndarray], *, pool: Executor | None = None, timings: dict[str, float] | None = None,
            max_batch: int | None = None, gate: StageGate | None = None) -> list[ExpertResults]:
        """images: HxWx3 uint8 RGB arrays (see runtime.images.load_image). With a pool, the experts run concurrently,
        as many at once as `gate` admits. Each expert takes at most `max_batch` images per graph run (None: all)."""
        def in_chunks(fn):
            step = max_batch or len(images)
            return [r for i in range(0, len(images), step) for r in fn(images[i:i + step])]

        def timed(name, fn):
            with gate.stage(name) if gate is not None else nullcontext():
                t0 = time.perf_counter()
                out = in_chunks(fn)
            if timings is not None:
                timings[f"expert_{name}"] = (time.perf_counter() - t0) * 1e3
            return out

        steps = self.steps()
        if pool is None:
            outs = {name: timed(name, fn) for name, fn in steps.items()}
        else:
            futures = {name: pool.submit(timed, name, fn) for name, fn in steps.items()}
            outs = {name: f.result() for name, f in futures.items()}
        results = [ExpertResults(p, self.panoptic_cfg.labels) for p in outs["panoptic"]]
        for i, r in enumerate(results):
            if "detector" in outs:
                r.detections, r.detector_labels = outs["detector"][i], self.detector_cfg.labels
            if "scene_graph" in outs:
                r.scene_graph = outs["scene_graph"][i]
            if "ocr" in outs:
                r.ocr = outs["ocr"][i]
        return results

    def run_panoptic(self, images: list[np.ndarray]) -> list[PanopticResult]:
        pixels = np.stack([preprocess_panoptic(img, self.panoptic_cfg) for img in images])
        out = self.panoptic.run({"pixel_values": pixels})
        return [post_process_panoptic(c, m, self.panoptic_cfg)
                for c, m in zip(out["class_queries_logits"], out["masks_queries_logits"])]

    def run_detector(self, images: list[np.ndarray]) -> list[list[Detection]]:
        pixels = np.stack([preprocess_detector(img, self.detector_cfg) for img in images])
        out = self.detector.run({"pixel_values": pixels, "query_embeds": self.query_embeds})
        return [post_process_detections(logit, query, boxes, self.detector_cfg)
                for logit, query, boxes in zip(out["best_logit"], out["best_query"], out["boxes"])]

    def run_ocr(self, images: list[np.ndarray]) -> list[list[OcrLine]]:
        return [self.ocr.keep_confident(self.ocr.read(img)) for img in images]

    def run_scene_graph(self, images: list[np.ndarray]) -> list[SceneGraphResult]:
        """Images are batched by padded shape: the reference never masks padding (see export.experts.scene_graph).
        The mask heads then run per image, on the queries its post-processing reads."""
        cfg = self.scene_graph_cfg
        pixels = [preprocess_scene_graph(img, cfg) for img in images]
        results: list[SceneGraphResult | None] = [None] * len(images)
        for shape in dict.fromkeys(p.shape for p in pixels):
            idx = [i for i, p in enumerate(pixels) if p.shape == shape]
            out = self.scene_graph.run({"pixel_values": np.stack([pixels[i] for i in idx])})
            for row, i in enumerate(idx):
                triplets = top_triplets(*(out[k][row] for k in LOGITS), cfg)
                masks = self.masks_of(out, row, triplets.mask_queries())
                graph = scene_graph_of(triplets, *masks, mask_size(*images[i].shape[:2], cfg), cfg)
                graph.relations = relations_of(graph, cfg)
                results[i] = graph
        return results

    def masks_of(self, trunk: dict[str, np.ndarray], row: int, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The subject and object mask logits (len(queries), H/4, W/4) of one image's queries."""
        if len(queries) == 0:
            empty = np.zeros((0, *trunk["features_s4"].shape[-2:]), np.float32)
            return empty, empty
        feeds = {k: trunk[k][row:row + 1] for k in MASK_INPUTS}
        for k in ("sub_attention", "obj_attention"):
            feeds[k] = np.ascontiguousarray(feeds[k][:, queries])
        out = self.scene_graph_masks.run(feeds)
        return out["sub_masks"][0], out["obj_masks"][0]
