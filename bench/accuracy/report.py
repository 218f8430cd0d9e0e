"""An accuracy report on disk (report.json with every figure, report.md with the tables) and its terminal summary."""

from __future__ import annotations

import json
from pathlib import Path

from .eval import ACCURACY_KEYS
from ..speed.report import fmt


def write_eval_report(report: dict, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown(report))
    return [out_dir / "report.json", out_dir / "report.md"]


def percent(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def accuracy_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(key, accuracy, correct, questions) per accuracy key."""
    return [(k, percent(report["accuracy"][k]), str(report["correct"][k]), str(report["questions"][k]))
            for k in ACCURACY_KEYS]


def markdown(report: dict) -> str:
    pkg, s, m, t = report["package"], report["settings"], report["machine"], report["timing"]
    precisions = sorted(set(pkg["precision"].values()))
    seeds = s["image_seeds"]
    setting = (f"{s['images']} held-out world images (seeds {seeds['start']}..{seeds['stop'] - 1}), experts "
               f"{'BLANK (the reference empty case)' if s['blank_experts'] else 'on'}, {s['decoding']} decoding, "
               f"at most {s['max_new_tokens']} new tokens, batch {s['batch_size']}, {s['device']}.")
    timing = (f"Wall time {fmt(t['wall_s'])} s after a {fmt(t['load_s'])} s load (experts {fmt(t['experts_s'])} s); "
              f"{fmt(t['questions_per_s'], 2)} questions/s.")
    lines = [f"# moai-edge eval: {pkg['engine']}", "",
             (f"{pkg['family']} package, manifest sha256 {pkg['manifest_sha256'][:12]}, precision "
              + ", ".join(precisions) + (" (per component in report.json)" if len(precisions) > 1 else "") + "."),
             setting,
             (f"{m['cpu']} ({m['arch']}), {m['logical_cores']} logical cores, {m['threads'] or 'default'} threads; "
              + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + "."),
             timing, "", "## Accuracy", "",
             "| question type | accuracy | correct | questions |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {a} | {c} | {n} |" for k, a, c, n in accuracy_rows(report)]
    lines += ["", "`unseen_sign_word`: the sign questions whose word was never in training (also counted in `sign`).",
              ""]
    if "against" in report:
        lines += against_markdown(report["against"])
    lines += ["## Wrong answers (first few per type)", ""]
    for key, examples in report["examples"].items():
        if examples:
            lines += [f"### {key}", "", "| image seed | question | expected | got |", "|---:|---|---|---|"]
            lines += [f"| {e['image_seed']} | {e['question']} | {cell(e['expected'])} | {cell(e['got'])} |"
                      for e in examples]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def against_markdown(against: dict) -> list[str]:
    lines = [f"## Against {against['baseline']}", "",
             f"The same questions answered by the baseline package ({against['package']['engine']}, precision "
             + ", ".join(sorted(set(against["package"]["precision"].values()))) + "), question by question. "
             "p: McNemar's exact test on the questions only one of the two got right (small: the difference is not "
             "chance).", "",
             "| question type | this | baseline | difference, points | only this right | only baseline right | p |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {k} | {percent(r['accuracy'])} | {percent(r['baseline_accuracy'])} | {r['difference_points']:+.1f} | "
              f"{r['only_ours_right']} | {r['only_baseline_right']} | {r['p_value']:.3f} |"
              for k, r in against["by_key"].items()]
    return lines + [""]


def cell(text: str) -> str:
    """A model's answer as one markdown table cell: repr'd (control bytes visible), pipes escaped."""
    return "`" + repr(text)[1:-1].replace("|", "\\|").replace("`", "'") + "`"


def summary(report: dict) -> str:
    s, t = report["settings"], report["timing"]
    head = (f"{report['package']['family']} on {s['images']} held-out world images, experts "
            f"{'blank' if s['blank_experts'] else 'on'}: {t['wall_s']:.1f} s, {t['questions_per_s']:.2f} questions/s")
    rows = [f"{'question type':<18}{'accuracy':>10}{'correct':>9}{'questions':>11}"]
    rows += [f"{k:<18}{a:>10}{c:>9}{n:>11}" for k, a, c, n in accuracy_rows(report)]
    if "against" in report:
        rows.append(f"against {report['against']['baseline']}: " + ", ".join(
            f"{k} {r['difference_points']:+.1f} points (p {r['p_value']:.2f})"
            for k, r in report["against"]["by_key"].items()))
    return "\n".join([head, *rows])
