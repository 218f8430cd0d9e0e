"""Expert results -> the reference's text and maps, byte for byte.

MoAI: four sentences (segments, detections, relations, OCR) joined by single spaces, so empty parts
leave their spaces, and a PASCAL colour map indexed by segment id. CoLLaVO: crayon class/number maps
on the vision grid and the `(#k class) [x1, y1, x2, y2]` segment text.
"""

from __future__ import annotations

import numpy as np

from .outputs import Detection, PanopticResult

SEGMENT_PREFIX = "The image includes bounding box coordinates and their objects: "
RELATION_PREFIX = "The image includes relationships between objects: "
OCR_PREFIX = "The image includes text descriptions: "
ITEM_JOIN = ", and "


def clean_class(name: str) -> str:
    return name.replace("-merged", "").replace("-other", "").replace("-stuff", "")


def box_string(box) -> str:
    return "[" + ", ".join(f"{round(float(x), 2):.2f}" for x in box) + "]"


def segment_boxes(result: PanopticResult, scale: float) -> np.ndarray:
    """(n, 4) float32 boxes of segments 1..n in id order: [x0, y0, x1 + 1, y1 + 1] (detectron2's BitMasks), * scale."""
    boxes = np.zeros((len(result.segments), 4), np.float32)
    for i, seg in enumerate(result.segments):
        ys, xs = np.nonzero(result.segmentation == seg.id)
        boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes * np.float32(scale)


def sentence(prefix: str, items: list[str]) -> str:
    return prefix + ITEM_JOIN.join(items) + "." if items else ""


# ---- MoAI ---------------------------------------------------------------------------------
def verbalize_segments(result: PanopticResult, labels: list[str]) -> str:
    size = result.segmentation.shape[0]
    boxes = segment_boxes(result, 1 / size)
    return sentence(SEGMENT_PREFIX, [f"{box_string(b)} {clean_class(labels[s.label_id])}"
                                     for b, s in zip(boxes, result.segments)])


def verbalize_detections(detections: list[Detection], labels: list[str], *, size: int = 490) -> str:
    return sentence(SEGMENT_PREFIX, [f"{box_string(d.box / np.float32(size))} {labels[d.label_id]}"
                                     for d in detections])


def verbalize_relations(relations: list[tuple[str, str, str]]) -> str:
    return sentence(RELATION_PREFIX, [f"{s} is {p} {o}" for s, p, o in relations])


def verbalize_ocr(texts: list[str]) -> str:
    return sentence(OCR_PREFIX, texts)


def join_parts(*parts: str) -> str:
    """The reference's make_human_string: parts joined by single spaces, empty ones included."""
    return " ".join(parts)


EMPTY_VERBALIZATION = join_parts("", "", "", "")  # MoAI with nothing detected: "   "
COLLAVO_EMPTY_PREFIX = "None of detailed object information for image. "


def collavo_question(segment_text: str | None, question: str) -> str:
    """CoLLaVO puts its segments in front of the user's question."""
    if segment_text:
        return f"The image includes {segment_text}. {question}"
    return COLLAVO_EMPTY_PREFIX + question


def pascal_colormap(n: int) -> np.ndarray:
    """(n, 3) float64 in 0..1, the DeepLab PASCAL colour map."""
    cmap = np.zeros((n, 3), np.int64)
    ind = np.arange(n)
    for shift in reversed(range(8)):
        for channel in range(3):
            cmap[:, channel] |= ((ind >> channel) & 1) << shift
        ind = ind >> 3
    return cmap / 255


def colour_map(result: PanopticResult) -> np.ndarray:
    """(H, W, 3) float32: the colour of each pixel's segment id (0 and -1 -> black). The reference's table
    has 134 rows and would fail on a higher id; ours grows with the ids."""
    ids = np.maximum(result.segmentation, 0)
    return pascal_colormap(max(134, int(ids.max()) + 1))[ids].astype(np.float32)


# ---- CoLLaVO --------------------------------------------------------------------------------
def crayon_maps(result: PanopticResult) -> tuple[np.ndarray, np.ndarray]:
    """Class map = label + 1, number map = the segment's ordinal within its class (segment-id order)."""
    seg = np.maximum(result.segmentation, 0)
    class_map, number_map = np.zeros(seg.shape, np.int64), np.zeros(seg.shape, np.int64)
    count: dict[int, int] = {}
    by_id = {s.id: s for s in result.segments}
    for sid in np.unique(seg):
        if sid == 0:
            continue
        label = by_id[int(sid)].label_id
        count[label] = count.get(label, 0) + 1
        class_map[seg == sid] = label + 1
        number_map[seg == sid] = count[label]
    return class_map, number_map


def crayon_text(result: PanopticResult, labels: list[str]) -> str | None:
    """`(#1 person) [0.11, 0.20, 0.46, 0.97], ...` on the grid; None when nothing was segmented."""
    if not (result.segmentation > 0).any():
        return None
    boxes = segment_boxes(result, 1 / result.segmentation.shape[0])
    count: dict[str, int] = {}
    items = []
    for box, s in zip(boxes, result.segments):
        name = clean_class(labels[s.label_id])
        count[name] = count.get(name, 0) + 1
        items.append(f"(#{count[name]} {name}) {box_string(box)}")
    return ", ".join(items)
