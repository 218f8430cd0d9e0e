"""The image cache: a second question about the same image runs only the backbone, with the same answer."""

from __future__ import annotations

import numpy as np
import pytest

from moai_edge.engines.errors import InputError
from moai_edge.runtime import Pipeline, RuntimeOptions
from moai_edge.runtime import AuxInputs
from moai_edge.runtime.image_cache import ImageCache, image_key
from moai_edge.runtime.observation import Observation
from moai_edge.runtime.samples import sample_image

QUESTIONS = ("What is in the image?", "Describe the image.")


def test_a_second_question_skips_the_experts_and_the_tower_and_answers_the_same(tiny_packages, tmp_path):
    image = sample_image(size=180, seed=3)
    path = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(image).save(path)
    with Pipeline.load(tiny_packages["moai"], RuntimeOptions(threads=1)) as plain:
        expected = [plain.ask(image, q) for q in QUESTIONS]
    with Pipeline.load(tiny_packages["moai"], RuntimeOptions(threads=1, image_cache_mb=64)) as pipe:
        first = pipe.ask(image, QUESTIONS[0])
        second = pipe.ask(path, QUESTIONS[1])  # the same picture from a file: the same decoded pixels
        assert (pipe.image_cache.hits, pipe.image_cache.misses) == (1, 1)
    assert {"vision", "experts"} <= set(first.timings_ms) and not {"vision", "experts"} & set(second.timings_ms)
    for got, want in zip((first, second), expected):
        assert got.tokens == want.tokens and got.experts == want.experts and got.verbalized == want.verbalized


def test_given_aux_inputs_cache_the_features_but_not_experts(tiny_packages):
    image = sample_image(size=150, seed=4)
    with Pipeline.load(tiny_packages["moai"], RuntimeOptions(threads=1, image_cache_mb=64)) as pipe:
        pipe.ask(image, QUESTIONS[0], aux=AuxInputs())  # no experts run: only the features are kept
        with_experts = pipe.ask(image, QUESTIONS[0])  # needs the experts: a miss
        assert "experts" in with_experts.timings_ms and (pipe.image_cache.hits, pipe.image_cache.misses) == (0, 2)


def entry(kb: int) -> Observation:
    return Observation(features=np.zeros(kb * 256, np.float32))


def test_one_image_twice_in_a_batch_is_seen_once(tiny_packages):
    image, other = sample_image(size=160, seed=5), sample_image(size=160, seed=6)
    images, questions = [image, other, image], [QUESTIONS[0], QUESTIONS[0], QUESTIONS[1]]
    with Pipeline.load(tiny_packages["moai"], RuntimeOptions(threads=1)) as plain:
        expected = plain.ask_batch(images, questions, decoding="greedy", max_new_tokens=6)
    with Pipeline.load(tiny_packages["moai"], RuntimeOptions(threads=1, image_cache_mb=64)) as pipe:
        see, seen = pipe.see, []
        pipe.see = lambda pixels, *args: seen.append(len(pixels)) or see(pixels, *args)
        got = pipe.ask_batch(images, questions, decoding="greedy", max_new_tokens=6)
        assert seen == [2] and len(pipe.image_cache.entries) == 2  # the experts and the tower ran on two images
    for g, e in zip(got, expected):
        assert g.tokens == e.tokens and g.experts == e.experts and g.verbalized == e.verbalized


def test_the_cache_holds_at_most_its_bytes_and_drops_the_least_recently_used():
    cache = ImageCache(max_bytes=3 * 1024)
    for key in "abc":
        cache.put(key, entry(1))
    assert cache.get("a", need_experts=False) is not None  # a is now the most recent
    cache.put("d", entry(1))
    assert list(cache.entries) == ["c", "a", "d"] and cache.bytes == 3 * 1024
    cache.put("e", entry(2))
    assert list(cache.entries) == ["d", "e"] and cache.bytes <= cache.max_bytes
    cache.put("huge", entry(4))  # larger than the whole cache: not kept
    assert "huge" not in cache.entries and cache.bytes <= cache.max_bytes


def test_the_key_is_the_pixels():
    a = sample_image(size=64, seed=1)
    assert image_key(a) == image_key(a.copy()) != image_key(sample_image(size=64, seed=2))


def test_a_bad_size_is_refused():
    with pytest.raises(InputError, match="image_cache_mb: expected an integer >= 0 .* found -1"):
        RuntimeOptions(image_cache_mb=-1)

