"""The whole CoLLaVO / MoAI model in PyTorch: the parity oracle and the source of every exported graph.

Module names equal the published checkpoints' (`model.*`, `output`, `vit.vision_tower.*`,
`vision_proj`, `moai_compressor`, `vision_proj_for_seg`, `seg_prompt_embed`, `seg_num_embed`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .compressor import PerceiverResampler
from .decoder import KV, InternLM2Model, attention_bias, rope_cos_sin
from .vision import VisionTower, projector


class VLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dec, vis = cfg.decoder, cfg.vision
        self.model = InternLM2Model(dec)
        self.output = nn.Linear(dec.hidden_size, dec.vocab_size, bias=False)
        self.vit = VisionTower(vis)
        self.vision_proj = projector(vis.hidden_size, dec.hidden_size)
        if cfg.compressor is not None:  # MoAI
            self.moai_compressor = PerceiverResampler(dec.hidden_size, cfg.compressor)
        if cfg.crayon is not None:  # CoLLaVO
            self.vision_proj_for_seg = projector(vis.hidden_size, dec.hidden_size)
            self.seg_prompt_embed = nn.Embedding(cfg.crayon.num_classes, vis.hidden_size)
            self.seg_num_embed = nn.Embedding(cfg.crayon.num_numbers, vis.hidden_size)

    # ---- the pieces around the decoder --------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) normalized pixels -> (B,N,H) projected image tokens."""
        return self.vision_proj(self.vit(pixel_values))

    def crayon_features(self, class_map: torch.Tensor, number_map: torch.Tensor) -> torch.Tensor:
        """CoLLaVO: (B,N) class ids (0 = none) and instance numbers -> (B,N,H) seg features."""
        return self.vision_proj_for_seg(self.seg_prompt_embed.weight[class_map] + self.seg_num_embed.weight[number_map])

    def compress(self, aux_inputs: torch.Tensor) -> torch.Tensor:
        """MoAI: (B,T,H) verbalized-text embeddings ++ colour-map tokens -> (B,A,H) aux tokens."""
        return self.moai_compressor(aux_inputs)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.tok_embeddings(ids)

    # ---- decoder -------------------------------------------------------------------
    def run_layers(self, x, attention_mask, position_ids, past: list[KV] | None, **branch):
        cos, sin = rope_cos_sin(position_ids, self.model.inv_freq, x.dtype)
        bias = attention_bias(attention_mask, x.shape[1], x.dtype)
        new: list[KV] = []
        for i, layer in enumerate(self.model.layers):
            x, kv = layer(x, cos=cos, sin=sin, attn_bias=bias, past=None if past is None else past[i], **branch)
            new.append(kv)
        return x, new

    def prefill(self, inputs_embeds, attention_mask, position_ids, im_mask, *, seg_features=None, aux_tokens=None):
        """Prompt pass with the image branches. Returns last-real-position logits (B,V) and K/V per layer.

        inputs_embeds (B,L,H); attention_mask (B,L) 0/1 (right padding); position_ids (B,L);
        im_mask (B,L) bool; seg_features (B,L,H) aligned with the sequence (CoLLaVO);
        aux_tokens (B,A,H) compressed aux embeddings (MoAI).
        """
        branch = dict(im_mask=im_mask[..., None].to(inputs_embeds.dtype), seg=seg_features)
        if aux_tokens is not None:
            lang_mask = attention_mask.bool() & ~im_mask
            branch["mixer_inputs"] = dict(aux=aux_tokens, im_mask=im_mask, lang_mask=lang_mask)
        h, kv = self.run_layers(inputs_embeds, attention_mask, position_ids, None, **branch)
        last = attention_mask.long().sum(-1) - 1
        h_last = h[torch.arange(h.shape[0]), last]
        return self.output(self.model.norm(h_last)), kv

    def decode_step(self, inputs_embeds, attention_mask, position_ids, past: list[KV]):
        """One token per row, base weights only. inputs_embeds (B,1,H); attention_mask (B,S+1); position_ids (B,1)."""
        h, kv = self.run_layers(inputs_embeds, attention_mask, position_ids, past)
        return self.output(self.model.norm(h[:, -1])), kv
