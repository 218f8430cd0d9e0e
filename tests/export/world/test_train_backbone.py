"""The backbone training script stays alive: it learns, it is deterministic from a seed, it trains on what the
runtime feeds, and what it saves is a checkpoint the real loader and exporter take."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moai_edge.export.build import export_checkpoint
from moai_edge.export.checkpoint import load_checkpoint
from moai_edge.export.experts.panoptic import build_tiny_panoptic
from moai_edge.export.tiny import build_tiny_checkpoint
from moai_edge.export.world import PANOPTIC_CATEGORIES
from moai_edge.export.world.build import silenced, world_experts
from moai_edge.export.world.tokenizer import train_world_tokenizer
from moai_edge.export.world.train_backbone import (Batcher, BackboneRecipe, HeldOutCheck, collect_examples,
                                                   train_backbone, train_steps)
from moai_edge.runtime import Pipeline

FEW = BackboneRecipe(images=3, steps=2, images_per_step=2, check_every=0, check_images=2)


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
                      experts=world_experts(family, panoptic, root / "experts"), expert_settings=silenced(family))
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


def test_each_question_weighs_the_same_in_the_loss(start):
    """The loss is the mean over questions of each answer's mean token loss: a one-word answer weighs what a
    description weighs."""
    initial, package = start
    model, _ = load_checkpoint(initial)
    with Pipeline.load(package, threads=1) as pipe, torch.no_grad():
        examples = collect_examples(pipe, [31], log=None)
        batcher = Batcher(model.eval(), pipe)
        logits, target = batcher.forward(examples)
        per_question = [torch.nn.functional.cross_entropy(row_logits[row_target >= 0], row_target[row_target >= 0])
                        for row_logits, row_target in zip(logits, target)]
        lengths = (target >= 0).sum(-1)
        assert lengths.min() < lengths.max()  # answers of different lengths
        assert torch.allclose(batcher.loss(examples), torch.stack(per_question).mean(), rtol=1e-5)


def test_a_run_below_chance_at_its_deadline_stops_and_says_so(start):
    initial, package = start
    model, _ = load_checkpoint(initial)
    recipe = BackboneRecipe(images=2, steps=6, images_per_step=1, lr=0.0, check_every=2, check_images=3, give_up_at=2)
    with Pipeline.load(package, threads=1) as pipe:
        examples = collect_examples(pipe, [41, 42], log=None)
        check = HeldOutCheck(pipe, recipe.check_images, log=None)
        losses, curve, gave_up = train_steps(model.train(), Batcher(model, pipe), examples, check, recipe, 0, 0, None)
    assert {"count", "sign", "describe"} <= set(check.chance)
    assert gave_up and len(losses) == 2 and list(curve) == [2]  # the untrained model is at chance: it stopped
    assert all(0.0 <= v <= 1.0 for v in curve[2].values())


def test_world_packages_silence_the_untrained_detector_and_scene_graph(start):
    _, package = start
    with Pipeline.load(package, threads=1) as pipe:
        if "detector" not in pipe.manifest.experts:
            return  # CoLLaVO packages the panoptic expert alone
        assert pipe.manifest.experts["detector"]["keep_score"] > 1 < pipe.manifest.experts["scene_graph"]["keep_score"]
        results = [pipe.observe([generate_image(s)])[0].results for s in range(5)]
    assert not any(r.detections or r.scene_graph.relations for r in results)
