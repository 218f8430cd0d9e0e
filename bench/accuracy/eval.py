"""`moai-edge eval`: accuracy per question type on held-out images of the tiny world (export/world), for any
engine package (a random-weight one scores about 0; the point is the same figure for every precision and engine).

Images: `--seed S` selects the held-out world seeds `HELD_OUT_SEEDS.start + S * SEED_STRIDE` onward, N in a row,
so two seeds never share an image. Each image's questions are `questions_for(scene, random.Random(image_seed))`
(the rng only picks the absent kind of the extra count question), so a seed asks the same questions everywhere.

Scoring (`score_answer`), after stripping surrounding whitespace from both sides:
    count     the digit, exactly ("3"; "three" or "3." are wrong)
    colour    the colour word, case-insensitive ("Red" == "red")
    sign      the word exactly as written ("STOP"; "Stop" is wrong); "none" (no sign) case-insensitive
    describe  the canonical sentence exactly (export/world/questions.py defines it)
`unseen_sign_word` is the sign questions whose word is in HELD_OUT_WORDS (never in training): the copy rate. Those
questions count in `sign` too.

Decoding is greedy with the package's end-of-sequence tokens and, unless given, its `max_new_tokens`. Rows are the
(image, question) pairs, `batch_size` per `run`. The experts run once per image and their inputs (the family's
`aux_inputs`) go with each of its questions as `Request.aux`: the same inputs `Pipeline.run` derives per request,
without running the experts again for every question. `blank_experts` gives every request `AuxInputs()`, the
reference's empty case: the ablation that shows what the experts add.

The report keeps each question's outcome by question id, so `--against` (bench.eval_paired) can pair two packages'
answers to the same questions.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from moai_edge.engines.decoding import DecodingConfig
from moai_edge.engines.errors import InputError
from moai_edge.engines.manifest import Manifest, sha256_of
from moai_edge.engines.options import RuntimeOptions
from moai_edge.export.world import (HELD_OUT_SEEDS, HELD_OUT_WORDS, NO_SIGN_ANSWER, QUESTION_TYPES, generate,
                                   questions_for)
from moai_edge.runtime import AuxInputs, Request, check_batch_size, check_generation, check_range

from ..machine import machine_info

ACCURACY_KEYS: tuple[str, ...] = (*QUESTION_TYPES, "unseen_sign_word")
CASE_INSENSITIVE = ("count", "colour")
SEED_STRIDE = 1_000_000  # --seed S starts S strides into HELD_OUT_SEEDS; at most this many images per seed
MAX_EXAMPLES = 10  # wrong answers kept per accuracy key


@dataclass
class EvalConfig:
    engine_dir: Path
    images: int = 100
    seed: int = 0
    blank_experts: bool = False
    batch_size: int = 8
    max_new_tokens: int | None = None  # None: the package's generation default
    options: RuntimeOptions = field(default_factory=RuntimeOptions)


class Item(NamedTuple):
    id: str
    image_seed: int
    question_type: str
    question: str
    expected: str


def image_seeds(seed: int, images: int) -> range:
    """The held-out world seeds `--seed` and `--images` select; InputError when they leave the held-out range."""
    check_range("images", images, 1, SEED_STRIDE)
    check_range("seed", seed, 0, (len(HELD_OUT_SEEDS) - images) // SEED_STRIDE)
    start = HELD_OUT_SEEDS.start + seed * SEED_STRIDE
    return range(start, start + images)


def score_answer(question_type: str, expected: str, got: str) -> bool:
    """Whether `got` answers a question of `question_type` (an ACCURACY_KEYS entry) whose true answer is `expected`."""
    if question_type not in ACCURACY_KEYS:
        raise InputError(f"question type: expected one of {ACCURACY_KEYS}, found {question_type!r}")
    expected, got = expected.strip(), got.strip()
    if question_type in CASE_INSENSITIVE or (question_type == "sign" and expected.lower() == NO_SIGN_ANSWER):
        return expected.lower() == got.lower()
    return expected == got


def accuracy_keys(item: Item) -> tuple[str, ...]:
    """The accuracy keys an item counts in: its type, and `unseen_sign_word` for a held-out sign word."""
    unseen = item.question_type == "sign" and item.expected in HELD_OUT_WORDS
    return (item.question_type, "unseen_sign_word") if unseen else (item.question_type,)


class Tally:
    """Questions, correct answers, each question's outcome (by item id, for `eval --against`) and the first
    MAX_EXAMPLES wrong answers per accuracy key."""

    def __init__(self, max_examples: int = MAX_EXAMPLES):
        self.max_examples = max_examples
        self.questions = dict.fromkeys(ACCURACY_KEYS, 0)
        self.correct = dict.fromkeys(ACCURACY_KEYS, 0)
        self.outcomes: dict[str, dict[str, bool]] = {k: {} for k in ACCURACY_KEYS}
        self.examples: dict[str, list[dict]] = {k: [] for k in ACCURACY_KEYS}

    def add(self, item: Item, got: str) -> None:
        right = score_answer(item.question_type, item.expected, got)
        for key in accuracy_keys(item):
            self.questions[key] += 1
            self.correct[key] += right
            self.outcomes[key][item.id] = right
            if not right and len(self.examples[key]) < self.max_examples:
                self.examples[key].append({"question": item.question, "expected": item.expected, "got": got,
                                           "image_seed": item.image_seed})

    def accuracy(self) -> dict[str, float | None]:
        return {k: self.correct[k] / n if (n := self.questions[k]) else None for k in ACCURACY_KEYS}


def world_items(seeds: range) -> Iterator[tuple[object, list[Item]]]:
    """Per held-out seed: the rendered image (HxWx3 uint8) and its questions, generated lazily."""
    for seed in seeds:
        world = generate(seed)
        qas = questions_for(world.scene, random.Random(seed))
        yield world.image, [Item(f"{seed}-{k}", seed, qa.question_type, qa.question, qa.answer)
                            for k, qa in enumerate(qas)]


def expert_aux(pipe, image) -> AuxInputs | None:
    """The family's inputs from the experts on `image`, computed once for all its questions (Pipeline.aux_inputs);
    None for an object that only has `run` (then `run` decides)."""
    aux_inputs = getattr(pipe, "aux_inputs", None)
    return aux_inputs(image) if aux_inputs is not None else None


def evaluate(pipe, seeds: range, *, decoding: DecodingConfig | None, batch_size: int = 8, blank_experts: bool = False,
             max_examples: int = MAX_EXAMPLES) -> dict:
    """Ask every question of the images of `seeds` through `pipe.run` (a Pipeline, or any object with
    `run(list[Request]) -> list[Result]`), `batch_size` rows at a time; score each answer. Returns accuracy,
    questions, correct, examples and timing."""
    check_batch_size(batch_size)
    tally, pending = Tally(max_examples), []
    t0, expert_s = time.perf_counter(), 0.0

    def flush():
        results = pipe.run([request for _, request in pending])
        by_id = {r.id: r.answer for r in results}
        for item, _ in pending:
            tally.add(item, by_id[item.id])
        pending.clear()

    for image, items in world_items(seeds):
        t = time.perf_counter()
        aux = AuxInputs() if blank_experts else expert_aux(pipe, image)
        expert_s += time.perf_counter() - t
        for item in items:
            pending.append((item, Request(image, item.question, decoding, id=item.id, aux=aux)))
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    wall = time.perf_counter() - t0
    asked = sum(tally.questions[k] for k in QUESTION_TYPES)
    return {"accuracy": tally.accuracy(), "questions": tally.questions, "correct": tally.correct,
            "outcomes": tally.outcomes, "examples": tally.examples,
            "timing": {"wall_s": wall, "experts_s": expert_s, "images_per_s": len(seeds) / wall,
                       "questions_per_s": asked / wall}}


def package_info(manifest: Manifest, engine_dir: Path) -> dict:
    return {"engine": str(engine_dir), "family": manifest.family,
            "manifest_sha256": sha256_of(Path(engine_dir) / "manifest.json"),
            "precision": {name: c.precision for name, c in manifest.components.items()}}


def run_eval(cfg: EvalConfig) -> dict:
    """Load the package, evaluate it and return the whole report (what eval_report writes)."""
    from moai_edge.runtime import Pipeline

    seeds = image_seeds(cfg.seed, cfg.images)
    check_batch_size(cfg.batch_size)  # everything that can be refused is, before the package loads
    t0 = time.perf_counter()
    with Pipeline.load(cfg.engine_dir, cfg.options) as pipe:
        load_s = time.perf_counter() - t0
        decoding = pipe.decoding("greedy", max_new_tokens=cfg.max_new_tokens)
        check_generation(pipe.manifest.model, max_new_tokens=decoding.max_new_tokens, rows=cfg.batch_size,
                         itemsize=pipe.backbone.kv_itemsize)
        result = evaluate(pipe, seeds, decoding=decoding, batch_size=cfg.batch_size, blank_experts=cfg.blank_experts)
        package = package_info(pipe.manifest, cfg.engine_dir)
    result["timing"]["load_s"] = load_s
    settings = {"images": cfg.images, "seed": cfg.seed, "image_seeds": {"start": seeds.start, "stop": seeds.stop},
                "blank_experts": cfg.blank_experts, "batch_size": cfg.batch_size, "decoding": "greedy",
                "max_new_tokens": decoding.max_new_tokens, "device": cfg.options.device}
    return {"package": package, "settings": settings, **result,
            "machine": machine_info(threads=cfg.options.threads, engine_dir=cfg.engine_dir)}
