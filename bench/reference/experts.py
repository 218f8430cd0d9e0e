"""The experts as the reference runs them: PyTorch models and the reference's own post-processing.

- panoptic: transformers' Mask2Former with its image processor (384) and `post_process_panoptic_segmentation`;
- detector: the full OWLv2 forward with the text queries encoded again for every image, as MoAI does,
  `post_process_object_detection(threshold=0.1)`, then MoAI's own 0.5 cut;
- scene graph: PSGTR in PyTorch and OpenPSG's post-processing (bench.reference.scene_graph);
  mmdet's resize/pad is not installable here, so the pixels come from the runtime's transcription of it,
  which tests/runtime/experts/test_scene_graph.py checks;
- OCR: the package's PP-OCR graphs through the runtime's reader (PaddleOCR is not installable here;
  tests/runtime/experts/test_ocr.py compares the reader with rapidocr).

The surface is the runtime's `Experts`: `run(images) -> list[ExpertResults]`, the runtime's own result type filled by
the runtime experts' own `attach`, so one verbalizer (golden-tested on its own) turns both into text. Each reference
expert mirrors one runtime registry entry. The images go one after another, and the experts of an image one after
another, as the reference runs them.
"""

from __future__ import annotations

import numpy as np
import torch

from moai_edge.bench.reference.scene_graph import reference_scene_graph
from moai_edge.engines.manifest import Manifest
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.registry import open_engine
from moai_edge.export.experts import scene_graph as psgtr
from moai_edge.export.experts.detector import load_detector, query_tokens
from moai_edge.export.experts.panoptic import load_panoptic
from moai_edge.runtime import Timer
from moai_edge.runtime.experts import (EXPERTS, HEADS, Detection, ExpertResults, OcrConfig, OcrLine, OcrReader,
                                       PanopticResult, SceneGraphConfig, SceneGraphResult, Segment, attach_all,
                                       config_from, mask_size, preprocess_scene_graph, relations_of)

REFERENCE_EXPERTS: dict[str, type] = {}


def reference_expert(name: str):
    """Class decorator: the reference's twin of the runtime expert `name`, built from (manifest, section, options)
    and run on one image at a time."""
    def register(cls):
        REFERENCE_EXPERTS[name] = cls
        return cls
    return register


class ReferenceExperts:
    """The package's experts rebuilt from the sources its manifest records, in the runtime registry's order.
    `options` only concern the OCR graphs, the one expert that runs on an engine here."""

    def __init__(self, manifest: Manifest, options: RuntimeOptions | None = None):
        self.manifest, options = manifest, options or RuntimeOptions()
        self.parts = {name: REFERENCE_EXPERTS[name](manifest, manifest.experts[name], options)
                      for name in EXPERTS if name in manifest.experts}

    def close(self) -> None:
        for part in self.parts.values():
            part.close()

    @torch.no_grad()
    def run(self, images: list[np.ndarray], *, timer: Timer | None = None) -> list[ExpertResults]:
        """images: HxWx3 uint8 RGB images as the experts see them (490x490 in both reference models). `timer` gets
        `expert_<name>` summed over the images, the keys the runtime's Experts.run reports."""
        timer = timer or Timer()
        results = []
        for image in images:
            outs = {}
            for name, part in self.parts.items():
                with timer(f"expert_{name}"):
                    outs[name] = [part.run(image)]
            results += attach_all(outs, self.manifest.experts, 1)
        return results


@reference_expert("panoptic")
class ReferencePanoptic:
    def __init__(self, manifest: Manifest, section: dict, options: RuntimeOptions):
        import transformers

        self.section = section
        self.model = load_panoptic(section["source"]).eval()
        size = section["image_size"]
        self.processor = transformers.Mask2FormerImageProcessor(size={"height": size, "width": size})

    def run(self, image: np.ndarray) -> PanopticResult:
        s = self.section
        out = self.model(**self.processor(images=[image], return_tensors="pt"))
        t = s["target_size"]
        ref = self.processor.post_process_panoptic_segmentation(
            out, threshold=s["threshold"], mask_threshold=s["mask_threshold"],
            overlap_mask_area_threshold=s["overlap_mask_area_threshold"], label_ids_to_fuse=set(),
            target_sizes=[(t, t)])[0]
        segments = [Segment(d["id"], d["label_id"], float(d["score"]), bool(d["was_fused"]))
                    for d in ref["segments_info"]]
        return PanopticResult(ref["segmentation"].numpy().astype(np.int32), segments)

    def close(self) -> None:
        pass


@reference_expert("detector")
class ReferenceDetector:
    def __init__(self, manifest: Manifest, section: dict, options: RuntimeOptions):
        import transformers

        self.section = section
        self.model = load_detector(section["source"]).eval()
        self.query_ids, self.query_mask = query_tokens(self.model, section["labels"], section["source"])
        self.processor = transformers.Owlv2ImageProcessor()

    def run(self, image: np.ndarray) -> list[Detection]:
        s = self.section
        pixels = self.processor(images=[image], return_tensors="pt")["pixel_values"]
        out = self.model(input_ids=self.query_ids, attention_mask=self.query_mask, pixel_values=pixels)
        t = s["target_size"]
        ref = self.processor.post_process_object_detection(out, threshold=s["threshold"], target_sizes=[(t, t)])[0]
        keep = ref["scores"] >= s["keep_score"]
        return [Detection(box.numpy().astype(np.float32), float(score), int(label))
                for box, score, label in zip(ref["boxes"][keep], ref["scores"][keep], ref["labels"][keep])]

    def close(self) -> None:
        pass


@reference_expert("scene_graph")
class ReferenceSceneGraph:
    def __init__(self, manifest: Manifest, section: dict, options: RuntimeOptions):
        self.cfg = config_from(SceneGraphConfig, section)
        self.model = psgtr.load_scene_graph(section["source"]).eval()

    def run(self, image: np.ndarray) -> SceneGraphResult:
        cfg = self.cfg
        out = self.model(torch.from_numpy(preprocess_scene_graph(image, cfg))[None])
        heads = dict(zip(psgtr.OUTPUTS, (t[0] for t in out)))
        labels, dists, pairs = reference_scene_graph(*(heads[k] for k in HEADS), mask_size(*image.shape[:2], cfg),
                                                     num_relations=len(cfg.predicates), max_per_img=cfg.max_per_img)
        graph = SceneGraphResult(labels=[int(v) for v in labels], rel_dists=dists, rel_pairs=pairs)
        graph.relations = relations_of(graph, cfg)
        return graph

    def close(self) -> None:
        pass


@reference_expert("ocr")
class ReferenceOcr:
    """The package's PP-OCR graphs through the runtime's reader (PaddleOCR is not installable here)."""

    def __init__(self, manifest: Manifest, section: dict, options: RuntimeOptions):
        engines = (open_engine(manifest, section[k], options) for k in ("det", "cls", "rec"))
        self.reader = OcrReader.from_engines(*engines, cfg=config_from(OcrConfig, section))

    def run(self, image: np.ndarray) -> list[OcrLine]:
        return self.reader.keep_confident(self.reader.read(image))

    def close(self) -> None:
        self.reader.close()
