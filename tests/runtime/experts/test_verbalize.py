"""Verbalization and maps on a hand-made segmentation; expected strings written out from the rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moai_edge.runtime.experts import Detection, PanopticResult, Segment
from moai_edge.runtime.experts.verbalize import (colour_map, crayon_maps, crayon_text, join_parts,
                                                 verbalize_detections, verbalize_ocr, verbalize_relations,
                                                 verbalize_segments)

LABELS_FILE = Path(__file__).resolve().parents[4] / "shared" / "data" / "moai_labels.json"


@pytest.fixture(scope="module")
def labels():
    if not LABELS_FILE.is_file():
        pytest.skip(f"reference label lists not found at {LABELS_FILE}")
    return json.loads(LABELS_FILE.read_text())


def hand_made() -> PanopticResult:
    seg = np.zeros((35, 35), np.int32)
    seg[7:14, 0:7] = 1  # person
    seg[:, 28:] = 2  # another person
    seg[14:21, 14:21] = 3  # wall-other-merged
    return PanopticResult(seg, [Segment(1, 0, 0.99), Segment(2, 0, 0.98), Segment(3, 131, 0.97)])


def test_crayon_maps_and_text(labels):
    result = hand_made()
    cls, num = crayon_maps(result)
    assert cls[10, 3] == 1 and num[10, 3] == 1
    assert cls[0, 30] == 1 and num[0, 30] == 2
    assert cls[15, 15] == 132 and num[15, 15] == 1
    assert cls[0, 0] == 0 and num[0, 0] == 0
    assert crayon_text(result, labels["coco_panoptic_classes"]) == (
        "(#1 person) [0.00, 0.20, 0.20, 0.40], (#2 person) [0.80, 0.00, 1.00, 1.00], "
        "(#1 wall) [0.40, 0.40, 0.60, 0.60]")


def test_empty_segmentation(labels):
    for seg in (np.full((35, 35), -1, np.int32), np.zeros((35, 35), np.int32)):
        empty = PanopticResult(seg, [])
        assert crayon_text(empty, labels["coco_panoptic_classes"]) is None
        assert not any(m.any() for m in crayon_maps(empty))
        assert verbalize_segments(empty, labels["coco_panoptic_classes"]) == ""
        assert not colour_map(empty).any()
    assert join_parts("", "", "", "") == "   "


def test_moai_sentences(labels):
    seg = verbalize_segments(hand_made(), labels["coco_panoptic_classes"])
    assert seg == ("The image includes bounding box coordinates and their objects: [0.00, 0.20, 0.20, 0.40] person, "
                   "and [0.80, 0.00, 1.00, 1.00] person, and [0.40, 0.40, 0.60, 0.60] wall.")
    det = verbalize_detections([Detection(np.array([49, 98, 245, 490], np.float32), 0.9, 2)],
                               labels["detector_queries"])
    assert det == "The image includes bounding box coordinates and their objects: [0.10, 0.20, 0.50, 1.00] sky."
    rel = verbalize_relations([("person (#1)", "holding", "person (#2)"), ("person (#2)", "beside", "wall")])
    assert rel == ("The image includes relationships between objects: person (#1) is holding person (#2), "
                   "and person (#2) is beside wall.")
    assert verbalize_ocr(["STOP", "Main St"]) == "The image includes text descriptions: STOP, and Main St."
    assert join_parts(seg, "", rel, "") == seg + "  " + rel + " "


def test_colour_map_by_segment_id():
    cmap = colour_map(hand_made())
    assert cmap.dtype == np.float32 and cmap.shape == (35, 35, 3)
    np.testing.assert_allclose(cmap[10, 3], np.array([128, 0, 0]) / 255)
    np.testing.assert_allclose(cmap[0, 30], np.array([0, 128, 0]) / 255)
    np.testing.assert_allclose(cmap[15, 15], np.array([128, 128, 0]) / 255)
    assert not cmap[0, 0].any()
