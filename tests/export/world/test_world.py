"""The tiny world's generator: determinism, scene invariants, panoptic ground truth, questions, sign legibility."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from moai_edge.engines.errors import MoaiEdgeError
from moai_edge.export.world import (COLOURS, HELD_OUT_SEEDS, HELD_OUT_WORDS, PANOPTIC_CATEGORIES, QA, SHAPES,
                                    TRAINING_SEEDS, TRAINING_WORDS, Scene, Sign, WorldError, WorldObject,
                                    describe_counts, describe_scene, generate, is_held_out_seed, questions_for,
                                    render_scene, sample_scene)
from moai_edge.export.world.render import FIRST_OBJECT_ID
from moai_edge.export.world.scene import boxes_near, font_path

TRAIN_SAMPLE = range(300)
HELD_OUT_SAMPLE = range(HELD_OUT_SEEDS.start, HELD_OUT_SEEDS.start + 300)


@pytest.fixture(scope="module")
def worlds():
    """40 rendered images, half from each seed range."""
    return [generate(s) for s in (*range(20), *range(HELD_OUT_SEEDS.start, HELD_OUT_SEEDS.start + 20))]


def hand_scene(objects: list[tuple[str, str]], sign_word: str | None = None) -> Scene:
    """A 400x300 scene with objects of (colour, shape) in a row, at 50 px steps."""
    placed = tuple(WorldObject(shape, colour, (10 + 50 * k, 200, 50 + 50 * k, 240), (128, 128, 128))
                   for k, (colour, shape) in enumerate(objects))
    sign = (Sign(sign_word, (20, 20, 200, 60), "DejaVuSans-Bold.ttf", 24, (250, 250, 240), (0, 0, 0)) if sign_word
            else None)
    return Scene(None, 400, 300, 150, placed, sign)


# -- determinism and variety ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 5, 123, HELD_OUT_SEEDS.start + 3])
def test_same_seed_gives_the_same_bytes(seed):
    first, second = generate(seed), generate(seed)
    assert first.scene == second.scene
    assert first.png_bytes() == second.png_bytes()
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.panoptic.segmentation, second.panoptic.segmentation)
    assert first.panoptic.segments == second.panoptic.segments
    assert generate(seed + 1).png_bytes() != first.png_bytes()


def test_images_vary_in_size_rendering_and_contents():
    scenes = [sample_scene(s) for s in TRAIN_SAMPLE]
    assert {s.style.supersample for s in scenes} == {1, 2, 3, 4}
    assert len({s.style.noise for s in scenes}) > 2
    shorts = [min(s.width, s.height) for s in scenes]
    assert min(shorts) < 280 and max(shorts) > 440
    aspects = [max(s.width, s.height) / min(s.width, s.height) for s in scenes]
    assert min(aspects) < 1.05 and max(aspects) > 1.28
    assert 0.6 < np.mean([s.width >= s.height for s in scenes]) < 0.9  # landscape three times in four
    assert 0.35 < np.mean([s.sign is not None for s in scenes]) < 0.65
    assert {len(s.objects) for s in scenes} == set(range(1, 9))
    assert {n for s in scenes for n in s.counts().values()} == {1, 2, 3, 4}
    assert {o.category for s in scenes for o in s.objects} == {f"{c} {s}" for c in COLOURS for s in SHAPES}


# -- scene invariants ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seeds", [TRAIN_SAMPLE, HELD_OUT_SAMPLE], ids=["training", "held-out"])
def test_scenes_keep_the_world_rules(seeds):
    for seed in seeds:
        scene = sample_scene(seed)
        short, long = sorted((scene.width, scene.height))
        assert 240 <= short <= 480 and long <= round(short * 4 / 3)  # cameras: 4:3 at most
        assert 0.35 * scene.height - 1 <= scene.horizon <= 0.65 * scene.height + 1
        counts = scene.counts()
        assert 1 <= len(counts) <= 4 and all(1 <= n <= 4 for n in counts.values()) and len(scene.objects) <= 8
        boxes = [o.box for o in scene.objects] + ([scene.sign.box] if scene.sign else [])
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            assert 0 <= x0 < x1 <= scene.width and 0 <= y0 < y1 <= scene.height, (seed, boxes[k])
            assert not any(boxes_near(boxes[k], other, 0) for other in boxes[k + 1:]), f"seed {seed}: overlap"
        for o in scene.objects:
            assert o.box[2] - o.box[0] == o.box[3] - o.box[1] >= max(20, int(0.10 * short))
        order = [(SHAPES.index(o.shape), COLOURS.index(o.colour), o.box[0]) for o in scene.objects]
        assert order == sorted(order)


def test_training_seeds_never_show_held_out_words():
    train_words = {sample_scene(s).sign_word for s in range(2000)} - {None}
    held_out_words = {sample_scene(s).sign_word for s in range(HELD_OUT_SEEDS.start, HELD_OUT_SEEDS.start + 2000)}
    assert train_words == set(TRAINING_WORDS)
    assert held_out_words & set(HELD_OUT_WORDS) and held_out_words & set(TRAINING_WORDS)


def test_vocabularies_are_disjoint_capital_words():
    for words in (TRAINING_WORDS, HELD_OUT_WORDS):
        assert len(set(words)) == len(words)
        assert all(w.isascii() and w.isalpha() and w.isupper() and 3 <= len(w) <= 8 for w in words)
    assert not set(TRAINING_WORDS) & set(HELD_OUT_WORDS)
    assert len({"".join(sorted(w)) for w in TRAINING_WORDS}) == len(TRAINING_WORDS)  # no anagrams (bag of letters)


def test_seed_ranges_do_not_overlap():
    assert TRAINING_SEEDS.stop == HELD_OUT_SEEDS.start and TRAINING_SEEDS.start == 0
    assert not is_held_out_seed(TRAINING_SEEDS.stop - 1) and is_held_out_seed(HELD_OUT_SEEDS.start)
    for bad in (-1, HELD_OUT_SEEDS.stop, 1.5, "7"):
        with pytest.raises(WorldError, match="world seed"):
            sample_scene(bad)


def test_a_missing_font_is_named():
    with pytest.raises(WorldError, match="NoSuchFont.ttf") as caught:
        font_path("NoSuchFont.ttf")
    assert isinstance(caught.value, MoaiEdgeError) and "matplotlib" in str(caught.value)


# -- panoptic ground truth ----------------------------------------------------------------------------------

def ideal_area(shape: str, side: int) -> float:
    return {"circle": math.pi * side * side / 4, "square": side * side, "triangle": side * side / 2}[shape]


def test_panoptic_segments_cover_the_image(worlds):
    for world in worlds:
        seg, segments = world.panoptic.segmentation, world.panoptic.segments
        assert seg.dtype == np.int32 and seg.shape == world.image.shape[:2] == (world.scene.height, world.scene.width)
        assert set(np.unique(seg).tolist()) == {s.id for s in segments}
        assert all(s.category in PANOPTIC_CATEGORIES for s in segments)
        stuff = [s.category for s in segments if not s.is_thing]
        assert stuff == ["wall", "floor"] + (["sign"] if world.scene.sign else [])
        things = [s for s in segments if s.is_thing]
        assert Counter(s.category for s in things) == Counter(o.category for o in world.scene.objects)
        for category in {s.category for s in things}:
            assert [s.ordinal for s in things if s.category == category] == list(
                range(1, sum(s.category == category for s in things) + 1))


def test_every_object_keeps_its_pixels_in_its_instance_mask(worlds):
    for world in worlds:
        seg = world.panoptic.segmentation
        for k, obj in enumerate(world.scene.objects):
            mask = seg == FIRST_OBJECT_ID + k
            x0, y0, x1, y1 = obj.box
            assert mask[y0:y1, x0:x1].sum() == mask.sum(), "an instance mask leaves its box"
            ratio = mask.sum() / ideal_area(obj.shape, x1 - x0)
            assert 0.9 < ratio < 1.1, (world.scene.seed, obj, ratio)
            mean_rgb = world.image[mask].astype(np.float64).mean(0)
            assert np.abs(mean_rgb - obj.rgb).max() < 12, (world.scene.seed, obj, mean_rgb)


def test_stuff_follows_the_horizon_and_the_sign(worlds):
    for world in worlds:
        scene, seg = world.scene, world.panoptic.segmentation
        assert (seg[: scene.horizon] != 2).all() and (seg[scene.horizon:] != 1).all()
        if scene.sign:
            x0, y0, x1, y1 = scene.sign.box
            assert (seg[y0:y1, x0:x1] == 3).all() and (seg == 3).sum() == (x1 - x0) * (y1 - y0)


# -- questions and the canonical description ---------------------------------------------------------------

def test_canonical_descriptions_of_hand_built_scenes():
    scene = hand_scene([("blue", "square"), ("red", "circle"), ("yellow", "triangle"), ("red", "circle")], "STOP")
    assert describe_scene(scene) == "2 red circles, 1 blue square and 1 yellow triangle; the sign says STOP."
    assert describe_scene(hand_scene([("green", "triangle")])) == "1 green triangle."
    assert describe_scene(hand_scene([("yellow", "square"), ("green", "square")] * 2)) == \
        "2 green squares and 2 yellow squares."
    assert describe_scene(hand_scene([], "EXIT")) == "no objects; the sign says EXIT."
    assert describe_counts({("blue", "triangle"): 4, ("red", "triangle"): 1, ("green", "circle"): 3}, None) == \
        "3 green circles, 1 red triangle and 4 blue triangles."


def test_questions_for_a_hand_built_scene():
    scene = hand_scene([("red", "circle"), ("red", "circle"), ("blue", "square")], "ZEBRA")
    qas = questions_for(scene, random.Random(0), absent_probability=1.0)
    absent = qas[2]
    assert absent.question_type == "count" and absent.answer == "0"
    assert qas[:2] + qas[3:] == [
        QA("count", "How many red circles are there?", "2"),
        QA("count", "How many blue squares are there?", "1"),
        QA("colour", "What colour is the square?", "blue"),
        QA("sign", "What does the sign say?", "ZEBRA"),
        QA("describe", "Describe the image.", "2 red circles and 1 blue square; the sign says ZEBRA."),
    ]
    no_sign = questions_for(hand_scene([("green", "triangle")]), random.Random(0), absent_probability=0.0)
    assert QA("sign", "What does the sign say?", "none") in no_sign
    assert QA("colour", "What colour is the triangle?", "green") in no_sign


def test_generated_answers_agree_with_the_panoptic_truth(worlds):
    rng = random.Random(0)
    seen = Counter()
    for world in worlds:
        things = Counter(s.category for s in world.panoptic.segments if s.is_thing)
        for question_type, question, answer in questions_for(world.scene, rng):
            seen[question_type] += 1
            if question_type == "count":
                colour, shape = question.removeprefix("How many ").removesuffix("s are there?").split()
                assert answer == str(things[f"{colour} {shape}"])
                seen["absent"] += answer == "0"
            elif question_type == "colour":
                shape = question.removeprefix("What colour is the ").removesuffix("?")
                assert ([c for c in things if c.endswith(shape)] == [f"{answer} {shape}"]
                        and things[f"{answer} {shape}"] == 1)
            elif question_type == "sign":
                assert answer == (world.scene.sign_word or "none")
            else:
                assert question == "Describe the image." and answer == describe_scene(world.scene)
    assert seen["sign"] == seen["describe"] == len(worlds) and seen["colour"] > 5 and 5 < seen["absent"] < 35


# -- packaging and legibility -------------------------------------------------------------------------------

def test_the_world_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import moai_edge.export.world as w; w.generate(1)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hand_built_scenes_render():
    world = render_scene(hand_scene([("red", "circle"), ("blue", "triangle")], "HELLO"))
    assert world.image.shape == (300, 400, 3) and [s.category for s in world.panoptic.segments] == [
        "wall", "floor", "sign", "red circle", "blue triangle"]


@pytest.mark.slow
def test_pp_ocr_reads_the_signs():
    """The real PP-OCR (rapidocr's graphs) reads the sign word on 10 training and 10 held-out images."""
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    reader = rapidocr.RapidOCR()
    seeds = [s for s in TRAIN_SAMPLE if sample_scene(s).sign][:10] + [
        s for s in HELD_OUT_SAMPLE if sample_scene(s).sign][:10]
    misses = []
    for seed in seeds:
        world = generate(seed)
        result, _ = reader(world.image)
        texts = [text.replace(" ", "") for _, text, _ in result or []]
        if world.scene.sign_word not in texts:
            misses.append((seed, world.scene.sign_word, texts))
    rate = 1 - len(misses) / len(seeds)
    print(f"PP-OCR read {rate:.0%} of {len(seeds)} signs; misses: {misses}")
    assert rate >= 0.8, misses
