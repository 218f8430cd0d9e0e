"""Panoptic segmentation (Mask2Former): pre-processing and transformers' panoptic post-processing in numpy.

`post_process_panoptic` follows `Mask2FormerImageProcessor.post_process_panoptic_segmentation` step by
step: mask logits upsampled to the fixed 384x384, sigmoid, class softmax max, queries kept when not
"no object" and score > threshold, probabilities resized to the target and multiplied by the score
*before* the `mask_threshold` area test, argmax over queries, segments numbered from 1 in query order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..images import resize_planes
from .outputs import PanopticResult, Segment
from .registry import ExpertContext, config_from, expert
from .results import ExpertResults

HF_MASK_SIZE = 384  # transformers upsamples the mask logits to this size for every Mask2Former model


@dataclass
class PanopticConfig:
    image_size: int = 384
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    threshold: float = 0.5
    mask_threshold: float = 0.95
    overlap_mask_area_threshold: float = 0.8
    target_size: int = 490  # MoAI: 490; CoLLaVO: 35 (the vision grid)
    labels: list[str] = field(default_factory=list)


def preprocess_panoptic(image: np.ndarray, cfg: PanopticConfig) -> np.ndarray:
    """HxWx3 uint8 -> (3,S,S) float32: bilinear (antialiased, as torchvision/PIL) resize, 1/255, ImageNet norm."""
    from PIL import Image

    s = cfg.image_size
    resized = np.asarray(Image.fromarray(image).resize((s, s), Image.BILINEAR), np.float32)
    x = (resized / np.float32(255.0) - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def softmax_f32(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64, returned as float32: as close to torch's float32 as numpy gets."""
    x = x.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def post_process_panoptic(class_logits: np.ndarray, mask_logits: np.ndarray, cfg: PanopticConfig) -> PanopticResult:
    """class_logits (Q, C+1), mask_logits (Q, h, w) for one image."""
    num_labels = class_logits.shape[-1] - 1
    probs = softmax_f32(class_logits)
    scores, labels = probs.max(-1), probs.argmax(-1)
    keep = (labels != num_labels) & (scores > cfg.threshold)
    t = cfg.target_size
    if not keep.any():
        return PanopticResult(np.full((t, t), -1, np.int32), [])
    masks = resize_planes(mask_logits[keep], HF_MASK_SIZE, HF_MASK_SIZE)
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x < -88: the sigmoid is then 0, as in torch
        masks = 1.0 / (1.0 + np.exp(-masks))
    masks = resize_planes(masks, t, t) * scores[keep][:, None, None]
    owner = masks.argmax(0)
    areas = np.bincount(owner.ravel(), minlength=len(masks))
    originals = (masks >= cfg.mask_threshold).sum((1, 2))
    segmentation = np.zeros((t, t), np.int32)
    segments: list[Segment] = []
    for k, (label, score, area, original) in enumerate(zip(labels[keep], scores[keep], areas, originals)):
        # the area ratio is a float32 division in transformers: 4/5 is then just above 0.8
        if (area == 0 or original == 0
            or not float(np.float32(area) / np.float32(original)) > cfg.overlap_mask_area_threshold):
            continue
        segments.append(Segment(id=len(segments) + 1, label_id=int(label), score=round(float(score), 6)))
        segmentation[owner == k] = len(segments)
    return PanopticResult(segmentation, segments)


@expert("panoptic")
class PanopticExpert:
    def __init__(self, ctx: ExpertContext):
        self.cfg = config_from(PanopticConfig, ctx.section)
        self.engine = ctx.open(ctx.section["component"])

    def run(self, images: list[np.ndarray]) -> list[PanopticResult]:
        out = self.engine.run({"pixel_values": np.stack([preprocess_panoptic(img, self.cfg) for img in images])})
        return [post_process_panoptic(c, m, self.cfg)
                for c, m in zip(out["class_queries_logits"], out["masks_queries_logits"])]

    @staticmethod
    def attach(result: ExpertResults, found: PanopticResult, section: dict) -> None:
        result.panoptic, result.labels = found, section["labels"]

    def close(self) -> None:
        self.engine.close()
