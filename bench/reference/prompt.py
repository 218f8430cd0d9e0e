"""The reference's prompt, im_mask and LLaVA-style merge, built the way its code builds them.

`make_system_prompt` measures the system part (with BOS) and `make_and_add_prompt_and_im_mask` the
user part (without special tokens) in separate tokenizations; the full prompt is tokenized again
and `<image>` is replaced by the image features. The two constructions must agree, which this
module asserts rather than assumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from moai_edge.engines.errors import InputError


@dataclass
class ReferenceInputs:
    embeds: torch.Tensor  # (1, L, H)
    attention_mask: torch.Tensor  # (1, L) int64
    position_ids: torch.Tensor  # (1, L): cumsum(mask) - 1
    im_mask: torch.Tensor  # (1, L) bool


class ReferenceTokenizer:
    """The Hugging Face slow tokenizer's behaviour with an added special token: split at it, encode the parts."""

    def __init__(self, model_file: Path, image_token: str = "<image>"):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.image_token = image_token
        self.image_token_id = self.sp.get_piece_size()

    def __call__(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        ids = [self.sp.bos_id()] if add_special_tokens else []
        for i, part in enumerate(text.split(self.image_token)):
            if i:
                ids.append(self.image_token_id)
            ids += self.sp.encode(part) if part else []
        return ids

    def decode(self, ids: list[int]) -> str:
        """`batch_decode(..., skip_special_tokens=True)`: unk, bos, eos and the added image token are left out."""
        special = {self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id(), self.image_token_id}
        return self.sp.decode([int(i) for i in ids if int(i) not in special])


def build_reference_inputs(question: str, tok: ReferenceTokenizer, embed, image_features: torch.Tensor, *,
                           prompts: dict, template: str = "eval") -> ReferenceInputs:
    n_img = image_features.shape[1]
    system = prompts["system"]
    user = prompts["templates"][template].format(question=question)
    # make_system_prompt + make_and_add_prompt_and_im_mask
    length = len(tok(system))
    im_mask = [0] * (length - 1) + [1] * n_img + [0] * len(tok(user, add_special_tokens=False))
    # the full prompt, tokenized once, with `<image>` replaced by the features
    ids = torch.tensor(tok(system + user))
    (pos,) = torch.nonzero(ids == tok.image_token_id, as_tuple=True)
    text = embed(ids[None])[0]
    embeds = torch.cat([text[: pos[0]], image_features[0].to(text.dtype), text[pos[0] + 1:]])[None]
    if embeds.shape[1] != len(im_mask):
        raise InputError(f"reference im_mask has {len(im_mask)} positions but the merged prompt has {embeds.shape[1]}")
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    return ReferenceInputs(embeds, mask, mask.cumsum(-1) - 1, torch.tensor(im_mask, dtype=torch.bool)[None])
