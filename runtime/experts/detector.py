"""OWLv2 detection: Owlv2ImageProcessor's pre-processing and `post_process_object_detection` in numpy.

Pre-processing: rescale to 0..1, pad bottom/right with zeros to a square, Gaussian anti-aliasing
(sigma = (factor - 1) / 2, kernel 2*ceil(3 sigma)+1, reflect padding) when shrinking, bilinear resize
without antialias, CLIP normalisation. Post-processing: sigmoid of the best query's logit, boxes from
centre to corners scaled by max(target height, width) (the square the image was padded to), no NMS,
no clipping; MoAI then keeps scores >= 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..images import resize_planes
from .outputs import Detection
from .registry import ExpertContext, config_from, expert
from .results import ExpertResults


@dataclass
class DetectorConfig:
    image_size: int = 960
    mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    threshold: float = 0.1  # post_process_object_detection
    keep_score: float = 0.5  # MoAI's own cut afterwards
    target_size: int = 490
    labels: list[str] = field(default_factory=list)


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    x = np.linspace(-(size - 1) / 2, (size - 1) / 2, size, dtype=np.float32)
    pdf = np.exp(-0.5 * (x / np.float32(sigma)) ** 2)
    return (pdf / pdf.sum()).astype(np.float32)


def _blur_axis(x: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    pad = len(kernel) // 2
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad, pad)
    padded = np.pad(x, widths, mode="reflect")
    out = np.zeros_like(x)
    n = x.shape[axis]
    for i, w in enumerate(kernel):
        out += w * np.take(padded, np.arange(i, i + n), axis=axis)
    return out


def preprocess_detector(image: np.ndarray, cfg: DetectorConfig) -> np.ndarray:
    """HxWx3 uint8 -> (3, S, S) float32."""
    x = image.astype(np.float32).transpose(2, 0, 1) * np.float32(1 / 255)
    h, w = x.shape[1:]
    side = max(h, w)
    x = np.pad(x, ((0, 0), (0, side - h), (0, side - w)))
    factor = side / cfg.image_size
    sigma = max((factor - 1) / 2, 0.0)
    if sigma > 0:
        k = _gaussian_kernel(2 * math.ceil(3 * sigma) + 1, sigma)
        x = _blur_axis(_blur_axis(x, k, 2), k, 1)
    x = resize_planes(x, cfg.image_size, cfg.image_size)
    mean = np.asarray(cfg.mean, np.float32)[:, None, None]
    std = np.asarray(cfg.std, np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32)


def post_process_detections(best_logit: np.ndarray, best_query: np.ndarray, boxes: np.ndarray,
                            cfg: DetectorConfig) -> list[Detection]:
    """One image: best_logit (N,), best_query (N,), boxes (N, 4) cx, cy, w, h in 0..1."""
    with np.errstate(over="ignore"):  # a logit below -88 gives exp = inf and the score 0, as in torch
        scores = 1.0 / (1.0 + np.exp(-best_logit.astype(np.float32)))
    cx, cy, w, h = boxes.T
    corners = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1) * np.float32(cfg.target_size)
    keep = (scores > cfg.threshold) & (scores >= cfg.keep_score)
    return [Detection(box=b.astype(np.float32), score=float(s), label_id=int(q))
            for b, s, q in zip(corners[keep], scores[keep], best_query[keep])]


@expert("detector")
class DetectorExpert:
    """OWLv2 with the text side (the package's queries) computed at export: image in, the best query per box out."""

    def __init__(self, ctx: ExpertContext):
        self.cfg = config_from(DetectorConfig, ctx.section)
        self.engine = ctx.open(ctx.section["component"])
        self.query_embeds = ctx.manifest.load_array(ctx.section["queries"])

    def run(self, images: list[np.ndarray]) -> list[list[Detection]]:
        pixels = np.stack([preprocess_detector(img, self.cfg) for img in images])
        out = self.engine.run({"pixel_values": pixels, "query_embeds": self.query_embeds})
        return [post_process_detections(logit, query, boxes, self.cfg)
                for logit, query, boxes in zip(out["best_logit"], out["best_query"], out["boxes"])]

    @staticmethod
    def attach(result: ExpertResults, found: list[Detection], section: dict) -> None:
        result.detections, result.detector_labels = found, section["labels"]

    def close(self) -> None:
        self.engine.close()
