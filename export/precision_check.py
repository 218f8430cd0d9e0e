"""Reduced precision against float32, the check export runs on every package below fp32.

Bit parity no longer applies, so the reduced package is held to the float32 one on held-out world images
(the trained world's, whatever the model), every world question about each image. The float32 package
answers greedily; the reduced one is teacher-forced along the same tokens, and at each answer position
the two next-token distributions are compared:

    token agreement  the share of positions where the reduced argmax is the float32 token
    kl               mean KL(float32 || reduced) over those positions, in nats
    same answers     the share of questions whose every position agrees (the reduced greedy answer is identical)

Two measurements: `decoder` gives both decoders the float32 package's image features and expert inputs,
so it measures the decoder's precision alone, and is bounded (`BOUNDS`, by the decoder's precision);
`end_to_end` lets each package see the image with its own tower and experts, and is recorded. The bounds
catch a broken conversion, not a small loss (docs/precision.md, "The precision check's bounds"); what a
precision costs in answers is `moai-edge eval`'s to say.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np

from moai_edge.engines.errors import ContextError, ExportValidationError
from moai_edge.runtime import Observation, Pipeline, log_softmax

CHECK_IMAGES = 6
MAX_NEW_TOKENS = 24


@dataclass(frozen=True)
class Bound:
    token_agreement: float  # at least
    kl: float  # at most, nats


BOUNDS = {"fp16": Bound(0.95, 0.01), "int8": Bound(0.9, 0.05), "int4": Bound(0.6, 0.5)}


@dataclass(frozen=True)
class Agreement:
    token_agreement: float
    kl: float
    same_answers: float
    positions: int
    questions: int
    skipped: int = 0  # questions whose prompt does not fit the package's context (many segments, a random model)

    def to_json(self) -> dict:
        return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in asdict(self).items()}


def seen(pipe: Pipeline, image) -> Observation:
    """The image's features and the family's aux inputs, from the package's tower and experts."""
    return pipe.observe([image])[0]


def answer_logits(pipe: Pipeline, observation: Observation, question: str,
                  tokens: list[int] | None) -> tuple[list[int], np.ndarray]:
    """The logits at each answer position: greedy (tokens None, until eos or MAX_NEW_TOKENS) or along `tokens`."""
    scored = pipe.score(observation, question, tokens=tokens, max_new_tokens=MAX_NEW_TOKENS)
    return scored.tokens, scored.logits


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    lp, lq = log_softmax(p_logits[None])[0], log_softmax(q_logits[None])[0]
    return float(np.sum(np.exp(lp) * (lp - lq)))


class Tally:
    def __init__(self):
        self.hits: list[bool] = []
        self.kls: list[float] = []
        self.same: list[bool] = []
        self.skipped = 0

    def add(self, tokens: list[int], ref: np.ndarray, ours: np.ndarray) -> None:
        hits = [int(np.argmax(o)) == t for o, t in zip(ours, tokens)]
        self.hits += hits
        self.kls += [kl_divergence(r, o) for r, o in zip(ref, ours)]
        self.same.append(all(hits))

    def agreement(self) -> Agreement:
        if not self.hits:
            raise ExportValidationError(f"none of the {self.skipped} world questions fits the package's context")
        return Agreement(float(np.mean(self.hits)), float(np.mean(self.kls)), float(np.mean(self.same)),
                         len(self.hits), len(self.same), self.skipped)


def measure_agreement(reference: Pipeline, reduced: Pipeline, *, images: int = CHECK_IMAGES,
                      seed: int = 0) -> dict[str, Agreement]:
    """{"decoder": ..., "end_to_end": ...} over every world question of `images` held-out world images."""
    from .world import HELD_OUT_SEED_START, generate, questions_for

    decoder, end_to_end = Tally(), Tally()
    for s in range(HELD_OUT_SEED_START + seed, HELD_OUT_SEED_START + seed + images):
        world = generate(s)
        ref_inputs, our_inputs = seen(reference, world.image), seen(reduced, world.image)
        for qa in questions_for(world.scene, random.Random(s)):
            try:
                tokens, ref = answer_logits(reference, ref_inputs, qa.question, None)
            except ContextError:
                decoder.skipped, end_to_end.skipped = decoder.skipped + 1, end_to_end.skipped + 1
                continue
            decoder.add(tokens, ref, answer_logits(reduced, ref_inputs, qa.question, tokens)[1])
            try:  # the reduced experts may find more segments, so a longer prompt
                end_to_end.add(tokens, ref, answer_logits(reduced, our_inputs, qa.question, tokens)[1])
            except ContextError:
                end_to_end.skipped += 1
    return {"decoder": decoder.agreement(), "end_to_end": end_to_end.agreement()}


def check_agreement(precision: str, agreement: Agreement) -> None:
    """ExportValidationError when `agreement` is outside the bounds of a `precision` decoder (fp32: none)."""
    if precision not in BOUNDS:
        return
    bound = BOUNDS[precision]
    if agreement.token_agreement < bound.token_agreement or agreement.kl > bound.kl:
        raise ExportValidationError(
            f"{precision} decoder against float32 on {agreement.questions} world questions: token agreement "
            f"{agreement.token_agreement:.2%} (expected at least {bound.token_agreement:.0%}), mean KL "
            f"{agreement.kl:.4f} nats (expected at most {bound.kl})")
