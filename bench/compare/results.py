"""The one comparison of runtime and PyTorch reference results, used by `verify`, `bench --reference` and the tests.

Per result: the experts' results (labels, ids, relations and OCR text equal; scores within 1e-4, boxes within
0.5 px), the display text (equal, but for printed numbers one last-digit step apart) and the tokens (equal).
"""

from __future__ import annotations

import re

from moai_edge.runtime import Result

NUMBER = re.compile(r"-?\d+\.(\d+)")


def same_up_to_rounding(a: str | None, b: str | None) -> bool:
    """Equal text, except printed numbers may differ by one step of their last digit: float32 noise on a
    value at a rounding boundary (a box edge at 0.004999 vs 0.005001, or -0.00 vs 0.00) flips it."""
    if a == b:
        return True
    if a is None or b is None or NUMBER.sub("#", a) != NUMBER.sub("#", b):
        return False
    return all(abs(float(x.group()) - float(y.group())) <= 1.0001 * 10 ** -len(x.group(1))
               for x, y in zip(NUMBER.finditer(a), NUMBER.finditer(b)))


def compare_experts(ours: dict, ref: dict, *, score_atol: float = 1e-4, box_atol: float = 0.5) -> list[str]:
    """Differences between two experts' JSON results (ExpertResults.to_json), by field. Labels, ids, relations
    and OCR text must be equal; scores and boxes (pixels) agree within float32 noise."""
    if not ours or not ref:  # a package without experts reports {}
        return [] if ours == ref else [f"experts: runtime {'none' if not ours else 'some'}, "
                                       f"reference {'none' if not ref else 'some'}"]
    problems = []
    for key, ident in (("segments", ("id", "label_id")), ("detections", ("label_id",))):
        a, b = [[d[k] for k in ident] for d in ours[key]], [[d[k] for k in ident] for d in ref[key]]
        if a != b:
            problems.append(f"{key}: runtime {a}, reference {b}")
            continue
        for d, e in zip(ours[key], ref[key]):
            if abs(d["score"] - e["score"]) > score_atol:
                problems.append(f"{key}: score {d['score']} vs {e['score']}")
            if key == "detections" and max(abs(x - y) for x, y in zip(d["box"], e["box"])) > box_atol:
                problems.append(f"{key}: box {d['box']} vs {e['box']}")
    for key in ("relations", "ocr"):
        a = ours[key] if key == "relations" else [line["text"] for line in ours[key]]
        b = ref[key] if key == "relations" else [line["text"] for line in ref[key]]
        if a != b:
            problems.append(f"{key}: runtime {a}, reference {b}")
    return problems


def compare_result(ours: Result, theirs: Result) -> list[str]:
    """One image's differences, each starting with what differs: 'experts ', 'display text', 'tokens'."""
    problems = [f"experts {p}" for p in compare_experts(ours.experts, theirs.experts)]
    if not same_up_to_rounding(ours.verbalized, theirs.verbalized):
        problems.append(f"display text: runtime {ours.verbalized!r}, reference {theirs.verbalized!r}")
    if ours.tokens != theirs.tokens:
        problems.append(f"tokens: runtime {ours.tokens}, reference {theirs.tokens}")
    return problems


def compare_results(ours: list[Result], theirs: list[Result]) -> list[str]:
    """Every difference between runtime and reference results of the same requests, each naming its row."""
    if len(ours) != len(theirs):
        return [f"results: expected one reference result per runtime result, found {len(ours)} runtime and "
                f"{len(theirs)} reference results"]
    return [f"row {i}{'' if a.id is None else f' ({a.id})'}: {p}"
            for i, (a, b) in enumerate(zip(ours, theirs)) for p in compare_result(a, b)]
