"""Train a world backbone (CoLLaVO or MoAI at the "world" preset) on the world's questions and answers.

    python -m moai_edge.export.world.train_backbone --family moai --panoptic DIR --out DIR [--steps N] [--images N]

Data: training world images (seeds drawn from `TRAINING_SEEDS`), every question `questions_for` asks of each,
and the experts' results on each image exactly as the packaged experts give them at run time: the untrained
starting checkpoint is exported once (without validation) with the trained panoptic expert and, for MoAI, the
seeded untrained detector and scene graph and the real PP-OCR, and `Pipeline.aux_inputs` turns each image into
the family's inputs (MoAI: the verbalized text and colour map; CoLLaVO: crayon maps and segment text).

Loss: the runtime's two passes, teacher-forced. The prompt goes through `VLM.prefill` (PLoRA, crayon or mixer
branches), whose last position predicts the answer's first token; the answer then goes through the base weights
over the prefill's K/V (`VLM.run_layers` with `past`, as the decode graph runs it), each position predicting the
next token, the last one EOS. Cross-entropy over the answer's tokens, AdamW, warm-up then cosine.

Determinism: as `train_panoptic` (seeded draws, deterministic algorithms, fixed threads).
"""

from __future__ import annotations

import json
import random
import shutil
import string
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from moai_edge.engines.errors import InputError
from moai_edge.runtime import AuxInputs, Pipeline, preprocess_image, verbalize_ocr

from ..checkpoint import load_checkpoint, save_checkpoint
from ..family_heads import torch_head
from ..modeling.vlm import VLM
from .questions import NO_SIGN_ANSWER, QA, SIGN_CLAUSE, questions_for
from .render import generate
from .scene import HELD_OUT_WORDS, TRAINING_SEEDS
from .train_panoptic import deterministic, warmup_cosine

GRAD_CLIP = 1.0


@dataclass(frozen=True)
class BackboneRecipe:
    images: int = 600  # distinct training images (the experts run once on each)
    steps: int = 1000
    images_per_step: int = 4  # every question of each image trains in the same step
    lr: float = 2e-3
    weight_decay: float = 0.01
    copy_augmentation: float = 0.5  # MoAI: the share of sign images whose OCR word is swapped for a random one


@dataclass
class Example:
    """One training image as the runtime sees it: vision input, the family's aux inputs, its questions."""

    pixels: np.ndarray  # (3,S,S) float32, the vision graph's input
    aux: AuxInputs
    qas: list[QA]


def random_word(draws: random.Random) -> str:
    """3-8 capitals, never a held-out word."""
    while (word := "".join(draws.choice(string.ascii_uppercase) for _ in range(draws.randint(3, 8)))) in HELD_OUT_WORDS:
        pass
    return word


def with_sign_word(ex: Example, word: str) -> Example | None:
    """The example as if its sign said `word`: the OCR sentence of the verbalized text and the answers that name
    the sign change together (copy augmentation, so the model learns to copy what the OCR read rather than to
    recall the training words). None without a sign, or when the OCR did not read the sign's word exactly."""
    (sign,) = [qa.answer for qa in ex.qas if qa.question_type == "sign"]
    sentence = verbalize_ocr([sign])
    if sign == NO_SIGN_ANSWER or ex.aux.verbalized is None or sentence not in ex.aux.verbalized:
        return None
    aux = replace(ex.aux, verbalized=ex.aux.verbalized.replace(sentence, verbalize_ocr([word])))
    clause = f"{SIGN_CLAUSE}{sign}"
    qas = [qa._replace(answer=word) if qa.question_type == "sign" else
           qa._replace(answer=qa.answer.replace(clause, f"{SIGN_CLAUSE}{word}")) for qa in ex.qas]
    return Example(ex.pixels, aux, qas)


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

    def loss(self, examples: list[Example]) -> torch.Tensor:
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
        all_logits = torch.cat([logits[:, None], step_logits], 1)
        return F.cross_entropy(all_logits.reshape(-1, all_logits.shape[-1]), target.reshape(-1), ignore_index=-100)

    def extras(self, examples: list[Example], index: torch.Tensor, pos: int, length: int) -> dict[str, torch.Tensor]:
        """The family head's prefill inputs per image, then per question row; image-aligned ones at the image
        positions of the (rows, length, H) sequence."""
        extras = {k: v[index] for k, v in self.head.prefill_extras([ex.aux for ex in examples]).items()}
        for name in self.pipe.family.image_aligned:
            seg = extras[name]
            extras[name] = seg.new_zeros(seg.shape[0], length, seg.shape[-1])
            extras[name][:, pos:pos + seg.shape[1]] = seg
        return extras


def augmented(ex: Example, draws: random.Random, share: float) -> Example:
    swapped = with_sign_word(ex, random_word(draws)) if draws.random() < share else None
    return swapped or ex


def save_trained(model: VLM, out_dir: Path) -> None:
    """The model in the checkpoint layout the loader reads: no "<image>" row, no position ids, and the position
    table at the resolution it was trained at (loading interpolated it to the tower's image size)."""
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors.pop("vit.vision_tower.vision_model.embeddings.position_ids", None)
    tensors["model.tok_embeddings.weight"] = tensors["model.tok_embeddings.weight"][:model.cfg.decoder.vocab_size]
    vision = replace(model.cfg.vision, source_image_size=model.cfg.vision.image_size)
    save_checkpoint(tensors, replace(model.cfg, vision=vision), out_dir)


def train_backbone(start: Path, package: Path, out_dir: Path, *, recipe: BackboneRecipe = BackboneRecipe(),
                   seed: int = 0, threads: int = 2, log_every: int = 0, log=print) -> Path:
    """Train the checkpoint at `start` with the experts of `package` (exported from it); save to `out_dir`."""
    started = time.perf_counter()
    with deterministic(threads), Pipeline.load(package, threads=threads) as pipe:
        examples = collect_examples(pipe, training_seeds(recipe.images, seed), log=log)
        expert_seconds = time.perf_counter()
        model, _ = load_checkpoint(start)
        model.train()
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        sched = warmup_cosine(opt, recipe.steps)
        draws = random.Random(seed + 1)
        losses = []
        batcher = Batcher(model, pipe)
        for step in range(recipe.steps):
            batch = [augmented(ex, draws, recipe.copy_augmentation)
                     for ex in draws.sample(examples, recipe.images_per_step)]
            loss = batcher.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if log_every and (step + 1) % log_every == 0:
                recent = losses[-log_every:]
                log(f"step {step + 1}/{recipe.steps} loss {sum(recent) / len(recent):.4f} "
                    f"({time.perf_counter() - expert_seconds:.0f}s)")
    train_seconds = time.perf_counter() - expert_seconds
    out_dir = Path(out_dir)
    save_trained(model.eval(), out_dir)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copyfile(Path(start) / name, out_dir / name)
    (out_dir / "train_log.json").write_text(json.dumps({
        "family": model.cfg.family, "recipe": asdict(recipe), "seed": seed, "threads": threads,
        "expert_seconds": round(expert_seconds - started, 1), "train_seconds": round(train_seconds, 1),
        "losses": [round(x, 4) for x in losses]}, indent=1))
    return out_dir
