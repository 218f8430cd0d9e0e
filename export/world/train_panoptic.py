"""Train the world's panoptic expert (Mask2Former with a tiny Swin, `PanopticRecipe`) on the world's masks.

    python -m moai_edge.export.world.train_panoptic --out DIR --steps N [--batch-size B] [--seed S]

The model is `panoptic_config("tiny", ...)` widened by the recipe, with `id2label` = `PANOPTIC_CATEGORIES` (label
id = index), so the saved folder (config.json + model.safetensors, written by `save_pretrained`) is the published
layout that `load_panoptic` and the package exporter read. Its config.json also names the input size
(`input_size`, 128) and the post-processing's mask threshold (`post_process`), which the exporter records in the
package. Training has two phases: the backbone and pixel decoder first learn per-pixel classes alone (a
training-only `SemanticHead`, object pixels weighted up), which teaches shapes in a few hundred cheap steps; then the
whole model learns transformers' own Mask2Former loss (Hungarian matching, class cross-entropy + mask BCE + dice on
sampled points) plus the per-pixel loss. After training, the mask and overlap thresholds are calibrated on
training images (`calibrate_post_process`). The curves and figures behind the recipe: docs/world-training.md.

Determinism: one seed fixes the weight init, the world seeds of every batch (drawn from `TRAINING_SEEDS`)
and the loss's point sampling; `torch.use_deterministic_algorithms(True)` and a fixed `torch.set_num_threads`
make the same seed give bit-identical weights on the same machine and torch build.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..experts.panoptic import panoptic_config
from .render import PANOPTIC_CATEGORIES, THING_CATEGORIES, WorldImage, generate
from .optimisation import deterministic, optimise, warmup_constant_decay
from .scene import HELD_OUT_SEED_START, TRAINING_SEEDS

DEFAULT_LR = 1e-3
DEFAULT_WEIGHT_DECAY = 0.05
WORLD_IMAGE_SIZE = 128  # objects are 10-22% of the shorter side: 13-28 px here, shapes still clear


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def model_input(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> (3,S,S) float32 as the packaged expert is fed (runtime.experts.panoptic.preprocess_panoptic,
    which export may not import): PIL bilinear resize, 1/255, ImageNet normalisation."""
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.float32)
    x = (resized / np.float32(255.0) - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def panoptic_targets(world_image: WorldImage, size: int) -> dict:
    """One world image -> the model's input and targets at `size` x `size`.

    pixel_values (3,S,S) float32 exactly as the runtime pre-processes (bilinear resize, ImageNet norm);
    mask_labels (N,S,S) float32 binary masks, one per ground-truth segment that survives the (nearest)
    resize, in segment-id order; class_labels (N,) int64 = the segments' `label_id`.
    """
    pixel_values = torch.from_numpy(model_input(world_image.image, size))
    seg = np.asarray(Image.fromarray(world_image.panoptic.segmentation).resize((size, size), Image.NEAREST))
    masks, classes = [], []
    for segment in world_image.panoptic.segments:
        mask = seg == segment.id
        if mask.any():
            masks.append(mask)
            classes.append(segment.label_id)
    mask_labels = torch.from_numpy(np.stack(masks).astype(np.float32)) if masks else torch.zeros(0, size, size)
    semantic = np.full(seg.shape, -100, np.int64)  # -100: no segment (cross-entropy's ignore index)
    for mask, label in zip(masks, classes):
        semantic[mask] = label
    return {"pixel_values": pixel_values, "mask_labels": mask_labels,
            "class_labels": torch.tensor(classes, dtype=torch.int64), "semantic": torch.from_numpy(semantic)}


def batch_of(seeds: list[int], size: int) -> dict:
    items = [panoptic_targets(generate(s), size) for s in seeds]
    return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
            "semantic": torch.stack([i["semantic"] for i in items]),
            "mask_labels": [i["mask_labels"] for i in items], "class_labels": [i["class_labels"] for i in items]}


