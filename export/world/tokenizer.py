"""The world's tokenizer: a SentencePiece model with the real InternLM2 tokenizer's special ids, that spells
every capital letter as its own piece, so a sign word the model never saw is still a sequence of pieces it
knows (the copy task of `unseen_sign_word`).

It is trained on the world's own text: the prompts, every question template and answer, descriptions of
sampled scenes, and the verbalization sentences the experts produce (world labels, COCO names and PSG
predicates from the untrained detector and scene-graph experts, box coordinates). Deterministic for a seed.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

from moai_edge.runtime import COLLAVO_EMPTY_PREFIX, OCR_PREFIX, RELATION_PREFIX, SEGMENT_PREFIX, clean_class

from ..config import REFERENCE_PROMPTS
from ..tokenizer_factory import train_sentencepiece
from ..experts.labels import COCO_PANOPTIC_CLASSES, PSG_PREDICATES
from .questions import questions_for
from .render import PANOPTIC_CATEGORIES
from .scene import TRAINING_SEEDS, sample_scene

VOCAB_SIZE = 512
FIXED_REPEATS = 1000
CAPITALS = tuple(string.ascii_uppercase)


def box_text(rng: random.Random) -> str:
    return "[" + ", ".join(f"{rng.random():.2f}" for _ in range(4)) + "]"


def world_corpus(seed: int, scenes: int = 3000) -> list[str]:
    """Lines of the text the world's models read and write; sign words never appear (capitals are pieces)."""
    rng = random.Random(seed)
    fixed = [REFERENCE_PROMPTS["system"], *REFERENCE_PROMPTS["templates"].values(), SEGMENT_PREFIX, RELATION_PREFIX,
             OCR_PREFIX, COLLAVO_EMPTY_PREFIX]
    lines = fixed * FIXED_REPEATS  # as often as the sampled lines, so that their words become pieces too
    for _ in range(scenes):
        scene = sample_scene(rng.randrange(TRAINING_SEEDS.start, TRAINING_SEEDS.stop))
        for qa in questions_for(scene, rng):
            lines.append(f"{qa.question} {qa.answer.lower() if qa.question_type == 'sign' else qa.answer}")
        names = [rng.choice(PANOPTIC_CATEGORIES) for _ in range(rng.randint(1, 6))]
        lines.append(", and ".join(f"{box_text(rng)} {n}" for n in names) + ".")
        lines.append(", ".join(f"(#{rng.randint(1, 4)} {n}) {box_text(rng)}" for n in names))
        coco = [clean_class(rng.choice(COCO_PANOPTIC_CLASSES)) for _ in range(3)]
        lines.append(f"{coco[0]} (#{rng.randint(1, 3)}) is {rng.choice(PSG_PREDICATES)} {coco[1]}, and "
                     f"{box_text(rng)} {coco[2]}.")
    return lines


def train_world_tokenizer(out_dir: Path, *, seed: int = 0, vocab_size: int = VOCAB_SIZE) -> Path:
    """Write `tokenizer.model` and `tokenizer_config.json` to `out_dir`; returns the model file."""
    return train_sentencepiece(out_dir, world_corpus(seed), vocab_size=vocab_size, symbols=CAPITALS)
