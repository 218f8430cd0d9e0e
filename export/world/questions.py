"""The world's questions and their true answers, in exactly the templates other tools ask.

    count     "How many {colour} {shape}s are there?"  -> the count as a digit ("3"; "0" when absent)
    colour    "What colour is the {shape}?"             -> the colour word; asked only when one object
                                                           has that shape
    sign      "What does the sign say?"                 -> the word as written ("STOP"), "none" without a sign
    describe  "Describe the image."                      -> the canonical description below

The canonical description (`describe_scene`), one sentence:

    description := objects [sign_clause] "."
    objects     := "no objects" | item | item (", " item)* " and " item
    item        := COUNT " " colour " " shape ["s" when COUNT > 1]
    sign_clause := "; the sign says " WORD

COUNT is a digit (1-4), as in the count answers. Items are one per colour-shape kind present, in shape
order circle, square, triangle, then colour order red, green, blue, yellow; no serial comma. Without a
sign there is no sign clause. Examples: "2 red circles, 1 blue square and 1 yellow triangle; the sign
says STOP." and "1 green triangle."
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from .scene import COLOURS, SHAPES, Draws, Scene, SupportsRandom, WorldError

QUESTION_TYPES: tuple[str, ...] = ("count", "colour", "sign", "describe")
COUNT_TEMPLATE = "How many {colour} {shape}s are there?"
COLOUR_TEMPLATE = "What colour is the {shape}?"
SIGN_QUESTION = "What does the sign say?"
DESCRIBE_QUESTION = "Describe the image."
NO_SIGN_ANSWER = "none"
SIGN_CLAUSE = "; the sign says "


class QA(NamedTuple):
    question_type: str  # one of QUESTION_TYPES
    question: str
    answer: str


def count_qa(scene: Scene, colour: str, shape: str) -> QA:
    return QA("count", COUNT_TEMPLATE.format(colour=colour, shape=shape), str(scene.counts()[(colour, shape)]))


def colour_qa(scene: Scene, shape: str) -> QA:
    matches = [o for o in scene.objects if o.shape == shape]
    if len(matches) != 1:
        raise WorldError(f"'What colour is the {shape}?' needs exactly one {shape}; the scene has {len(matches)}")
    return QA("colour", COLOUR_TEMPLATE.format(shape=shape), matches[0].colour)


def sign_qa(scene: Scene) -> QA:
    return QA("sign", SIGN_QUESTION, scene.sign_word or NO_SIGN_ANSWER)


def describe_qa(scene: Scene) -> QA:
    return QA("describe", DESCRIBE_QUESTION, describe_scene(scene))


def describe_scene(scene: Scene) -> str:
    return describe_counts(scene.counts(), scene.sign_word)


def describe_counts(counts: Mapping[tuple[str, str], int], sign_word: str | None) -> str:
    """The canonical description of (colour, shape) -> count and the sign's word (None: no sign)."""
    items = [describe_kind(counts[(c, s)], c, s) for s in SHAPES for c in COLOURS if counts.get((c, s), 0) > 0]
    sentence = join_items(items) if items else "no objects"
    if sign_word is not None:
        sentence += SIGN_CLAUSE + sign_word
    return sentence + "."


def describe_kind(count: int, colour: str, shape: str) -> str:
    return f"{count} {colour} {shape}{'s' if count > 1 else ''}"


def join_items(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def questions_for(scene: Scene, rng: SupportsRandom, *, absent_probability: float = 0.5) -> list[QA]:
    """Every question the scene answers: a count per kind present (and, with `absent_probability`, one
    absent kind, answer "0"), a colour question per shape that occurs once, the sign and the description.

    `rng` is anything with `random()` (random.Random, a numpy Generator); it only picks the absent kind."""
    draws = Draws(rng)
    counts = scene.counts()
    present = [(c, s) for s in SHAPES for c in COLOURS if counts[(c, s)] > 0]
    qas = [count_qa(scene, c, s) for c, s in present]
    absent = [(c, s) for s in SHAPES for c in COLOURS if counts[(c, s)] == 0]
    if absent and draws.chance(absent_probability):
        qas.append(count_qa(scene, *draws.choice(absent)))
    qas += [colour_qa(scene, s) for s in SHAPES if scene.shape_count(s) == 1]
    return qas + [sign_qa(scene), describe_qa(scene)]
