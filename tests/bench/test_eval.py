"""`moai-edge eval`: the scoring rules, the report's contract on a random tiny package (accuracy ~0), and scripted
pipelines that prove the scoring reaches 1.0 when the answers are true and 0.0 when they are not."""

from __future__ import annotations

import json

import pytest

from moai_edge.bench.accuracy.eval import (ACCURACY_KEYS, MAX_EXAMPLES, evaluate, expert_aux, image_seeds, score_answer,
                                  world_items)
from moai_edge.bench.accuracy.paired import mcnemar_exact, paired
from moai_edge.engines.errors import InputError
from moai_edge.export.world import HELD_OUT_SEEDS, HELD_OUT_WORDS
from moai_edge.runtime.cli import main
from moai_edge.runtime import AuxInputs
from moai_edge.runtime.request import Request, Result

FAST = ["--images", "4", "--max-new-tokens", "3", "--batch-size", "8"]


@pytest.mark.parametrize("qtype, expected, got, right", [
    ("count", "3", "3", True), ("count", "3", " 3\n", True), ("count", "3", "4", False), ("count", "3", "three", False),
    ("count", "3", "3.", False), ("count", "0", "", False),
    ("colour", "red", "red", True), ("colour", "red", " Red ", True), ("colour", "red", "RED", True),
    ("colour", "red", "blue", False), ("colour", "red", "red circle", False),
    ("sign", "STOP", "STOP", True), ("sign", "STOP", "  STOP\n", True), ("sign", "STOP", "Stop", False),
    ("sign", "STOP", "STOPS", False), ("sign", "none", "None", True), ("sign", "none", " NONE ", True),
    ("sign", "none", "STOP", False),
    ("unseen_sign_word", "ZEBRA", " ZEBRA", True), ("unseen_sign_word", "ZEBRA", "zebra", False),
    ("describe", "1 green triangle.", "1 green triangle.", True),
    ("describe", "1 green triangle.", " 1 green triangle.\n", True),
    ("describe", "1 green triangle.", "1 Green triangle.", False),
    ("describe", "1 green triangle.", "1 green triangle", False),
    ("describe", "no objects; the sign says STOP.", "no objects; the sign says STOP.", True),
])
def test_score_answer(qtype, expected, got, right):
    assert score_answer(qtype, expected, got) is right


def test_score_answer_refuses_an_unknown_type():
    with pytest.raises(InputError, match="question type"):
        score_answer("size", "3", "3")


def test_image_seeds_are_held_out_and_disjoint_per_seed():
    a, b = image_seeds(0, 4), image_seeds(1, 4)
    assert a.start == HELD_OUT_SEEDS.start and len(a) == 4 and not set(a) & set(b)
    for seed, images in ((-1, 4), (0, 0), (10**6, 4)):
        with pytest.raises(InputError):
            image_seeds(seed, images)


class ScriptedPipe:
    """Anything with `run(requests)`: answers each question id from a script, and records what it was asked."""

    def __init__(self, answer):
        self.answer, self.asked = answer, []

    def run(self, requests: list[Request]) -> list[Result]:
        self.asked += [(r.id, r.question) for r in requests]
        return [Result(r.id, self.answer(r), [], {}, None, {}) for r in reversed(requests)]  # order must not matter


def truth(seeds) -> dict[str, tuple[str, str]]:
    return {item.id: (item.question_type, item.expected) for _, items in world_items(seeds) for item in items}


def test_true_answers_score_one_on_every_type():
    seeds = image_seeds(0, 8)
    answers = truth(seeds)

    def answer(r):  # the truth, with the variation the scoring forgives
        qtype, expected = answers[r.id]
        return f" {expected.upper() if qtype == 'colour' else expected}\n"

    report = evaluate(ScriptedPipe(answer), seeds, decoding=None, batch_size=3)
    assert set(report["accuracy"]) == set(ACCURACY_KEYS) and all(n > 0 for n in report["questions"].values())
    assert report["accuracy"] == dict.fromkeys(ACCURACY_KEYS, 1.0)
    assert report["correct"] == report["questions"] and all(not e for e in report["examples"].values())
    assert report["questions"]["unseen_sign_word"] <= report["questions"]["sign"]


def test_wrong_answers_score_zero_and_keep_examples():
    seeds = image_seeds(0, 8)
    report = evaluate(ScriptedPipe(lambda r: "no idea"), seeds, decoding=None, batch_size=5, max_examples=2)
    assert report["accuracy"] == dict.fromkeys(ACCURACY_KEYS, 0.0)
    for key, examples in report["examples"].items():
        assert len(examples) == min(2, report["questions"][key])
        assert all(e["got"] == "no idea" and e["image_seed"] in seeds for e in examples)
    assert all(e["expected"] in HELD_OUT_WORDS for e in report["examples"]["unseen_sign_word"])


def test_the_same_seed_asks_the_same_questions():
    runs = [ScriptedPipe(lambda r: ""), ScriptedPipe(lambda r: ""), ScriptedPipe(lambda r: "")]
    for pipe, seed in zip(runs, (2, 2, 3)):
        evaluate(pipe, image_seeds(seed, 4), decoding=None, batch_size=4)
    assert runs[0].asked == runs[1].asked and len(runs[0].asked) > 4
    assert {i for i, _ in runs[0].asked}.isdisjoint(i for i, _ in runs[2].asked)


