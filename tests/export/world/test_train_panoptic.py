"""The panoptic training script stays alive: it learns, it is deterministic, and its output loads."""

import json

import numpy as np
import torch

from moai_edge.export.experts.panoptic import labels_of, load_panoptic
from moai_edge.export.world import PANOPTIC_CATEGORIES, generate
from moai_edge.export.world.train_panoptic import (PanopticRecipe, SemanticHead, batch_of, build_model,
                                                  panoptic_targets, train_panoptic, train_pixels)

SIZE = 64  # tiny inputs keep the tests fast; the shipped expert is trained at 128
SMALL = PanopticRecipe(size=SIZE, embed_dim=16, hidden_dim=32, num_queries=12, decoder_layers=2, pixel_steps=2)


def test_targets_cover_every_pixel_once():
    world = generate(3)
    t = panoptic_targets(world, SIZE)
    assert t["pixel_values"].shape == (3, SIZE, SIZE) and t["pixel_values"].dtype == torch.float32
    assert t["mask_labels"].shape[1:] == (SIZE, SIZE) and len(t["class_labels"]) == len(t["mask_labels"])
    assert torch.equal(t["mask_labels"].sum(0), torch.ones(SIZE, SIZE))
    ids = {s.label_id for s in world.panoptic.segments}
    assert set(t["class_labels"].tolist()) <= ids


def test_loss_goes_down_on_a_fixed_batch(tmp_path):
    out = train_panoptic(tmp_path / "m", steps=20, batch_size=2, seed=0, threads=1, recipe=SMALL, lr=3e-3,
                         world_seeds=[11, 12])
    losses = json.loads((out / "train_log.json").read_text())["losses"]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses  # 26.9 -> 19.8 here


def test_same_seed_gives_identical_weights_and_loads(tmp_path):
    a = train_panoptic(tmp_path / "a", steps=3, batch_size=2, seed=5, threads=1, recipe=SMALL)
    b = train_panoptic(tmp_path / "b", steps=3, batch_size=2, seed=5, threads=1, recipe=SMALL)
    ma, mb = load_panoptic(a), load_panoptic(b)
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    fresh = train_panoptic(tmp_path / "c", steps=1, batch_size=2, seed=6, threads=1, recipe=SMALL)
    assert not torch.equal(load_panoptic(fresh).class_predictor.weight, ma.class_predictor.weight)
    assert labels_of(ma) == list(PANOPTIC_CATEGORIES)
    with torch.no_grad():
        out = ma(pixel_values=torch.zeros(1, 3, SIZE, SIZE))
    assert out.class_queries_logits.shape[-1] == len(PANOPTIC_CATEGORIES) + 1


def test_training_input_is_what_the_packaged_expert_is_fed():
    from moai_edge.export.world import generate
    from moai_edge.export.world.train_panoptic import model_input
    from moai_edge.runtime.experts.panoptic import PanopticConfig, preprocess_panoptic

    image = generate(3).image
    np.testing.assert_array_equal(model_input(image, 96), preprocess_panoptic(image, PanopticConfig(image_size=96)))


def test_training_leaves_the_callers_torch_settings_as_they_were(tmp_path):
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    train_panoptic(tmp_path / "p", steps=1, batch_size=1, seed=0, threads=1 if threads != 1 else 2, recipe=SMALL,
                   world_seeds=[0], log=lambda *_: None)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)


def test_the_pixel_phase_trains_the_pixels_alone_and_learns():
    torch.manual_seed(0)
    model = build_model(0, SMALL)
    head = SemanticHead(model.config.mask_feature_size, len(PANOPTIC_CATEGORIES), SMALL.thing_weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = batch_of([11, 12], SIZE)
    recipe = PanopticRecipe(**{**SMALL.__dict__, "pixel_steps": 15})
    losses = train_pixels(model, head, (dict(batch) for _ in range(15)), recipe, 0, None)
    after = model.state_dict()
    changed = {k.split(".")[1] for k in after if not torch.equal(before[k], after[k])}
    assert changed == {"pixel_level_module"}, changed  # the queries' decoder and class head wait for phase two
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses

