"""`moai-edge eval --against BASELINE`: two packages' answers to the same questions, compared question by question.

Two accuracies a point or two apart on a few hundred questions may be noise: the question is how many questions
one package got right and the other wrong, each way. McNemar's exact test answers it: were a change neutral,
each of those discordant questions would be as likely to fall either way, so the smaller count follows a
binomial(n, 1/2). `p_value` is its two-sided tail: a small p says the difference is the change, not chance.
"""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

from moai_edge.engines.errors import InputError

from .eval import ACCURACY_KEYS


def mcnemar_exact(only_ours: int, only_baseline: int) -> float:
    """Two-sided exact McNemar p-value for the discordant counts (1.0 when there are none)."""
    n, k = only_ours + only_baseline, min(only_ours, only_baseline)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)


def load_baseline(path: Path) -> dict:
    """An eval report.json, given as the file or the folder holding it."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    try:
        report = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"--against: expected an eval report.json (or its folder), could not read {file}: "
                         f"{exc}") from None
    if "outcomes" not in report:
        raise InputError(f"--against: {file} has no per-question outcomes; it was written before they were recorded, "
                         f"run that eval again")
    return report


def paired(report: dict, baseline: dict) -> dict:
    """Per accuracy key: both reports' accuracy, the difference in points, the questions only one got right, and
    McNemar's p. The two must have asked the same questions (the same image seeds and experts setting)."""
    for key in ("image_seeds", "blank_experts"):
        if report["settings"][key] != baseline["settings"][key]:
            raise InputError(f"--against: the baseline's {key} is {baseline['settings'][key]}, this eval's is "
                             f"{report['settings'][key]}; only the same questions can be paired")
    out = {}
    for key in ACCURACY_KEYS:
        ours, theirs = report["outcomes"][key], baseline["outcomes"][key]
        if ours.keys() != theirs.keys():
            raise InputError(f"--against: the two reports asked different '{key}' questions")
        if not ours:
            continue
        only_ours = sum(ours[q] and not theirs[q] for q in ours)
        only_baseline = sum(theirs[q] and not ours[q] for q in ours)
        out[key] = {"questions": len(ours), "accuracy": sum(ours.values()) / len(ours),
                    "baseline_accuracy": sum(theirs.values()) / len(ours),
                    "difference_points": 100 * (only_ours - only_baseline) / len(ours),
                    "only_ours_right": only_ours, "only_baseline_right": only_baseline,
                    "p_value": mcnemar_exact(only_ours, only_baseline)}
    return out
