"""Train a world backbone (CoLLaVO or MoAI at the "world" preset) on the world's questions and answers.

    python -m moai_edge.export.world.train_backbone --family moai --panoptic DIR --out DIR [--steps N] [--images N]

Data: training world images (seeds drawn from `TRAINING_SEEDS`), every question `questions_for` asks of each,
and the experts' results on each image exactly as the packaged experts give them at run time: the untrained
starting checkpoint is exported once (without validation) with the trained panoptic expert and, for MoAI, the
seeded untrained detector and scene graph and the real PP-OCR, and `Pipeline.aux_inputs` turns each image into
the family's inputs (MoAI: the verbalized text and colour map; CoLLaVO: crayon maps and segment text). The
experts' untrained detector and scene graph are silenced in the package (export.world.build.SILENCED).

Loss: the runtime's two passes, teacher-forced. The prompt goes through `VLM.prefill` (PLoRA, crayon or mixer
branches), whose last position predicts the answer's first token; the answer then goes through the base weights
over the prefill's K/V (`VLM.run_layers` with `past`, as the decode graph runs it), each position predicting the
next token, the last one EOS. Cross-entropy per question (averaged over its answer's tokens), then over questions;
AdamW at a constant rate with a short warm-up and a final decay. Every `check_every` steps, teacher-forced answers
on held-out images are scored per question type (`HeldOutCheck`), and a run below chance by `give_up_at` stops.

Determinism: as `train_panoptic` (seeded draws, deterministic algorithms, fixed threads).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from moai_edge.engines.errors import InputError
from moai_edge.runtime import AuxInputs, Pipeline, preprocess_image

from ..checkpoint import load_checkpoint, save_checkpoint
from ..family_heads import torch_head
from ..modeling.vlm import VLM
from .questions import QA, questions_for
from .render import generate
from .optimisation import deterministic, optimise, warmup_constant_decay
from .scene import HELD_OUT_SEED_START, TRAINING_SEEDS



@dataclass(frozen=True)
class BackboneRecipe:
    images: int = 2000  # distinct training images (the experts run once on each, cached)
    steps: int = 3000  # at a constant rate, decayed over the last 10%
    images_per_step: int = 4  # every question of each image trains in the same step
    lr: float = 2e-3
    weight_decay: float = 0.01
    check_every: int = 500  # the held-out check (teacher-forced answers right, per question type)
    check_images: int = 60
    give_up_at: int = 1500  # a run whose check is not above chance on any question type by then stops


@dataclass
class Example:
    """One training image as the runtime sees it: vision input, the family's aux inputs, its questions."""

    pixels: np.ndarray  # (3,S,S) float32, the vision graph's input
    aux: AuxInputs
    qas: list[QA]


def training_seeds(count: int, seed: int) -> list[int]:
    draws = random.Random(seed)
    return [draws.randrange(TRAINING_SEEDS.start, TRAINING_SEEDS.stop) for _ in range(count)]


def collect_examples(pipe: Pipeline, seeds: list[int], *, log=print) -> list[Example]:
    """Each training image through the package's experts (the runtime's own code), with its questions."""
    examples, start = [], time.perf_counter()
    for i, s in enumerate(seeds):
        world = generate(s)
        examples.append(Example(preprocess_image(world.image, pipe.manifest.preprocess), pipe.aux_inputs(world.image),
                                questions_for(world.scene, random.Random(s))))
        if log and (i + 1) % 200 == 0:
            log(f"experts on {i + 1}/{len(seeds)} training images ({time.perf_counter() - start:.0f}s)")
    return examples


