"""MoAI-Mixer: six low-rank attention experts and two gates, applied before `wqkv` in prefill.

The reference gathers each row's image and language positions and attends among them; here every
position is computed and keys are restricted with additive masks, which gives the same values at
those positions with static shapes. Padding positions (neither image nor language) pass unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

EXPERTS = ("moai_CA_img_aux", "moai_CA_img_lang", "moai_SA_img", "moai_CA_lang_aux", "moai_CA_lang_img", "moai_SA_lang")
GATES = ("moai_GA_img", "moai_GA_lang")


def low_rank(dim: int, rank: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim, bias=False))


class LowRankAttention(nn.Module):
    """MultiHeadLoRAAttention of the reference: GELU after each low-rank projection, returns q + out."""

    def __init__(self, dim: int, rank: int, heads: int):
        super().__init__()
        self.heads = heads
        self.linear_q, self.linear_k = low_rank(dim, rank), low_rank(dim, rank)
        self.linear_v, self.linear_o = low_rank(dim, rank), low_rank(dim, rank)

    def forward(self, q, kv, key_bias=None):
        """q (B,Lq,D), kv (B,Lk,D), key_bias (B,1,1,Lk) additive or None."""
        b, lq, d = q.shape
        sub = d // self.heads
        qh = F.gelu(self.linear_q(q)).view(b, lq, self.heads, sub).transpose(1, 2)
        kh = F.gelu(self.linear_k(kv)).view(b, -1, self.heads, sub).transpose(1, 2)
        vh = F.gelu(self.linear_v(kv)).view(b, -1, self.heads, sub).transpose(1, 2)
        scores = torch.matmul(qh, kh.transpose(-2, -1)) / math.sqrt(sub)
        if key_bias is not None:
            scores = scores + key_bias
        y = torch.matmul(F.softmax(scores, dim=-1), vh).transpose(1, 2).reshape(b, lq, d)
        return q + F.gelu(self.linear_o(y))


def build_mixer(module: nn.Module, dim: int, *, rank: int, heads: int) -> None:
    """Register the mixer's modules on `module` (the attention block) under the checkpoint's names."""
    for name in EXPERTS:
        module.add_module(name, LowRankAttention(dim, rank, heads))
    for name in GATES:
        module.add_module(name, nn.Linear(dim, 3))


def key_bias(mask: torch.Tensor, dtype) -> torch.Tensor:
    """(B,L) bool -> (B,1,1,L): 0 where attended, a large negative elsewhere."""
    return ((~mask).to(dtype) * torch.finfo(dtype).min)[:, None, None, :]


def round_through_fp16(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the nearest float16 value, kept in x's dtype (a Cast pair in the exported graph)."""
    return x.to(torch.float16).to(x.dtype)


def gate_weights(gate: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """(B,L,D) -> (B,L,3): the reference's `F.softmax(gate(h), dim=1, dtype=torch.float16)`.

    That softmax rounds its input to fp16, computes in fp32 and rounds the result to fp16. Done here
    in fp32 with explicit roundings: onnxruntime's fp16 Softmax does not round like PyTorch's.
    """
    return round_through_fp16(F.softmax(round_through_fp16(gate(h)), dim=-1))


def mix(m: nn.Module, h, *, aux, im_mask, lang_mask):
    """h (B,L,D) RMS-normed hidden; aux (B,A,D) compressed aux tokens; masks (B,L) bool."""
    img_keys, lang_keys = key_bias(im_mask, h.dtype), key_bias(lang_mask, h.dtype)
    w_img = gate_weights(m.moai_GA_img, h)
    w_lang = gate_weights(m.moai_GA_lang, h)
    mix_img = (
        w_img[..., 0:1] * m.moai_CA_img_aux(h, aux)
        + w_img[..., 1:2] * m.moai_CA_img_lang(h, h, lang_keys)
        + w_img[..., 2:3] * m.moai_SA_img(h, h, img_keys)
    )
    mix_lang = (
        w_lang[..., 0:1] * m.moai_CA_lang_aux(h, aux)
        + w_lang[..., 1:2] * m.moai_CA_lang_img(h, h, img_keys)
        + w_lang[..., 2:3] * m.moai_SA_lang(h, h, lang_keys)
    )
    return torch.where(im_mask[..., None], mix_img, torch.where(lang_mask[..., None], mix_lang, h))
