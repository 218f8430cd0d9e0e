"""What each expert gives for one image, as plain data: the types the experts, the verbalizer and the results share."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Segment:
    id: int
    label_id: int
    score: float
    was_fused: bool = False


@dataclass
class PanopticResult:
    segmentation: np.ndarray  # (H, W) int32 segment ids; 0 = no segment, -1 everywhere when nothing was kept
    segments: list[Segment]


@dataclass
class Detection:
    box: np.ndarray  # (4,) float32 x1, y1, x2, y2 in target pixels
    score: float
    label_id: int


@dataclass
class OcrLine:
    text: str
    confidence: float
    box: list[list[float]]  # 4 points (x, y) in image pixels, clockwise from top-left


@dataclass
class SceneGraphResult:
    """What MoAI reads from OpenPSG's Result: 1-based entity labels, predicate distributions (column 0 =
    no relation) and the (subject, object) entity index of each relation."""

    labels: list[int]
    rel_dists: np.ndarray
    rel_pairs: np.ndarray
    relations: list[tuple[str, str, str]] = field(default_factory=list)  # MoAI's selection, as words
