"""CLIP vision tower (transformers' CLIPVisionModel) on the interpolated grid, and the MLP projectors."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import VisionConfig


def clip_config(cfg: VisionConfig):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        patch_size=cfg.patch_size,
        image_size=cfg.image_size,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act=cfg.hidden_act,
        attn_implementation="eager",
    )


class VisionTower(nn.Module):
    """`vit.vision_tower` of the checkpoints: features are the last layer's patch tokens (no CLS, no post-LN)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        from transformers import CLIPVisionModel

        # the published layout is transformers 4's `CLIPVisionModel.vision_model.*`; transformers 5 flattened it
        self.vision_tower = nn.Module()
        self.vision_tower.vision_model = CLIPVisionModel(clip_config(cfg)).eval()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower.vision_model(pixel_values=pixel_values)
        return out.last_hidden_state[:, 1:]


def interpolate_position_table(table: torch.Tensor, new_grid: int) -> torch.Tensor:
    """(1+g*g, D) -> (1+n*n, D): bicubic, align_corners False, rounded through fp16 as the reference does."""
    old = int(round((table.shape[0] - 1) ** 0.5))
    if old * old + 1 != table.shape[0]:
        raise ValueError(f"position table of {table.shape[0]} rows is not 1 + a square grid")
    if old == new_grid:
        return table
    dim = table.shape[1]
    cls_tok, grid = table[:1], table[1:].float().reshape(1, old, old, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, dim).half()
    return torch.cat([cls_tok, grid.to(cls_tok.dtype)], dim=0)


def projector(in_dim: int, out_dim: int) -> nn.Sequential:
    """mlp2x_gelu: Linear, GELU, Linear (keys 0 and 2)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
