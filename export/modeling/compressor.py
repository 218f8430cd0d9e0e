"""MoAI-Compressor: a Perceiver resampler (64 latents) over the auxiliary embeddings."""

from __future__ import annotations

import torch
from torch import nn

from ..config import CompressorConfig


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, *, dim_head: int, heads: int):
        super().__init__()
        self.scale, self.heads = dim_head**-0.5, heads
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x, latents):
        """x (B,N,D), latents (B,M,D); keys/values = concat(inputs, latents); no mask."""
        x, latents = self.norm_media(x), self.norm_latents(latents)
        b = x.shape[0]
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.view(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        sim = torch.matmul(q * self.scale, k.transpose(-2, -1))
        out = torch.matmul(sim.softmax(dim=-1), v).transpose(1, 2).reshape(b, latents.shape[1], -1)
        return self.to_out(out)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class PerceiverResampler(nn.Module):
    def __init__(self, dim: int, cfg: CompressorConfig):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head=cfg.dim_head, heads=cfg.heads),
                           feed_forward(dim, cfg.ff_mult)])
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,N,D) -> (B,num_latents,D)."""
        latents = self.latents[None].expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)
