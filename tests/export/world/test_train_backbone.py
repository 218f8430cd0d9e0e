"""The backbone training script stays alive: it learns, it is deterministic from a seed, it trains on what the
runtime feeds, and what it saves is a checkpoint the real loader and exporter take."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from moai_edge.export.build import export_checkpoint
from moai_edge.export.checkpoint import load_checkpoint
from moai_edge.export.experts.panoptic import build_tiny_panoptic
from moai_edge.export.tiny import build_tiny_checkpoint
from moai_edge.export.world import HELD_OUT_WORDS, PANOPTIC_CATEGORIES
from moai_edge.export.world.build import world_experts
from moai_edge.export.world.tokenizer import train_world_tokenizer
from moai_edge.export.world.train_backbone import (Batcher, BackboneRecipe, collect_examples, random_word,
                                                   train_backbone, with_sign_word)
from moai_edge.runtime.pipeline import Pipeline

FEW = BackboneRecipe(images=3, steps=2, images_per_step=2)


@pytest.fixture(scope="module", params=["moai", "collavo"])
def start(request, tmp_path_factory):
    """(untrained tiny checkpoint with the world tokenizer, its package with world-labelled experts)."""
    family = request.param
    root = tmp_path_factory.mktemp(f"world-{family}")
    initial = build_tiny_checkpoint(family, root / "initial", preset="tiny", seed=0,
                                    train_tokenizer=train_world_tokenizer)
    panoptic = build_tiny_panoptic(root / "panoptic", family=family, preset="tiny", labels=list(PANOPTIC_CATEGORIES),
                                   seed=0)
    export_checkpoint(initial, root / "package", family=family, validate=False,
                      experts=world_experts(family, panoptic, root / "experts"))
    return initial, root / "package"


def weights(path):
    return load_checkpoint(path)[0].state_dict()


def test_same_seed_gives_identical_weights_and_the_result_exports(start, tmp_path):
    initial, package = start
    a = train_backbone(initial, package, tmp_path / "a", recipe=FEW, seed=3, threads=1, log=None)
    b = train_backbone(initial, package, tmp_path / "b", recipe=FEW, seed=3, threads=1, log=None)
    wa, wb, w0 = weights(a), weights(b), weights(initial)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["output.weight"], w0["output.weight"])
    log = json.loads((a / "train_log.json").read_text())
    assert len(log["losses"]) == FEW.steps and log["seed"] == 3
    manifest = export_checkpoint(a, tmp_path / "pkg", validate=True, with_experts=False)  # parity-checked export
    assert manifest.family == load_checkpoint(initial)[0].cfg.family


def test_loss_goes_down_on_fixed_images(start):
    initial, package = start
    model, _ = load_checkpoint(initial)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with Pipeline.load(package, threads=1) as pipe:
        examples = collect_examples(pipe, [11, 12], log=None)
        batcher = Batcher(model.train(), pipe)
        losses = []
        for _ in range(15):
            loss = batcher.loss(examples)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_first_answer_token_sees_what_the_runtime_feeds(start):
    """The training prefill's last logits for a row are the packaged prefill graph's for the same prompt."""
    initial, package = start
    model, _ = load_checkpoint(initial)
    with Pipeline.load(package, threads=1) as pipe, torch.no_grad():
        (example,) = collect_examples(pipe, [21], log=None)
        batcher = Batcher(model.eval(), pipe)
        qa = example.qas[0]
        one = type(example)(example.pixels, example.aux, [qa])
        captured = {}
        original = model.prefill

        def spy(*args, **kwargs):
            captured["logits"], kv = original(*args, **kwargs)
            return captured["logits"], kv

        model.prefill = spy
        batcher.loss([one])
        result = pipe.ask(np.asarray(generate_image(21)), qa.question, aux=example.aux, decoding="greedy",
                          max_new_tokens=1)
    assert int(captured["logits"][0].argmax()) == result.tokens[0]


def generate_image(seed):
    from moai_edge.export.world import generate

    return generate(seed).image


def test_copy_augmentation_swaps_the_word_everywhere_it_is_named(start):
    _, package = start
    with Pipeline.load(package, threads=1) as pipe:
        examples = collect_examples(pipe, list(range(40)), log=None)
    family = load_checkpoint(start[0])[0].cfg.family
    swapped = [s for s in (with_sign_word(ex, "QWERTY") for ex in examples) if s is not None]
    if family == "collavo":  # no OCR text to swap
        assert swapped == []
        return
    assert swapped, "no training image had a sign the OCR read exactly"
    for s in swapped:
        answers = {qa.question_type: qa.answer for qa in s.qas}
        assert answers["sign"] == "QWERTY" and answers["describe"].endswith("; the sign says QWERTY.")
        assert "The image includes text descriptions: QWERTY." in s.aux.verbalized
    draws = random.Random(0)
    words = [random_word(draws) for _ in range(2000)]
    assert not set(words) & set(HELD_OUT_WORDS) and all(3 <= len(w) <= 8 and w.isupper() for w in words)
