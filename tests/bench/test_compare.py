"""The one comparison of runtime and reference results (bench.compare), used by verify, bench --reference and tests."""

from __future__ import annotations

import copy

import pytest

from moai_edge.bench.compare.results import compare_experts, compare_results, same_up_to_rounding
from moai_edge.runtime.request import Result

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
    a = "boxes: [0.00, 1.00, 0.25, 0.50] person, and [0.10, 0.20, 0.30, 0.40] car."
    assert same_up_to_rounding(a, a.replace("[0.00", "[-0.00"))
    assert same_up_to_rounding(a, a.replace("0.25", "0.26"))
    assert not same_up_to_rounding(a, a.replace("0.25", "0.27"))
    assert not same_up_to_rounding(a, a.replace("person", "people"))
    assert not same_up_to_rounding(a, a.replace(", and [0.10, 0.20, 0.30, 0.40] car", ""))
    assert same_up_to_rounding(None, None) and not same_up_to_rounding(a, None)


def result(**changes) -> Result:
    fields = {"id": "a", "answer": "a car", "tokens": [5, 9, 2], "experts": copy.deepcopy(RESULT),
              "verbalized": "person [0.10, 0.20] on car.", "timings_ms": {"total": 1.0}}
    return Result(**{**fields, **changes})


def test_results_compare_experts_display_text_and_tokens_by_row():
    assert compare_results([result(), result(id="b")], [result(), result(id="b", timings_ms={"total": 9.0})]) == []
    assert compare_results([result()], [result(verbalized="person [0.10, 0.21] on car.", answer="other")]) == []
    theirs = [result(), result(id="b", tokens=[5, 8, 2], verbalized="a dog.")]
    theirs[1].experts["ocr"][0]["text"] = "ST0P"
    problems = compare_results([result(), result(id="b")], theirs)
    assert [p.split(": ")[0] for p in problems] == ["row 1 (b)"] * 3
    assert [p.split(": ")[1] for p in problems] == ["experts ocr", "display text", "tokens"]


def test_results_without_experts_and_missing_rows_are_named():
    assert compare_results([result(experts={})], [result(experts={})]) == []
    assert compare_results([result(experts={})], [result()])[0].startswith("row 0 (a): experts")
    assert compare_results([result()], [])[0].startswith("results: expected one reference result per runtime result")
