"""Train the world's panoptic expert (Mask2Former with a tiny Swin, `PanopticRecipe`) on the world's masks.

    python -m moai_edge.export.world.train_panoptic --out DIR --steps N [--batch-size B] [--seed S]

The model is `panoptic_config("tiny", ...)` widened by the recipe, with `id2label` = `PANOPTIC_CATEGORIES` (label
id = index), so the saved folder (config.json + model.safetensors, written by `save_pretrained`) is the published
layout that `load_panoptic` and the package exporter read. Its config.json also names the input size
(`input_size`, 192) and the post-processing's mask threshold (`post_process`), which the exporter records in the
package. The loss is transformers' own Mask2Former loss (Hungarian matching, class cross-entropy + mask BCE + dice
on sampled points) plus a training-only per-pixel class loss (`SemanticHead`). After training, the mask threshold
is calibrated on training images (`calibrate_post_process`).

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
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..experts.panoptic import panoptic_config
from .render import PANOPTIC_CATEGORIES, THING_CATEGORIES, WorldImage, generate
from .scene import TRAINING_SEEDS

DEFAULT_LR = 1e-3
DEFAULT_WEIGHT_DECAY = 0.05
GRAD_CLIP = 1.0
WORLD_IMAGE_SIZE = 192  # the world's shapes are large and flat: a quarter of the reference's 384x384 pixels


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
    """Training only: per-pixel classes from the pixel decoder's mask features. Its cross-entropy teaches the
    backbone colours and shapes long before the queries' set matching settles (it is not saved)."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.proj = torch.nn.Conv2d(channels, classes, 1)

    def loss(self, mask_features: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.interpolate(self.proj(mask_features), size=semantic.shape[-2:], mode="bilinear",
                                                 align_corners=False)
        return torch.nn.functional.cross_entropy(logits, semantic, ignore_index=-100)


@dataclass(frozen=True)
class PanopticRecipe:
    """The world expert's sizes and loss weights (the tiny preset's layout, widened where measurement said so)."""

    size: int = WORLD_IMAGE_SIZE
    embed_dim: int = 32
    hidden_dim: int = 64
    num_queries: int = 24
    decoder_layers: int = 3
    class_weight: float = 4.0
    train_num_points: int = 2304
    semantic_weight: float = 2.0  # the SemanticHead's loss


def world_panoptic_config(recipe: PanopticRecipe):
    cfg = panoptic_config("tiny", "moai", list(PANOPTIC_CATEGORIES))  # family unused for the tiny preset
    b = cfg.backbone_config
    b.image_size, b.embed_dim = recipe.size, recipe.embed_dim
    b.hidden_size = int(recipe.embed_dim * 2 ** (len(b.depths) - 1))
    b.num_channels, b.window_size = 3, 6
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


def warmup_cosine(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over 5% of the steps, then a cosine to 0."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / max(1, steps)))))


@contextmanager
def deterministic(threads: int):
    """Deterministic algorithms on a fixed thread count while training; the caller's torch settings come back after."""
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


MASK_THRESHOLDS = (0.95, 0.9, 0.8, 0.7, 0.6, 0.5)  # the reference's first
CALIBRATION_IMAGES = 40


def thing_counts(labels) -> Counter:
    return Counter(int(label) for label in labels if int(label) < len(THING_CATEGORIES))


def count_agreement(truth: Counter, found: Counter) -> float:
    """The share of object kinds (present in either) whose count the segments get right."""
    kinds = set(truth) | set(found)
    return sum(truth[k] == found[k] for k in kinds) / len(kinds) if kinds else 1.0


@torch.no_grad()
def calibrate_post_process(model, seeds: list[int], size: int) -> tuple[dict[str, float], dict[float, float]]:
    """The mask threshold (the runtime's post-processing, class threshold 0.5 as the reference) under which the
    segments of training images count the most object kinds right (`count_agreement`); the reference's 0.95
    wins ties. Returns (the settings for config.json's `post_process`, the agreement per threshold)."""
    from moai_edge.runtime import PanopticConfig, post_process_panoptic

    model.eval()
    outputs = []
    for s in seeds:
        world = generate(s)
        out = model(pixel_values=torch.from_numpy(model_input(world.image, size))[None])
        outputs.append((thing_counts(seg.label_id for seg in world.panoptic.segments),
                        out.class_queries_logits[0].numpy(), out.masks_queries_logits[0].numpy()))
    rates = {}
    for t in MASK_THRESHOLDS:
        cfg = PanopticConfig(image_size=size, mask_threshold=t, target_size=size)
        rates[t] = sum(count_agreement(truth, thing_counts(seg.label_id
                                                           for seg in post_process_panoptic(c, m, cfg).segments))
                       for truth, c, m in outputs) / len(outputs)
    best = max(MASK_THRESHOLDS, key=lambda t: (rates[t], t))
    return {"mask_threshold": best}, rates


def train_panoptic(out_dir: str | Path, *, steps: int, batch_size: int = 4, seed: int = 0, threads: int = 2,
                   recipe: PanopticRecipe = PanopticRecipe(), lr: float = DEFAULT_LR,
                   world_seeds: list[int] | None = None, log_every: int = 0, save_every: int = 0, log=print) -> Path:
    """Train `steps` AdamW steps and `save_pretrained` to `out_dir`; returns `out_dir`.

    Batches are fresh world images whose seeds a `random.Random(seed)` draws from `TRAINING_SEEDS`, or,
    when `world_seeds` is given, cycles through those (a fixed set, e.g. for an overfit check).
    The learning rate warms up over 5% of the steps and then follows a cosine to 0.
    `save_every` also saves intermediate checkpoints to `out_dir/step-N`.
    A `train_log.json` (losses per step, seconds, settings) is written beside the weights.
    """
    with deterministic(threads):
        model = build_model(seed, recipe).train()
        head = SemanticHead(model.config.mask_feature_size, len(PANOPTIC_CATEGORIES))
        size = recipe.size
        params = [*model.parameters(), *head.parameters()]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=DEFAULT_WEIGHT_DECAY)
        sched = warmup_cosine(opt, steps)
        draws = random.Random(seed)
        torch.manual_seed(seed + 1)  # the loss's random point sampling
        losses, start = [], time.perf_counter()
        for step in range(steps):
            if world_seeds is None:
                seeds = [draws.randrange(TRAINING_SEEDS.start, TRAINING_SEEDS.stop) for _ in range(batch_size)]
            else:
                seeds = [world_seeds[(step * batch_size + i) % len(world_seeds)] for i in range(batch_size)]
            batch = batch_of(seeds, size)
            semantic = batch.pop("semantic")
            out = model(**batch)
            loss = out.loss + recipe.semantic_weight * head.loss(out.pixel_decoder_last_hidden_state, semantic)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if log_every and (step + 1) % log_every == 0:
                recent = losses[-log_every:]
                log(f"step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f} "
                    f"({time.perf_counter() - start:.0f}s)")
            if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
                model.save_pretrained(Path(out_dir) / f"step-{step + 1}")  # intermediate, same layout
    out_dir = Path(out_dir)
    calibration = [draws.randrange(TRAINING_SEEDS.start, TRAINING_SEEDS.stop) for _ in range(CALIBRATION_IMAGES)]
    model.config.post_process, rates = calibrate_post_process(model, calibration, size)
    model.eval().save_pretrained(out_dir)
    (out_dir / "train_log.json").write_text(json.dumps({
        "steps": steps, "batch_size": batch_size, "seed": seed, "threads": threads, "recipe": asdict(recipe), "lr": lr,
        "post_process": model.config.post_process, "calibration_count_agreement": {str(k): v for k, v in rates.items()},
        "seconds": round(time.perf_counter() - start, 1), "losses": [round(x, 5) for x in losses]}, indent=1))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", required=True, type=int)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    for name, default in asdict(PanopticRecipe()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--save-every", type=int, default=0)
    args = parser.parse_args(argv)
    path = train_panoptic(args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                          threads=args.threads, lr=args.lr,
                          recipe=PanopticRecipe(**{k: getattr(args, k) for k in asdict(PanopticRecipe())}),
                          log_every=args.log_every, save_every=args.save_every)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
