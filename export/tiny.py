"""Tiny checkpoints of the real architectures from seeded random weights, in the published on-disk layout.

Weights are drawn so that activations keep unit scale through the layers and the logits are
far from uniform: parity tests built on them can fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .checkpoint import POS_KEY, save_checkpoint
from .config import ModelConfig, preset_config
from .modeling.vlm import VLM


def init_weights(model: VLM, generator: torch.Generator) -> None:
    def normal_(t: torch.Tensor, std: float, mean: float = 0.0):
        with torch.no_grad():
            t.copy_(torch.randn(t.shape, generator=generator) * std + mean)

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            normal_(module.weight, 1.0 / math.sqrt(module.weight[0].numel()))
            if module.bias is not None:
                normal_(module.bias, 0.02)
        elif isinstance(module, nn.Embedding):
            normal_(module.weight, 1.0)
        elif isinstance(module, nn.LayerNorm):
            normal_(module.weight, 0.1, mean=1.0)
            normal_(module.bias, 0.1)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") and p.dim() == 1 and "vit." not in name:  # RMSNorm
            normal_(p, 0.1, mean=1.0)
        elif name in ("moai_compressor.latents", "vit.vision_tower.vision_model.embeddings.class_embedding"):
            normal_(p, 1.0)
    normal_(model.output.weight, 3.0 / math.sqrt(model.cfg.decoder.hidden_size))


def source_position_table(model: VLM, generator: torch.Generator) -> torch.Tensor:
    """The table at the vision tower's training resolution; loading interpolates it as the reference does."""
    v = model.cfg.vision
    g = v.source_image_size // v.patch_size
    return torch.randn((1 + g * g, v.hidden_size), generator=generator) * 0.5


def unused_w2_seg_tensors(cfg: ModelConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """CoLLaVO's reference saves a `feed_forward.w2.Plora_seg_A/B` pair per layer that its forward never uses."""
    d = cfg.decoder
    shapes = {"A": (d.plora_rank, d.intermediate_size), "B": (d.hidden_size, d.plora_rank)}
    return {f"model.layers.{i}.feed_forward.w2.Plora_seg_{ab}.weight":
            torch.randn(shape, generator=generator) / math.sqrt(shape[1])
            for i in range(d.num_layers) for ab, shape in shapes.items()}


def build_tiny_checkpoint(family: str, out_dir: Path, *, preset: str = "tiny", seed: int = 0,
                          train_tokenizer: Callable[..., Path] | None = None) -> Path:
    """Write a checkpoint folder (config.json, fp16 safetensors shards, tokenizer.model) and return it.
    `train_tokenizer(out_dir, seed=)` writes the tokenizer (default: the generic tiny one)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from .tokenizer_factory import train_tiny_tokenizer

    tok_file = (train_tokenizer or train_tiny_tokenizer)(out_dir, seed=seed)
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(tok_file)).get_piece_size()
    cfg: ModelConfig = preset_config(family, preset, vocab_size=vocab)
    gen = torch.Generator().manual_seed(seed)
    model = VLM(cfg)
    init_weights(model, gen)
    tensors = dict(model.state_dict())
    tensors[POS_KEY] = source_position_table(model, gen)
    tensors.pop("vit.vision_tower.vision_model.embeddings.position_ids", None)
    # "<image>" is added at load
    tensors["model.tok_embeddings.weight"] = tensors["model.tok_embeddings.weight"][:vocab]
    if cfg.decoder.seg_branch:
        tensors.update(unused_w2_seg_tensors(cfg, gen))
    save_checkpoint(tensors, cfg, out_dir)
    return out_dir
