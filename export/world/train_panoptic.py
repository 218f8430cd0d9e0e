"""Train the tiny panoptic expert (Mask2Former, the "tiny" Swin config) on the world's panoptic masks.

    python -m moai_edge.export.world.train_panoptic --out DIR --steps N [--batch-size B] [--seed S]

The model is `panoptic_config("tiny", ...)` with `id2label` = `PANOPTIC_CATEGORIES` (label id = index), so the
saved folder (config.json + model.safetensors, written by `save_pretrained`) is the published layout that
`load_panoptic` and the package exporter read. The loss is transformers' own Mask2Former loss (Hungarian
matching, class cross-entropy + mask BCE + dice on sampled points).

Determinism: one seed fixes the weight init, the world seeds of every batch (drawn from `TRAINING_SEEDS`)
and the loss's point sampling; `torch.use_deterministic_algorithms(True)` and a fixed `torch.set_num_threads`
make the same seed give bit-identical weights on the same machine and torch build.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..experts.panoptic import IMAGE_SIZE, panoptic_config
from .render import PANOPTIC_CATEGORIES, WorldImage, generate
from .scene import TRAINING_SEEDS

DEFAULT_LR = 1e-3
DEFAULT_WEIGHT_DECAY = 0.05
GRAD_CLIP = 1.0


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def model_input(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> (3,S,S) float32 as the packaged expert is fed (runtime.experts.panoptic.preprocess_panoptic,
    which export may not import): PIL bilinear resize, 1/255, ImageNet normalisation."""
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.float32)
    x = (resized / np.float32(255.0) - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def panoptic_targets(world_image: WorldImage, size: int = IMAGE_SIZE) -> dict:
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
    return {"pixel_values": pixel_values, "mask_labels": mask_labels,
            "class_labels": torch.tensor(classes, dtype=torch.int64)}


def batch_of(seeds: list[int], size: int) -> dict:
    items = [panoptic_targets(generate(s), size) for s in seeds]
    return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
            "mask_labels": [i["mask_labels"] for i in items], "class_labels": [i["class_labels"] for i in items]}


def build_model(seed: int, *, size: int = IMAGE_SIZE):
    from transformers import Mask2FormerForUniversalSegmentation

    torch.manual_seed(seed)
    cfg = panoptic_config("tiny", "moai", list(PANOPTIC_CATEGORIES))  # family unused for the tiny preset
    cfg.backbone_config.image_size = size
    return Mask2FormerForUniversalSegmentation(cfg)


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


def train_panoptic(out_dir: str | Path, *, steps: int, batch_size: int = 4, seed: int = 0, threads: int = 2,
                   size: int = IMAGE_SIZE, lr: float = DEFAULT_LR, world_seeds: list[int] | None = None,
                   log_every: int = 0, save_every: int = 0, log=print) -> Path:
    """Train `steps` AdamW steps and `save_pretrained` to `out_dir`; returns `out_dir`.

    Batches are fresh world images whose seeds a `random.Random(seed)` draws from `TRAINING_SEEDS`, or,
    when `world_seeds` is given, cycles through those (a fixed set, e.g. for an overfit check).
    The learning rate warms up over 5% of the steps and then follows a cosine to 0.
    `save_every` also saves intermediate checkpoints to `out_dir/step-N`.
    A `train_log.json` (losses per step, seconds, settings) is written beside the weights.
    """
    with deterministic(threads):
        model = build_model(seed, size=size).train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=DEFAULT_WEIGHT_DECAY)
        warmup = max(1, steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / max(1, steps)))))
        draws = random.Random(seed)
        torch.manual_seed(seed + 1)  # the loss's random point sampling
        losses, start = [], time.perf_counter()
        for step in range(steps):
            if world_seeds is None:
                seeds = [draws.randrange(TRAINING_SEEDS.start, TRAINING_SEEDS.stop) for _ in range(batch_size)]
            else:
                seeds = [world_seeds[(step * batch_size + i) % len(world_seeds)] for i in range(batch_size)]
            out = model(**batch_of(seeds, size))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            sched.step()
            losses.append(float(out.loss.detach()))
            if log_every and (step + 1) % log_every == 0:
                recent = losses[-log_every:]
                log(f"step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f} ({time.perf_counter() - start:.0f}s)")
            if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
                model.save_pretrained(Path(out_dir) / f"step-{step + 1}")  # intermediate, same layout
    out_dir = Path(out_dir)
    model.eval().save_pretrained(out_dir)
    (out_dir / "train_log.json").write_text(json.dumps({
        "steps": steps, "batch_size": batch_size, "seed": seed, "threads": threads, "size": size, "lr": lr,
        "seconds": round(time.perf_counter() - start, 1), "losses": [round(x, 5) for x in losses]}, indent=1))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", required=True, type=int)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--save-every", type=int, default=0)
    args = parser.parse_args(argv)
    path = train_panoptic(args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                          threads=args.threads, size=args.size, lr=args.lr, log_every=args.log_every,
                          save_every=args.save_every)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
