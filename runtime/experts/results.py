"""What the experts found on one image, as data (and as JSON for reports and the server)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .outputs import Detection, OcrLine, PanopticResult, SceneGraphResult
from .verbalize import clean_class, segment_boxes


@dataclass
class ExpertResults:
    """Each field is filled by its expert's `attach` (runtime.experts.registry); the panoptic expert is in every
    package that has experts."""

    panoptic: PanopticResult | None = None
    labels: list[str] = field(default_factory=list)
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
            "detections": [{"label_id": d.label_id, "label": self.detector_labels[d.label_id],
                            "score": round(d.score, 6), "box": [round(float(v), 2) for v in d.box]}
                           for d in self.detections],
            "relations": [{"subject": s, "predicate": p, "object": o}
                          for s, p, o in (self.scene_graph.relations if self.scene_graph else [])],
            "ocr": [{"text": line.text, "confidence": round(line.confidence, 4), "box": line.box} for line in self.ocr],
        }