class Batcher:
    """Examples -> the tensors of one step: prompts right-padded behind the shared system prefix, answers padded."""

    def __init__(self, model: VLM, pipe: Pipeline):
        self.model, self.pipe = model, pipe
        self.tokenizer = pipe.tokenizer
        self.head = torch_head(model, lambda text: self.tokenizer.encode(text, add_bos=True))
        self.eos = model.cfg.decoder.eos_id

    def rows(self, examples: list[Example]) -> tuple[list[int], list[np.ndarray], list[list[int]], int]:
        images, prompts, answers, image_pos = [], [], [], None
        for i, ex in enumerate(examples):
            for qa in ex.qas:
                ids = self.pipe.prompt(qa.question, ex.aux)
                if image_pos not in (None, ids.image_pos):
                    raise InputError(f"the image token is at {ids.image_pos} in one prompt and {image_pos} in another: "
                                     f"training expects one system prompt before every question")
                image_pos = ids.image_pos
                images.append(i)
                prompts.append(ids.input_ids)
                answers.append(self.tokenizer.encode(qa.answer) + [self.eos])
        return images, prompts, answers, image_pos

    def forward(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (R, T, V) before each answer token, targets (R, T) with -100 past each answer's end), one row per
        question of the examples, in order."""
        m = self.model
        images, prompts, answers, pos = self.rows(examples)
        index = torch.tensor(images)
        features = m.encode_image(torch.from_numpy(np.stack([ex.pixels for ex in examples])))[index]  # (R,N,H)
        n_img = features.shape[1]
        after = [p[pos + 1:] for p in prompts]
        width = max(len(a) for a in after)
        tail = torch.tensor(np.stack([np.pad(a, (0, width - len(a))) for a in after]))
        tail_mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in after])
        head = torch.from_numpy(prompts[0][:pos])[None].expand(len(prompts), -1)
        embeds = torch.cat([m.embed(head), features, m.embed(tail)], 1)
        rows, length = embeds.shape[:2]
        mask = torch.cat([torch.ones(rows, pos + n_img, dtype=torch.long), tail_mask], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        im_mask = torch.zeros(rows, length, dtype=torch.bool)
        im_mask[:, pos:pos + n_img] = True
        logits, kv = m.prefill(embeds, mask, positions, im_mask, **self.extras(examples, index, pos, length))
        # the answer: first token from the prefill, the rest through the base weights over the prefill's K/V
        t = max(len(a) for a in answers)
        target = torch.tensor([a + [-100] * (t - len(a)) for a in answers])
        steps_in = target[:, :-1].clamp(min=0)
        full_mask = torch.cat([mask, (target[:, :-1] >= 0).long()], 1)
        step_pos = mask.sum(-1, keepdim=True) + torch.arange(t - 1)[None]
        h, _ = m.run_layers(m.embed(steps_in), full_mask, step_pos, kv)
        step_logits = m.output(m.model.norm(h))
        return torch.cat([logits[:, None], step_logits], 1), target

    def loss(self, examples: list[Example]) -> torch.Tensor:
        """Cross-entropy per question (the mean over its answer's tokens), then the mean over questions: a one-word
        colour answer weighs what a 15-token description weighs."""
        logits, target = self.forward(examples)
        per_token = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")  # (R, T)
        tokens = (target >= 0).sum(-1).clamp(min=1)
        return (per_token.sum(-1) / tokens).mean()

    @torch.no_grad()
    def answers_right(self, examples: list[Example]) -> list[bool]:
        """Per question, teacher-forced: whether the argmax before every answer token is that token."""
        logits, target = self.forward(examples)
        hit = (logits.argmax(-1) == target) | (target < 0)
        return hit.all(-1).tolist()

    def extras(self, examples: list[Example], index: torch.Tensor, pos: int, length: int) -> dict[str, torch.Tensor]:
        """The family head's prefill inputs per image, then per question row; image-aligned ones at the image
        positions of the (rows, length, H) sequence."""
        extras = {k: v[index] for k, v in self.head.prefill_extras([ex.aux for ex in examples]).items()}
        for name in self.pipe.family.image_aligned:
            seg = extras[name]
            extras[name] = seg.new_zeros(seg.shape[0], length, seg.shape[-1])
            extras[name][:, pos:pos + seg.shape[1]] = seg
        return extras


def save_trained(model: VLM, out_dir: Path) -> None:
    """The model in the checkpoint layout the loader reads: no "<image>" row, no position ids, and the position
    table at the resolution it was trained at (loading interpolated it to the tower's image size)."""
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors.pop("vit.vision_tower.vision_model.embeddings.position_ids", None)
    tensors["model.tok_embeddings.weight"] = tensors["model.tok_embeddings.weight"][:model.cfg.decoder.vocab_size]
    vision = replace(model.cfg.vision, source_image_size=model.cfg.vision.image_size)
    save_checkpoint(tensors, replace(model.cfg, vision=vision), out_dir)


class HeldOutCheck:
    """Teacher-forced answers right per question type on held-out images (their experts run once), against chance:
    the share of the most frequent answer of each type."""

    def __init__(self, pipe: Pipeline, images: int, *, log=print):
        self.examples = collect_examples(pipe, list(range(HELD_OUT_SEED_START, HELD_OUT_SEED_START + images)), log=log)
        answers = [(qa.question_type, qa.answer) for ex in self.examples for qa in ex.qas]
        self.chance = {t: max(Counter(a for k, a in answers if k == t).values()) / sum(k == t for k, _ in answers)
                       for t in {k for k, _ in answers}}

    def __call__(self, batcher: Batcher, batch: int = 8) -> dict[str, float]:
        batcher.model.eval()
        right: dict[str, list[bool]] = {}
        for i in range(0, len(self.examples), batch):
            part = self.examples[i:i + batch]
            for qa, ok in zip((qa for ex in part for qa in ex.qas), batcher.answers_right(part)):
                right.setdefault(qa.question_type, []).append(ok)
        batcher.model.train()
        return {t: round(float(np.mean(v)), 4) for t, v in sorted(right.items())}

    def above_chance(self, accuracy: dict[str, float], margin: float = 0.05) -> bool:
        return any(accuracy[t] > self.chance[t] + margin for t in accuracy)


def train_steps(model: VLM, batcher: Batcher, examples: list[Example], check: HeldOutCheck, recipe: BackboneRecipe,
                seed: int, log_every: int, log) -> tuple[list[float], dict[int, dict], bool]:
    """The optimisation: (losses, the held-out curve by step, whether the run gave up below chance)."""
    log = log or (lambda _: None)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = warmup_constant_decay(opt, recipe.steps)
    draws, losses, curve, start = random.Random(seed + 1), [], {}, time.perf_counter()
    for step in range(1, recipe.steps + 1):
        loss = batcher.loss(draws.sample(examples, recipe.images_per_step))
        optimise(opt, loss, list(model.parameters()))
        sched.step()
        losses.append(float(loss.detach()))
        if log_every and step % log_every == 0:
            log(f"step {step}/{recipe.steps} loss {np.mean(losses[-log_every:]):.4f} "
                f"({time.perf_counter() - start:.0f}s)")
        if recipe.check_every and (step % recipe.check_every == 0 or step == recipe.steps):
            curve[step] = check(batcher)
            log(f"step {step}: held-out {curve[step]} (chance {check.chance})")
            if step >= recipe.give_up_at and step < recipe.steps and not check.above_chance(curve[step]):
                log(f"step {step}: no question type above chance; the run stops")
                return losses, curve, True
    return losses, curve, False


def train_backbone(start: Path, package: Path, out_dir: Path, *, recipe: BackboneRecipe = BackboneRecipe(),
                   seed: int = 0, threads: int = 2, log_every: int = 0, log=print) -> Path:
    """Train the checkpoint at `start` with the experts of `package` (exported from it); save to `out_dir`."""
    started = time.perf_counter()
    with deterministic(threads), Pipeline.load(package, threads=threads) as pipe:
        examples = collect_examples(pipe, training_seeds(recipe.images, seed), log=log)
        check = HeldOutCheck(pipe, recipe.check_images, log=None)
        expert_seconds = time.perf_counter()
        model, _ = load_checkpoint(start)
        model.train()
        losses, curve, gave_up = train_steps(model, Batcher(model, pipe), examples, check, recipe, seed, log_every, log)
    train_seconds = time.perf_counter() - expert_seconds
    out_dir = Path(out_dir)
    save_trained(model.eval(), out_dir)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copyfile(Path(start) / name, out_dir / name)
    (out_dir / "train_log.json").write_text(json.dumps({
        "family": model.cfg.family, "recipe": asdict(recipe), "seed": seed, "threads": threads,
        "expert_seconds": round(expert_seconds - started, 1), "train_seconds": round(train_seconds, 1),
        "held_out_curve": curve, "chance": check.chance, "gave_up": gave_up,
        "losses": [round(x, 4) for x in losses]}, indent=1))
    return out_dir
