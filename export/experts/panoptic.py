"""Mask2Former panoptic segmentation: presets, the tiny factory, loading, and its graph target.

Real checkpoints (facebook/mask2former-swin-{base,large}-coco-panoptic) load with transformers'
own `from_pretrained`; tiny ones are saved with `save_pretrained`, so both take the same path.
Swin runs with eager attention; the graph returns the raw class and mask logits and the runtime
post-processes them in numpy.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..families import family_of
from ..graphs import GraphTarget
from .pretrained import load_pretrained

IMAGE_SIZE = 384
SWIN = {  # embed_dim, depths, heads: Swin-B and Swin-L as the reference checkpoints use them
    "base": (128, [2, 2, 18, 2], [4, 8, 16, 32]),
    "large": (192, [2, 2, 18, 2], [6, 12, 24, 48]),
    "tiny": (16, [1, 1, 1, 1], [1, 1, 2, 2]),
}


def panoptic_config(preset: str, family: str, labels: list[str]):
    from transformers import Mask2FormerConfig, SwinConfig

    size = "tiny" if preset == "tiny" else family_of(family).panoptic_swin  # the reference's Swin size otherwise
    dim, depths, heads = SWIN[size]
    swin = SwinConfig(image_size=IMAGE_SIZE, patch_size=4, embed_dim=dim, depths=depths, num_heads=heads,
                      window_size=12, out_features=["stage1", "stage2", "stage3", "stage4"])
    full = preset != "tiny"
    cfg = Mask2FormerConfig(
        backbone_config=swin, num_queries=200 if full else 12, hidden_dim=256 if full else 32,
        mask_feature_size=256 if full else 32, feature_size=256 if full else 32, encoder_layers=6 if full else 1,
        decoder_layers=10 if full else 2, num_attention_heads=8 if full else 2,
        encoder_feedforward_dim=1024 if full else 64, dim_feedforward=2048 if full else 64,
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )
    return cfg


def build_tiny_panoptic(out_dir: Path, *, family: str, preset: str, labels: list[str], seed: int) -> Path:
    """Seeded random weights in the published layout (config.json + model.safetensors)."""
    from transformers import Mask2FormerForUniversalSegmentation

    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(panoptic_config(preset, family, labels))
    params = dict(model.named_parameters())
    with torch.no_grad():  # confident classes and decisive masks, so that segments survive the thresholds
        params["class_predictor.weight"].mul_(30.0)
        params["class_predictor.bias"][sorted({i % len(labels) for i in (0, 2, 20, 100, 120)})] += 8.0
        params["model.transformer_module.decoder.mask_predictor.mask_embedder.2.0.weight"].mul_(150.0)
    model.save_pretrained(out_dir)
    return Path(out_dir)


def input_size(model: nn.Module) -> int:
    """The square input the expert is fed: the reference's 384, or the `input_size` its config.json names (the
    world's expert is trained smaller)."""
    return int(getattr(model.config, "input_size", IMAGE_SIZE))


REFERENCE_POST_PROCESS = {"threshold": 0.5, "mask_threshold": 0.95, "overlap_mask_area_threshold": 0.8}


def post_process_settings(model: nn.Module) -> dict[str, float]:
    """The reference's post-processing thresholds, with any its config.json overrides under `post_process` (the
    world's expert, trained for minutes, is calibrated to less peaked scores than COCO Mask2Former's)."""
    return {**REFERENCE_POST_PROCESS, **getattr(model.config, "post_process", {})}


def load_panoptic(path_or_id: str | Path) -> nn.Module:
    from transformers import Mask2FormerForUniversalSegmentation

    return load_pretrained(Mask2FormerForUniversalSegmentation, path_or_id, expert="panoptic").eval()


def labels_of(model: nn.Module) -> list[str]:
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


class PanopticGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model(pixel_values=pixel_values)
        return out.class_queries_logits, out.masks_queries_logits


PANOPTIC = GraphTarget(
    name="panoptic", build=PanopticGraph,
    inputs=lambda m, b: {"pixel_values": torch.randn(b, 3, input_size(m), input_size(m))},
    dynamic_axes=lambda m: {k: {0: "batch"} for k in ("pixel_values", "class_queries_logits", "masks_queries_logits")},
    output_names=lambda m: ["class_queries_logits", "masks_queries_logits"],
)
