"""The comparison `moai-edge verify` uses for the experts' results."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("torch")
from moai_edge.bench.verify import compare_experts  # noqa: E402

RESULT = {
    "segments": [{"id": 1, "label_id": 3, "label": "car", "score": 0.91, "box": [0.1, 0.2, 0.5, 0.6]}],
    "detections": [{"label_id": 7, "label": "dog", "score": 0.8, "box": [10.0, 20.0, 50.0, 60.0]}],
    "relations": [{"subject": "person", "predicate": "on", "object": "car"}],
    "ocr": [{"text": "STOP", "confidence": 0.97, "box": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
}


def test_equal_results_have_no_problems_and_noise_is_tolerated():
    noisy = copy.deepcopy(RESULT)
    noisy["detections"][0]["score"] += 5e-5
    noisy["detections"][0]["box"][0] += 0.3
    assert compare_experts(RESULT, noisy) == []


@pytest.mark.parametrize("path, value, field", [
    (("segments", 0, "label_id"), 4, "segments"), (("detections", 0, "score"), 0.7, "detections"),
    (("detections", 0, "box", 2), 53.0, "detections"), (("relations", 0, "predicate"), "beside", "relations"),
    (("ocr", 0, "text"), "ST0P", "ocr")])
def test_each_difference_is_named(path, value, field):
    changed = copy.deepcopy(RESULT)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    problems = compare_experts(RESULT, changed)
    assert len(problems) == 1 and problems[0].startswith(field)


def test_verbalized_numbers_may_differ_by_one_rounding_step_only():
    from moai_edge.bench.verify import same_up_to_rounding

    a = "boxes: [0.00, 1.00, 0.25, 0.50] person, and [0.10, 0.20, 0.30, 0.40] car."
    assert same_up_to_rounding(a, a.replace("[0.00", "[-0.00"))
    assert same_up_to_rounding(a, a.replace("0.25", "0.26"))
    assert not same_up_to_rounding(a, a.replace("0.25", "0.27"))
    assert not same_up_to_rounding(a, a.replace("person", "people"))
    assert not same_up_to_rounding(a, a.replace(", and [0.10, 0.20, 0.30, 0.40] car", ""))
    assert same_up_to_rounding(None, None) and not same_up_to_rounding(a, None)