def test_experts_once_per_image_give_the_pipelines_own_answers(tiny_packages):
    """eval runs the experts once per image and passes their inputs as Request.aux: the same answers as run()."""
    from moai_edge.runtime.pipeline import Pipeline

    image, items = next(world_items(image_seeds(0, 1)))
    with Pipeline.load(tiny_packages["moai"]) as pipe:
        decoding = pipe.decoding("greedy", max_new_tokens=4)
        aux = expert_aux(pipe, image)
        assert isinstance(aux, AuxInputs) and aux.verbalized
        questions = [item.question for item in items[:3]]
        once = pipe.run([Request(image, q, decoding, aux=aux) for q in questions])
        each = pipe.run([Request(image, q, decoding) for q in questions])
    assert [r.tokens for r in once] == [r.tokens for r in each]


@pytest.mark.parametrize("blank", [False, True])
def test_cli_writes_the_report(tiny_packages, tmp_path, capsys, blank):
    out = tmp_path / "eval"
    argv = ["eval", "--engine", str(tiny_packages["moai"]), *FAST, "--out", str(out), *(["--blank-experts"] * blank)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert set(report["accuracy"]) == set(ACCURACY_KEYS) == set(report["questions"])
    assert all(v is None or 0 <= v <= 1 for v in report["accuracy"].values())
    assert all(report["questions"][k] > 0 for k in ("count", "colour", "describe"))
    assert report["settings"]["blank_experts"] is blank and report["settings"]["images"] == 4
    assert report["settings"]["image_seeds"] == {"start": HELD_OUT_SEEDS.start, "stop": HELD_OUT_SEEDS.start + 4}
    assert report["package"]["family"] == "moai" and len(report["package"]["manifest_sha256"]) == 64
    assert report["package"]["precision"]["decode"] == "fp32" and report["machine"]["versions"]["onnxruntime"]
    assert report["timing"]["wall_s"] > 0 and all(len(e) <= MAX_EXAMPLES for e in report["examples"].values())
    assert ("experts blank" if blank else "experts on") in printed and "unseen_sign_word" in printed
    md = (out / "report.md").read_text()
    assert "| count |" in md and ("BLANK" in md) is blank


def test_cli_collavo_and_bad_options(tiny_packages, tmp_path, capsys):
    assert main(["eval", "--engine", str(tiny_packages["collavo"]), *FAST, "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "report.json").read_text())["package"]["family"] == "collavo"
    capsys.readouterr()
    for bad, name in ((["--images", "0"], "images"), (["--seed", "-1"], "seed"), (["--batch-size", "0"], "batch_size")):
        assert main(["eval", "--engine", str(tiny_packages["moai"]), *bad, "--out", str(tmp_path / "x")]) == 2
        assert name in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("ours, theirs, p", [(0, 0, 1.0), (10, 0, 2 / 2**10), (0, 10, 2 / 2**10), (5, 5, 1.0),
                                              (3, 7, 2 * (1 + 10 + 45 + 120) / 2**10)])
def test_mcnemar_exact(ours, theirs, p):
    assert mcnemar_exact(ours, theirs) == pytest.approx(p)


def test_paired_counts_the_questions_only_one_side_got_right():
    seeds = image_seeds(0, 8)
    answers = truth(seeds)
    count_ids = sorted(i for i, (qtype, _) in answers.items() if qtype == "count")
    broken = set(count_ids[:12])  # the second package gets these count questions wrong ...
    fixed = set(count_ids[12:14])  # ... and these right where the first gets them wrong

    def first(r):
        return "wrong" if r.id in fixed else answers[r.id][1]

    def second(r):
        return "wrong" if r.id in broken else answers[r.id][1]

    a, b = (evaluate(ScriptedPipe(f), seeds, decoding=None, batch_size=4) for f in (first, second))
    for r in (a, b):
        r["settings"] = {"image_seeds": {"start": seeds.start, "stop": seeds.stop}, "blank_experts": False}
    by_key = paired(b, a)
    count = by_key["count"]
    assert (count["only_ours_right"], count["only_baseline_right"]) == (2, 12)
    assert count["difference_points"] == pytest.approx(100 * (b["accuracy"]["count"] - a["accuracy"]["count"]))
    assert count["p_value"] == pytest.approx(mcnemar_exact(2, 12)) and count["p_value"] < 0.05
    assert by_key["colour"]["only_ours_right"] == by_key["colour"]["only_baseline_right"] == 0
    assert by_key["colour"]["p_value"] == 1.0
    a["settings"]["image_seeds"] = {"start": seeds.start + 1, "stop": seeds.stop + 1}
    with pytest.raises(InputError, match="image_seeds"):
        paired(b, a)


def test_cli_against_an_earlier_report(tiny_packages, tmp_path, capsys):
    engine = str(tiny_packages["moai"])
    assert main(["eval", "--engine", engine, *FAST, "--out", str(tmp_path / "a")]) == 0
    assert main(["eval", "--engine", engine, *FAST, "--out", str(tmp_path / "b"),
                 "--against", str(tmp_path / "a")]) == 0
    assert "against" in capsys.readouterr().out
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    for key, r in report["against"]["by_key"].items():  # the same package answers the same: nothing discordant
        assert r["only_ours_right"] == r["only_baseline_right"] == 0 and r["p_value"] == 1.0
        assert r["questions"] == report["questions"][key]
    assert "## Against" in (tmp_path / "b" / "report.md").read_text()
    old = json.loads((tmp_path / "a" / "report.json").read_text())
    del old["outcomes"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    for against, message in ((tmp_path / "nothing", "could not read"), (tmp_path / "old.json", "outcomes")):
        assert main(["eval", "--engine", engine, *FAST, "--out", str(tmp_path / "c"), "--against", str(against)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
