"""The experts as the reference runs them: PyTorch models and the reference's own post-processing.

- panoptic: transformers' Mask2Former with its image processor (384) and `post_process_panoptic_segmentation`;
- detector: the full OWLv2 forward with the text queries encoded again for every image, as MoAI does,
  `post_process_object_detection(threshold=0.1)`, then MoAI's own 0.5 cut;
- scene graph: PSGTR in PyTorch and OpenPSG's post-processing (bench.reference.scene_graph);
  mmdet's resize/pad is not installable here, so the pixels come from the runtime's transcription of it,
  which tests/runtime/experts/test_scene_graph.py checks;
- OCR: the package's PP-OCR graphs through the runtime's reader (PaddleOCR is not installable here;
  tests/runtime/experts/test_ocr.py compares the reader with rapidocr).

The surface is the runtime's `Experts`: `run(images) -> list[ExpertResults]`, the runtime's own result type, so
one verbalizer (golden-tested on its own) turns both into text. The images go one after another, and the experts
of an image one after another, as the reference runs them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from moai_edge.bench.reference.scene_graph import reference_scene_graph
from moai_edge.engines.manifest import Manifest
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.registry import open_engine
from moai_edge.export.experts import scene_graph as psgtr
from moai_edge.export.experts.detector import load_detector, query_tokens
from moai_edge.export.experts.panoptic import load_panoptic
from moai_edge.runtime.experts.ocr import OcrConfig, OcrLine, OcrReader
from moai_edge.runtime.experts.panoptic import PanopticResult, Segment
from moai_edge.runtime.experts.runner import ExpertResults, config_from
from moai_edge.runtime.experts.scene_graph import (HEADS, SceneGraphConfig, SceneGraphResult, mask_size,
                                                   preprocess_scene_graph, relations_of)
from moai_edge.runtime.experts.verbalize import Detection
from moai_edge.runtime.timer import Timer


class ReferenceExperts:
    """The package's experts rebuilt from the sources its manifest records. `options` only concern the OCR graphs,
    the one expert that runs on an engine here."""

    def __init__(self, manifest: Manifest, options: RuntimeOptions | None = None):
        import transformers

        self.manifest = manifest
        ex = manifest.experts
        self.panoptic_section = ex["panoptic"]
        self.panoptic = load_panoptic(self.panoptic_section["source"]).eval()
        size = self.panoptic_section["image_size"]
        self.panoptic_processor = transformers.Mask2FormerImageProcessor(size={"height": size, "width": size})
        self.detector = None
        if "detector" in ex:
            self.detector_section = ex["detector"]
            self.detector = load_detector(self.detector_section["source"]).eval()
            self.query_ids, self.query_mask = query_tokens(self.detector, self.detector_section["labels"],
                                                           self.detector_section["source"])
            self.detector_processor = transformers.Owlv2ImageProcessor()
        self.scene_graph = None
        if "scene_graph" in ex:
            self.scene_graph_cfg = config_from(SceneGraphConfig, ex["scene_graph"])
            self.scene_graph = psgtr.load_scene_graph(ex["scene_graph"]["source"]).eval()
        self.ocr = None
        if "ocr" in ex:
            o = ex["ocr"]
            engines = (open_engine(manifest, o[k], options or RuntimeOptions()) for k in ("det", "cls", "rec"))
            self.ocr = OcrReader.from_engines(*engines, cfg=config_from(OcrConfig, o))

    def close(self) -> None:
        if self.ocr is not None:
            self.ocr.close()

    def steps(self) -> dict[str, Callable[[np.ndarray], object]]:
        """Each packaged expert as a function of one image, in the runtime's order."""
        steps = {"panoptic": self.run_panoptic}
        if self.detector is not None:
            steps["detector"] = self.run_detector
        if self.scene_graph is not None:
            steps["scene_graph"] = self.run_scene_graph
        if self.ocr is not None:
            steps["ocr"] = self.run_ocr
        return steps

    @torch.no_grad()
    def run(self, images: list[np.ndarray], *, timer: Timer | None = None) -> list[ExpertResults]:
        """images: HxWx3 uint8 RGB images as the experts see them (490x490 in both reference models). `timer` gets
        `expert_<name>` summed over the images, the keys the runtime's Experts.run reports."""
        timer = timer or Timer()
        results = []
        for image in images:
            outs = {}
            for name, step in self.steps().items():
                with timer(f"expert_{name}"):
                    outs[name] = step(image)
            result = ExpertResults(outs["panoptic"], self.panoptic_section["labels"])
            if "detector" in outs:
                result.detections, result.detector_labels = outs["detector"], self.detector_section["labels"]
            result.scene_graph = outs.get("scene_graph")
            result.ocr = outs.get("ocr", [])
            results.append(result)
        return results

    def run_panoptic(self, image: np.ndarray) -> PanopticResult:
        s = self.panoptic_section
        out = self.panoptic(**self.panoptic_processor(images=[image], return_tensors="pt"))
        t = s["target_size"]
        ref = self.panoptic_processor.post_process_panoptic_segmentation(
            out, threshold=s["threshold"], mask_threshold=s["mask_threshold"],
            overlap_mask_area_threshold=s["overlap_mask_area_threshold"], label_ids_to_fuse=set(), target_sizes=[(t, t)])[0]
        segments = [Segment(d["id"], d["label_id"], float(d["score"]), bool(d["was_fused"])) for d in ref["segments_info"]]
        return PanopticResult(ref["segmentation"].numpy().astype(np.int32), segments)

    def run_detector(self, image: np.ndarray) -> list[Detection]:
        s = self.detector_section
        pixels = self.detector_processor(images=[image], return_tensors="pt")["pixel_values"]
        out = self.detector(input_ids=self.query_ids, attention_mask=self.query_mask, pixel_values=pixels)
        t = s["target_size"]
        ref = self.detector_processor.post_process_object_detection(out, threshold=s["threshold"], target_sizes=[(t, t)])[0]
        keep = ref["scores"] >= s["keep_score"]
        return [Detection(box.numpy().astype(np.float32), float(score), int(label))
                for box, score, label in zip(ref["boxes"][keep], ref["scores"][keep], ref["labels"][keep])]

    def run_scene_graph(self, image: np.ndarray) -> SceneGraphResult:
        cfg = self.scene_graph_cfg
        out = self.scene_graph(torch.from_numpy(preprocess_scene_graph(image, cfg))[None])
        heads = dict(zip(psgtr.OUTPUTS, (t[0] for t in out)))
        labels, dists, pairs = reference_scene_graph(*(heads[k] for k in HEADS), mask_size(*image.shape[:2], cfg),
                                                     num_relations=len(cfg.predicates), max_per_img=cfg.max_per_img)
        graph = SceneGraphResult(labels=[int(v) for v in labels], rel_dists=dists, rel_pairs=pairs)
        graph.relations = relations_of(graph, cfg)
        return graph

    def run_ocr(self, image: np.ndarray) -> list[OcrLine]:
        return self.ocr.keep_confident(self.ocr.read(image))
