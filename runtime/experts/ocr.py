"""OCR with the PP-OCR det/cls/rec graphs: PaddleOCR's default pipeline, our own code.

Detection: resize so the longer side is at most 960 (multiples of 32), ImageNet normalisation,
DB post-processing (threshold 0.3, box threshold 0.6 by the fast box score, unclip ratio 1.5,
min-area rectangles, boxes ordered top-to-bottom then left-to-right within 10 px). Each box is
cut out with a perspective warp (rotated 90 degrees when 1.5 times taller than wide), turned
180 degrees when the classifier says so with score > 0.9, and read by CTC greedy decoding with
the dictionary stored in the recogniser's metadata (blank first, space last). MoAI keeps lines
with confidence >= 0.85. Like the reference, the image goes in as it comes: MoAI hands PaddleOCR
RGB arrays where PaddleOCR expects BGR.

Needs opencv and pyclipper, both in the base install.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moai_edge.engines.errors import require
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.registry import open_file
from moai_edge.engines.protocol import Engine

from .outputs import OcrLine
from .registry import ExpertContext, config_from, expert
from .results import ExpertResults


@dataclass
class OcrConfig:
    limit_side_len: int = 960
    det_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    det_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    thresh: float = 0.3
    box_thresh: float = 0.6
    unclip_ratio: float = 1.5
    max_candidates: int = 1000
    min_size: int = 3
    cls_shape: tuple[int, int] = (48, 192)
    cls_thresh: float = 0.9
    rec_shape: tuple[int, int] = (48, 320)
    batch: int = 6
    drop_score: float = 0.5  # PaddleOCR's own cut
    min_confidence: float = 0.85  # MoAI's


def _cv2():
    return require("cv2", "ocr")


# ---- detection --------------------------------------------------------------------------------
def det_input(image: np.ndarray, cfg: OcrConfig) -> np.ndarray:
    cv2 = _cv2()
    h, w = image.shape[:2]
    ratio = cfg.limit_side_len / max(h, w) if max(h, w) > cfg.limit_side_len else 1.0
    rh = max(int(round(int(h * ratio) / 32) * 32), 32)
    rw = max(int(round(int(w * ratio) / 32) * 32), 32)
    x = cv2.resize(image, (rw, rh)).astype(np.float32) / 255.0
    x = (x - np.asarray(cfg.det_mean, np.float32)) / np.asarray(cfg.det_std, np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def mini_box(points: np.ndarray) -> tuple[np.ndarray, float]:
    """The min-area rectangle's corners, ordered top-left, top-right, bottom-right, bottom-left."""
    cv2 = _cv2()
    rect = cv2.minAreaRect(points)
    pts = sorted(list(cv2.boxPoints(rect)), key=lambda p: p[0])
    left = (pts[0], pts[1]) if pts[1][1] > pts[0][1] else (pts[1], pts[0])  # (top-left, bottom-left)
    right = (pts[2], pts[3]) if pts[3][1] > pts[2][1] else (pts[3], pts[2])  # (top-right, bottom-right)
    return np.array([left[0], right[0], right[1], left[1]]), min(rect[1])


