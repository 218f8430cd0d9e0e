"""The PyTorch reference backbone: the runtime Backbone's surface, the reference repositories' steps.

    features (encode: torchvision resize + 0-255 normalisation + CLIP + projector) + aux + questions
        -> family prefill extras (export.family_heads) -> prompt and im_mask from separate tokenizations
        -> LLaVA-style merge -> prefill -> Hugging Face generate semantics (reference.generate) -> answers

Rows run one at a time, as the reference runs them; the stages go into a runtime Timer under the runtime's
names (vision, aux, tokenize, prefill, decode, decode_per_token).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from moai_edge.engines.decoding import DecodingConfig
from moai_edge.engines.errors import InputError
from moai_edge.export.config import REFERENCE_PROMPTS
from moai_edge.export.family_heads import torch_head
from moai_edge.export.modeling.vlm import VLM
from moai_edge.runtime import AuxInputs, OnToken, Timer, family_of
from moai_edge.runtime.decoding import Answer

from .generate import generate
from .pixels import reference_pixels
from .prompt import ReferenceInputs, ReferenceTokenizer, build_reference_inputs


def reference_answer(text: str) -> str:
    """The reference's `text.split('assistant\\n')[-1].strip().split('[U')[0]`."""
    return text.split("assistant\n")[-1].strip().split(REFERENCE_PROMPTS["answer_stop"])[0]


def at_image_positions(features: torch.Tensor, inputs: ReferenceInputs) -> torch.Tensor:
    """(1, N, H) per image token -> (1, L, H) with zeros off the image positions, as CoLLaVO builds seg features."""
    seq = torch.zeros_like(inputs.embeds)
    seq[inputs.im_mask] = features.reshape(-1, features.shape[-1]).to(seq.dtype)
    return seq


class KVState:
    """The reference's growing cache: K/V concatenated each step, the mask and next position per row."""

    def __init__(self, model: VLM, kv, mask: torch.Tensor):
        self.model, self.kv, self.mask = model, kv, mask
        self.pos = mask.sum(-1, keepdim=True)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out, new = m.decode_step(m.embed(tokens)[:, None], self.mask, self.pos, self.kv)
        self.kv = [(torch.cat([k, nk], 2), torch.cat([v, nv], 2)) for (k, v), (nk, nv) in zip(self.kv, new)]
        self.pos = self.pos + 1
        return out

    def select_rows(self, index: torch.Tensor) -> None:
        self.kv = [(k[index], v[index]) for k, v in self.kv]
        self.mask, self.pos = self.mask[index], self.pos[index]

    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.kv)


class ReferenceBackbone:
    def __init__(self, model: VLM, tokenizer_file: Path, *, template: str = "eval"):
        self.model = model.eval()
        self.family = family_of(model.cfg.family)  # the runtime's: question prefix, image-aligned extras
        self.tokenizer = ReferenceTokenizer(Path(tokenizer_file), REFERENCE_PROMPTS["image_token"])
        self.head = torch_head(model, self.tokenizer)
        self.template = template

    @torch.no_grad()
    def encode(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """HxWx3 uint8 RGB images of any size -> per image (1, N, H) features, one image at a time."""
        size = self.model.cfg.vision.image_size
        return [self.model.encode_image(reference_pixels(img, size)) for img in images]

    @torch.no_grad()
    def generate(self, features: list[torch.Tensor], aux: list[AuxInputs], questions: list[str], cfg: DecodingConfig, *,
                 template: str | None = None, on_token: OnToken | None = None,
                 timer: Timer | None = None) -> list[Answer]:
        """features from `encode`; one aux and one question per row. `on_token` hears (row, token); the reference
        does not stop early."""
        if not len(features) == len(aux) == len(questions):
            raise InputError(f"expected one aux input and one question per image, found {len(features)} images, "
                             f"{len(aux)} aux inputs and {len(questions)} questions")
        timer = timer or Timer()
        answers = []
        for row, (f, a, q) in enumerate(zip(features, aux, questions)):
            stream = (lambda _, token, row=row: on_token(row, token)) if on_token else None
            answers.append(self.generate_row(f, a, q, cfg, template or self.template, stream, timer))
        steps = sum(max(1, len(a.tokens) - 1) for a in answers)
        timer.ms["decode_per_token"] = timer.ms.get("decode", 0.0) / steps
        return answers

    def generate_row(self, features: torch.Tensor, aux: AuxInputs, question: str, cfg: DecodingConfig, template: str,
                     on_token, timer: Timer) -> Answer:
        m = self.model
        with timer("aux"):
            extras = self.head.prefill_extras([aux])
        with timer("tokenize"):
            inputs = build_reference_inputs(self.family.question(aux, question), self.tokenizer, m.embed, features,
                                            prompts=REFERENCE_PROMPTS, template=template)
        with timer("prefill"):
            extras = {k: at_image_positions(v, inputs) if k in self.family.image_aligned else v
                      for k, v in extras.items()}
            logits, kv = m.prefill(inputs.embeds, inputs.attention_mask, inputs.position_ids, inputs.im_mask, **extras)
        state = KVState(m, kv, inputs.attention_mask)
        with timer("decode"):
            tokens = generate(logits, state.step, state.select_rows, cfg, on_token=on_token)[0]
        text = self.tokenizer.decode(tokens)
        return Answer(reference_answer(text), list(map(int, tokens)), text, state.nbytes(),
                      int(inputs.attention_mask.sum()))

    def ask(self, image: np.ndarray, question: str, *, aux: AuxInputs | None = None,
            decoding: DecodingConfig | None = None, template: str | None = None, timer: Timer | None = None) -> Answer:
        """One image of any size in (the reference resizes it itself); `timer` also gets `vision`."""
        timer = timer or Timer()
        with timer("vision"):
            features = self.encode([image])
        return self.generate(features, [aux or AuxInputs()], [question], decoding or DecodingConfig(),
                             template=template, timer=timer)[0]
