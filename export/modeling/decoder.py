"""InternLM2 decoder with PLoRA (and CoLLaVO's seg branch, MoAI's mixers), written for export.

Parameter names follow the published checkpoints (`model.layers.{i}.attention.wqkv.Plora_main.weight`, ...).
Masked branches are computed for every position and multiplied by the mask instead of indexing
with a boolean mask: the same values at the masked positions, static shapes for the exporter.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import DecoderConfig
from . import mixer as moai_mixer

KV = tuple[torch.Tensor, torch.Tensor]  # (B, kv_heads, S, head_dim) each


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class PLoRALinear(nn.Module):
    """Base weight plus LoRA branches that act only where `im_mask` is 1 (prefill only)."""

    def __init__(self, in_f: int, out_f: int, *, rank: int, alpha: int, seg_branch: bool):
        super().__init__()
        self.Plora_main = nn.Linear(in_f, out_f, bias=False)
        self.Plora_A = nn.Linear(in_f, rank, bias=False)
        self.Plora_B = nn.Linear(rank, out_f, bias=False)
        if seg_branch:
            self.Plora_seg_A = nn.Linear(in_f, rank, bias=False)
            self.Plora_seg_B = nn.Linear(rank, out_f, bias=False)
        self.scaling = alpha / rank

    def forward(self, x, im_mask=None, seg=None):
        """x (B,L,in); im_mask (B,L,1) float or None (decode); seg (B,L,in) CoLLaVO seg features or None."""
        out = self.Plora_main(x)
        if im_mask is None:
            return out
        lora = self.Plora_B(self.Plora_A(x)) * self.scaling
        if seg is not None:
            lora = lora + self.Plora_seg_B(self.Plora_seg_A(seg)) * self.scaling
        return out + lora * im_mask


def rope_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids (B,L) -> cos, sin (B,1,L,head_dim), as InternLM2's cached table indexed by position."""
    freqs = position_ids.float()[..., None] * inv_freq  # (B,L,hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig, *, with_mixer: bool):
        super().__init__()
        self.cfg = cfg
        self.num_heads, self.num_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        lora = dict(rank=cfg.plora_rank, alpha=cfg.plora_alpha, seg_branch=cfg.seg_branch)
        self.wqkv = PLoRALinear(cfg.hidden_size, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim, **lora)
        self.wo = PLoRALinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, **lora)
        self.with_mixer = with_mixer
        if with_mixer:
            moai_mixer.build_mixer(self, cfg.hidden_size, rank=cfg.mixer_rank, heads=cfg.mixer_heads)

    def split_qkv(self, qkv):
        """Fused wqkv rows per KV group: q_per_kv query heads, then one key head, then one value head."""
        b, seq, _ = qkv.shape
        groups = self.num_heads // self.num_kv
        qkv = qkv.view(b, seq, self.num_kv, groups + 2, self.head_dim)
        q = qkv[..., :groups, :].reshape(b, seq, self.num_heads, self.head_dim)
        k, v = qkv[..., -2, :], qkv[..., -1, :]
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B,heads,L,hd)

    def forward(self, h, *, cos, sin, attn_bias, past: KV | None, im_mask=None, seg=None, mixer_inputs=None):
        """h (B,L,H) already RMS-normed; attn_bias (B,1,L,S_total) additive; returns (out, (k,v) of the new
        positions)."""
        if self.with_mixer and mixer_inputs is not None:
            h = moai_mixer.mix(self, h, **mixer_inputs)
        q, k, v = self.split_qkv(self.wqkv(h, im_mask, seg))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        new_kv = (k, v)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        groups = self.num_heads // self.num_kv
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        if self.training:  # training's fused kernel; export traces (and parity checks) the explicit ops below
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        else:
            scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim) + attn_bias
            out = torch.matmul(F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)
        out = out.transpose(1, 2).reshape(h.shape[0], h.shape[1], -1)
        return self.wo(out, im_mask, seg), new_kv


class FeedForward(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        lora = dict(rank=cfg.plora_rank, alpha=cfg.plora_alpha)
        self.w1 = PLoRALinear(cfg.hidden_size, cfg.intermediate_size, seg_branch=cfg.seg_branch, **lora)
        self.w3 = PLoRALinear(cfg.hidden_size, cfg.intermediate_size, seg_branch=cfg.seg_branch, **lora)
        self.w2 = PLoRALinear(cfg.intermediate_size, cfg.hidden_size, seg_branch=False, **lora)

    def forward(self, x, im_mask=None, seg=None):
        return self.w2(F.silu(self.w1(x, im_mask, seg)) * self.w3(x, im_mask, seg), im_mask)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, *, with_mixer: bool):
        super().__init__()
        self.attention = Attention(cfg, with_mixer=with_mixer)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, *, im_mask=None, seg=None, **attn_args):
        a, new_kv = self.attention(self.attention_norm(x), im_mask=im_mask, seg=seg, **attn_args)
        x = x + a
        x = x + self.feed_forward(self.ffn_norm(x), im_mask, seg)
        return x, new_kv


class InternLM2Model(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size + 1, cfg.hidden_size)  # + "<image>"
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, with_mixer=i in cfg.mixer_layers) for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        hd = cfg.head_dim
        self.register_buffer(
            "inv_freq", 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2).float() / hd)), persistent=False
        )


def attention_bias(attention_mask: torch.Tensor, q_len: int, dtype) -> torch.Tensor:
    """(B,S) 0/1 key mask -> (B,1,q_len,S) additive bias: causal over the last q_len keys, padding masked.

    Both parts use the dtype's min as the reference does; a key masked twice stays finite.
    """
    s = attention_mask.shape[1]
    neg = torch.finfo(dtype).min
    q_pos = torch.arange(q_len, device=attention_mask.device)[:, None] + (s - q_len)
    k_pos = torch.arange(s, device=attention_mask.device)[None, :]
    causal = torch.where(k_pos > q_pos, neg, 0.0).to(dtype)  # (q,S)
    padding = (1.0 - attention_mask[:, None, None, :].to(dtype)) * neg  # (B,1,1,S)
    return (causal[None, None] + padding).clamp(min=neg)