def box_score(prob: np.ndarray, box: np.ndarray) -> float:
    cv2 = _cv2()
    h, w = prob.shape
    x0, x1 = (np.clip(np.floor(box[:, 0].min()).astype(int), 0, w - 1),
              np.clip(np.ceil(box[:, 0].max()).astype(int), 0, w - 1))
    y0, y1 = (np.clip(np.floor(box[:, 1].min()).astype(int), 0, h - 1),
              np.clip(np.ceil(box[:, 1].max()).astype(int), 0, h - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    cv2.fillPoly(mask, (box - [x0, y0]).reshape(1, -1, 2).astype(np.int32), 1)
    return cv2.mean(prob[y0:y1 + 1, x0:x1 + 1], mask)[0]


def unclip(box: np.ndarray, ratio: float) -> np.ndarray:
    pyclipper = require("pyclipper", "ocr")
    x, y = box[:, 0], box[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    length = np.sum(np.linalg.norm(box - np.roll(box, 1, axis=0), axis=1))
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return np.array(offset.Execute(area * ratio / length)).reshape(-1, 1, 2)


def db_boxes(prob: np.ndarray, height: int, width: int, cfg: OcrConfig) -> list[np.ndarray]:
    """DB post-processing of the probability map (H', W') into boxes in image pixels."""
    cv2 = _cv2()
    bitmap = ((prob > cfg.thresh) * 255).astype(np.uint8)
    contours = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)[-2]
    ph, pw = prob.shape
    boxes = []
    for contour in contours[: cfg.max_candidates]:
        points, side = mini_box(contour)
        if side < cfg.min_size or box_score(prob, points.reshape(-1, 2)) < cfg.box_thresh:
            continue
        expanded = unclip(points, cfg.unclip_ratio)
        if len(expanded) == 0:
            continue
        box, side = mini_box(expanded.astype(np.float32))
        if side < cfg.min_size + 2:
            continue
        box[:, 0] = np.clip(np.round(box[:, 0] / pw * width), 0, width)
        box[:, 1] = np.clip(np.round(box[:, 1] / ph * height), 0, height)
        boxes.append(box.astype(np.float32))
    return boxes


def clockwise(box: np.ndarray, height: int, width: int) -> np.ndarray:
    xs = box[np.argsort(box[:, 0])]
    tl, bl = xs[:2][np.argsort(xs[:2, 1])]
    tr, br = xs[2:][np.argsort(xs[2:, 1])]
    out = np.array([tl, tr, br, bl], np.float32)
    out[:, 0] = np.clip(out[:, 0], 0, width - 1).astype(int)
    out[:, 1] = np.clip(out[:, 1], 0, height - 1).astype(int)
    return out


def sort_boxes(boxes: list[np.ndarray]) -> list[np.ndarray]:
    """Top to bottom, then left to right for boxes whose tops are within 10 px."""
    out = sorted(boxes, key=lambda b: (b[0][1], b[0][0]))
    for i in range(len(out) - 1):
        for j in range(i, -1, -1):
            if abs(out[j + 1][0][1] - out[j][0][1]) < 10 and out[j + 1][0][0] < out[j][0][0]:
                out[j], out[j + 1] = out[j + 1], out[j]
            else:
                break
    return out


def crop(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    w = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    h = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    target = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    out = cv2.warpPerspective(image, cv2.getPerspectiveTransform(box, target), (w, h),
                              borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    return np.rot90(out) if out.shape[0] / out.shape[1] >= 1.5 else out


# ---- classification and recognition ------------------------------------------------------------
def line_input(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to `height` keeping the ratio (at most `width`), scale to -1..1, pad right with zeros."""
    cv2 = _cv2()
    w = min(width, int(math.ceil(height * img.shape[1] / img.shape[0])))
    x = cv2.resize(img, (w, height)).astype(np.float32).transpose(2, 0, 1) / 255
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :w] = (x - 0.5) / 0.5
    return out


def in_batches(crops: list[np.ndarray], size: int):
    """PaddleOCR's batches: crops sorted by aspect ratio, `size` at a time; yields original indices."""
    order = np.argsort([c.shape[1] / c.shape[0] for c in crops])
    for start in range(0, len(order), size):
        yield order[start:start + size]


def ctc_decode(probs: np.ndarray, characters: list[str]) -> tuple[str, float]:
    """Greedy CTC on (T, C): drop repeats and blanks (index 0); confidence = mean of the kept maxima."""
    idx, p = probs.argmax(-1), probs.max(-1)
    keep = np.ones(len(idx), bool)
    keep[1:] = idx[1:] != idx[:-1]
    keep &= idx != 0
    text = "".join(characters[i] for i in idx[keep])
    return text, float(np.mean(p[keep])) if keep.any() else 0.0


class OcrReader:
    def __init__(self, det: Engine, cls: Engine, rec: Engine, characters: list[str], cfg: OcrConfig | None = None):
        self.det, self.cls, self.rec = det, cls, rec
        self.characters = ["blank", *characters, " "]
        self.cfg = cfg or OcrConfig()

    @classmethod
    def load(cls, det: Path, cls_: Path, rec: Path, *, options: RuntimeOptions | None = None,
             cfg: OcrConfig | None = None) -> "OcrReader":
        """Three bare PP-OCR graph files (e.g. rapidocr's)."""
        options = options or RuntimeOptions()
        return cls.from_engines(*(open_file(p, options, name=n) for p, n in ((det, "ocr_det"), (cls_, "ocr_cls"),
                                                                             (rec, "ocr_rec"))), cfg=cfg)

    @classmethod
    def from_engines(cls, det: Engine, cls_: Engine, rec: Engine, *, cfg: OcrConfig | None = None) -> "OcrReader":
        """The character dictionary comes from the recogniser's metadata."""
        return cls(det, cls_, rec, rec.metadata()["character"].splitlines(), cfg)

    def close(self) -> None:
        for engine in (self.det, self.cls, self.rec):
            engine.close()

    def _run(self, engine: Engine, x: np.ndarray) -> np.ndarray:
        return engine.run({engine.inputs()[0].name: x})[engine.outputs()[0].name]

    def read(self, image: np.ndarray) -> list[OcrLine]:
        """All lines with PaddleOCR's drop score; MoAI's 0.85 cut is `keep_confident`."""
        cfg, (h, w) = self.cfg, image.shape[:2]
        prob = self._run(self.det, det_input(image, cfg))[0, 0]
        boxes = [clockwise(b, h, w) for b in db_boxes(prob, h, w, cfg)]
        boxes = sort_boxes([b for b in boxes
                            if int(np.linalg.norm(b[0] - b[1])) > 3 and int(np.linalg.norm(b[0] - b[3])) > 3])
        crops = [crop(image, b) for b in boxes]
        for batch in in_batches(crops, cfg.batch):
            out = self._run(self.cls, np.stack([line_input(crops[i], *cfg.cls_shape) for i in batch]))
            for i, p in zip(batch, out):
                if p.argmax() == 1 and p[1] > cfg.cls_thresh:  # label "180"
                    crops[i] = np.ascontiguousarray(crops[i][::-1, ::-1])
        texts: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        for batch in in_batches(crops, cfg.batch):
            ratio = max(cfg.rec_shape[1] / cfg.rec_shape[0], *(crops[i].shape[1] / crops[i].shape[0] for i in batch))
            width = int(cfg.rec_shape[0] * ratio)
            out = self._run(self.rec, np.stack([line_input(crops[i], cfg.rec_shape[0], width) for i in batch]))
            for i, probs in zip(batch, out):
                texts[i] = ctc_decode(probs, self.characters)
        return [OcrLine(t, c, b.tolist()) for (t, c), b in zip(texts, boxes) if c >= cfg.drop_score]

    def keep_confident(self, lines: list[OcrLine]) -> list[OcrLine]:
        return [line for line in lines if line.confidence >= self.cfg.min_confidence]


@expert("ocr")
class OcrExpert:
    """PP-OCR (detection, orientation, recognition), keeping the lines MoAI keeps."""

    def __init__(self, ctx: ExpertContext):
        s = ctx.section
        self.reader = OcrReader.from_engines(*(ctx.open(s[k]) for k in ("det", "cls", "rec")),
                                             cfg=config_from(OcrConfig, s))

    def run(self, images: list[np.ndarray]) -> list[list[OcrLine]]:
        return [self.reader.keep_confident(self.reader.read(img)) for img in images]

    @staticmethod
    def attach(result: ExpertResults, found: list[OcrLine], section: dict) -> None:
        result.ocr = found

    def close(self) -> None:
        self.reader.close()