class SemanticHead(torch.nn.Module):
    """Training only: per-pixel classes from the pixel decoder's mask features. Its cross-entropy (object pixels
    weighted `thing_weight`: they are a tenth of the pixels) teaches the backbone colours and shapes long before the
    queries' set matching settles; it is not saved."""

    def __init__(self, channels: int, classes: int, thing_weight: float = 1.0):
        super().__init__()
        self.proj = torch.nn.Conv2d(channels, classes, 1)
        weight = torch.ones(classes)
        weight[:len(THING_CATEGORIES)] = thing_weight
        self.register_buffer("weight", weight)

    def loss(self, mask_features: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.interpolate(self.proj(mask_features), size=semantic.shape[-2:], mode="bilinear",
                                                 align_corners=False)
        return torch.nn.functional.cross_entropy(logits, semantic, weight=self.weight, ignore_index=-100)


@dataclass(frozen=True)
class PanopticRecipe:
    """The world expert's sizes and loss weights (the tiny preset's layout, widened where measurement said so)."""

    size: int = WORLD_IMAGE_SIZE
    embed_dim: int = 32
    depths: tuple[int, ...] = (1, 1, 1, 1)  # Swin blocks per stage
    heads: tuple[int, ...] = (1, 1, 2, 2)
    window_size: int = 8  # 32x32 patches at 128: windows of 32, 64 px, then the whole image
    hidden_dim: int = 64
    num_queries: int = 24
    decoder_layers: int = 3
    class_weight: float = 4.0
    train_num_points: int = 2304
    semantic_weight: float = 2.0  # the SemanticHead's loss
    thing_weight: float = 5.0  # object pixels in the SemanticHead's loss
    pixel_steps: int = 800  # first, the backbone and pixel decoder alone on the SemanticHead's loss
    pixel_lr: float = 3e-3


def world_panoptic_config(recipe: PanopticRecipe):
    cfg = panoptic_config("tiny", "moai", list(PANOPTIC_CATEGORIES))  # family unused for the tiny preset
    b = cfg.backbone_config
    b.image_size, b.embed_dim = recipe.size, recipe.embed_dim
    b.depths, b.num_heads = list(recipe.depths), list(recipe.heads)
    b.hidden_size = int(recipe.embed_dim * 2 ** (len(b.depths) - 1))
    b.num_channels, b.window_size = 3, recipe.window_size
    cfg.hidden_dim = cfg.mask_feature_size = cfg.feature_size = recipe.hidden_dim
    cfg.encoder_feedforward_dim = cfg.dim_feedforward = 2 * recipe.hidden_dim
    cfg.num_queries, cfg.decoder_layers = recipe.num_queries, recipe.decoder_layers
    cfg.num_attention_heads = 4
    cfg.class_weight, cfg.train_num_points = recipe.class_weight, recipe.train_num_points
    cfg.input_size = recipe.size  # read by export.experts.panoptic.input_size
    return cfg


def build_model(seed: int, recipe: PanopticRecipe):
    from transformers import Mask2FormerForUniversalSegmentation

    torch.manual_seed(seed)
    return Mask2FormerForUniversalSegmentation(world_panoptic_config(recipe))


MASK_THRESHOLDS = (0.95, 0.9, 0.8, 0.7, 0.6, 0.5)  # the reference's first
OVERLAP_THRESHOLDS = (0.8, 0.65, 0.5)  # the share of a query's mask it must win to be a segment; the reference's first
CALIBRATION_IMAGES = 40


def thing_counts(labels) -> Counter:
    return Counter(int(label) for label in labels if int(label) < len(THING_CATEGORIES))


@torch.no_grad()
def panoptic_outputs(model, seeds: list[int], size: int) -> list[tuple[Counter, np.ndarray, np.ndarray]]:
    """Per world image: the true object counts by label, and the model's class and mask logits."""
    model.eval()
    outputs = []
    for s in seeds:
        world = generate(s)
        out = model(pixel_values=torch.from_numpy(model_input(world.image, size))[None])
        outputs.append((thing_counts(seg.label_id for seg in world.panoptic.segments),
                        out.class_queries_logits[0].numpy(), out.masks_queries_logits[0].numpy()))
    return outputs


def kind_agreement(outputs: list, size: int, settings: dict[str, float]) -> tuple[float, float]:
    """(the share of object kinds, present in the truth or the segments, whose count the segments get right; the
    share of images whose every kind count is right), under the runtime's post-processing with `settings`."""
    from moai_edge.runtime import PanopticConfig, post_process_panoptic

    cfg = PanopticConfig(image_size=size, target_size=size, **settings)
    right = kinds = whole = 0
    for truth, c, m in outputs:
        found = thing_counts(seg.label_id for seg in post_process_panoptic(c, m, cfg).segments)
        both = set(truth) | set(found)
        right += sum(truth[k] == found[k] for k in both)
        kinds += len(both)
        whole += truth == found
    return right / max(1, kinds), whole / max(1, len(outputs))


def calibrate_post_process(model, seeds: list[int], size: int) -> tuple[dict[str, float], dict[str, float]]:
    """The mask and overlap thresholds (the runtime's post-processing, class threshold 0.5 as the reference) under
    which the segments of training images count the most object kinds right; higher thresholds (the reference's
    0.95 and 0.8) win ties. Returns (the settings for config.json's `post_process`, the agreement per pair)."""
    outputs = panoptic_outputs(model, seeds, size)
    pairs = [(m, o) for m in MASK_THRESHOLDS for o in OVERLAP_THRESHOLDS]
    rates = {pair: kind_agreement(outputs, size, settings(*pair))[0] for pair in pairs}
    best = max(pairs, key=lambda pair: (rates[pair], pair))
    return settings(*best), {f"{m}/{o}": rate for (m, o), rate in rates.items()}


def settings(mask_threshold: float, overlap: float) -> dict[str, float]:
    return {"mask_threshold": mask_threshold, "overlap_mask_area_threshold": overlap}


HELD_OUT_CHECK = range(HELD_OUT_SEED_START, HELD_OUT_SEED_START + 100)  # images the curve is measured on
CHECK_SETTINGS = settings(0.5, 0.8)  # the curve's post-processing (the final one is calibrated on training images)


def held_out_counts(model, size: int, post_process: dict[str, float],
                    images: int = len(HELD_OUT_CHECK)) -> dict[str, float]:
    """Kinds counted right and whole images counted right on held-out world images; leaves the model training."""
    kinds, whole = kind_agreement(panoptic_outputs(model, list(HELD_OUT_CHECK)[:images], size), size, post_process)
    model.train()
    return {"kinds_right": round(kinds, 4), "images_right": round(whole, 4)}


def train_panoptic(out_dir: str | Path, *, steps: int, batch_size: int = 4, seed: int = 0, threads: int = 2,
                   recipe: PanopticRecipe = PanopticRecipe(), lr: float = DEFAULT_LR,
                   world_seeds: list[int] | None = None, log_every: int = 0, check_every: int = 0,
                   log=print) -> Path:
    """Train and `save_pretrained` to `out_dir`; returns `out_dir`.

    First `recipe.pixel_steps` steps train the backbone and pixel decoder alone on the per-pixel loss
    (`SemanticHead`, at `recipe.pixel_lr`), then `steps` AdamW steps train the whole model on the Mask2Former loss
    plus the per-pixel one. Batches are fresh world images whose seeds a `random.Random(seed)` draws from
    `TRAINING_SEEDS`, or, when `world_seeds` is given, cycles through those (a fixed set, e.g. for an overfit check).
    Each phase's rate warms up, stays, and decays over its last 10% (`warmup_constant_decay`). Every `check_every`
    steps of the second phase the held-out kind counts are measured (`held_out_counts`). A `train_log.json`
    (losses per step, the curve, seconds, settings, and the final held-out figures) is written beside the weights.
    """
    with deterministic(threads):
        model = build_model(seed, recipe).train()
        head = SemanticHead(model.config.mask_feature_size, len(PANOPTIC_CATEGORIES), recipe.thing_weight)
        draws = random.Random(seed)
        torch.manual_seed(seed + 1)  # the loss's random point sampling

        def batches(count: int):
            for step in range(count):
                if world_seeds is None:
                    seeds = [draws.randrange(TRAINING_SEEDS.start, TRAINING_SEEDS.stop) for _ in range(batch_size)]
                else:
                    seeds = [world_seeds[(step * batch_size + i) % len(world_seeds)] for i in range(batch_size)]
                yield batch_of(seeds, recipe.size)

        start = time.perf_counter()
        pixel_losses = train_pixels(model, head, batches(recipe.pixel_steps), recipe, log_every, log)
        pixel_seconds = time.perf_counter() - start
        losses, curve = train_whole(model, head, batches(steps), steps, recipe, lr, log_every, check_every, log)
        train_seconds = time.perf_counter() - start
        calibration = [draws.randrange(TRAINING_SEEDS.start, TRAINING_SEEDS.stop) for _ in range(CALIBRATION_IMAGES)]
        model.config.post_process, rates = calibrate_post_process(model, calibration, recipe.size)
        final = held_out_counts(model, recipe.size, model.config.post_process)
    out_dir = Path(out_dir)
    model.eval().save_pretrained(out_dir)
    (out_dir / "train_log.json").write_text(json.dumps({
        "steps": steps, "batch_size": batch_size, "seed": seed, "threads": threads, "recipe": asdict(recipe), "lr": lr,
        "post_process": model.config.post_process, "calibration_count_agreement": rates,
        "held_out": final, "curve": curve, "pixel_seconds": round(pixel_seconds, 1),
        "seconds": round(train_seconds, 1), "pixel_losses": [round(x, 5) for x in pixel_losses],
        "losses": [round(x, 5) for x in losses]}, indent=1))
    return out_dir


def train_pixels(model, head: SemanticHead, batches, recipe: PanopticRecipe, log_every: int, log) -> list[float]:
    """The backbone and pixel decoder (the queries' decoder untouched) on the per-pixel loss alone."""
    pixels = model.model.pixel_level_module
    params = [*pixels.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=recipe.pixel_lr, weight_decay=DEFAULT_WEIGHT_DECAY)
    sched = warmup_constant_decay(opt, recipe.pixel_steps)
    losses = []
    for step, batch in enumerate(batches, 1):
        loss = head.loss(pixels(batch["pixel_values"]).decoder_last_hidden_state, batch["semantic"])
        optimise(opt, loss, params)
        sched.step()
        losses.append(float(loss.detach()))
        if log_every and step % log_every == 0:
            log(f"pixels: step {step}/{recipe.pixel_steps} loss {np.mean(losses[-log_every:]):.4f}")
    return losses


def train_whole(model, head: SemanticHead, batches, steps: int, recipe: PanopticRecipe, lr: float, log_every: int,
                check_every: int, log) -> tuple[list[float], dict[int, dict]]:
    """The whole model on the Mask2Former loss plus the per-pixel loss; (losses, the held-out curve by step)."""
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=DEFAULT_WEIGHT_DECAY)
    sched = warmup_constant_decay(opt, steps)
    losses, curve = [], {}
    for step, batch in enumerate(batches, 1):
        semantic = batch.pop("semantic")
        out = model(**batch)
        loss = out.loss + recipe.semantic_weight * head.loss(out.pixel_decoder_last_hidden_state, semantic)
        optimise(opt, loss, params)
        sched.step()
        losses.append(float(loss.detach()))
        if log_every and step % log_every == 0:
            log(f"step {step}/{steps} loss {np.mean(losses[-log_every:]):.4f}")
        if check_every and step % check_every == 0:
            curve[step] = held_out_counts(model, recipe.size, CHECK_SETTINGS)
            log(f"step {step}: held-out {curve[step]}")
    return losses, curve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", required=True, type=int)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    for name, default in asdict(PanopticRecipe()).items():
        kind = (lambda text: tuple(int(v) for v in text.split(","))) if isinstance(default, tuple) else type(default)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--check-every", type=int, default=0)
    args = parser.parse_args(argv)
    path = train_panoptic(args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                          threads=args.threads, lr=args.lr,
                          recipe=PanopticRecipe(**{k: getattr(args, k) for k in asdict(PanopticRecipe())}),
                          log_every=args.log_every, check_every=args.check_every)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
