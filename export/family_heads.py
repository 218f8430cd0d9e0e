"""The family heads on the PyTorch side: the prefill graph's family inputs computed with the model's own modules.

The same protocol as the runtime's heads (moai_edge.runtime.FamilyHead: `prefill_extras(aux) -> {input: (B, ...)}`,
image-aligned inputs per image token), so the PyTorch reference (bench.reference) and world training
(export.world.train_backbone) share one implementation, with gradients where training wants them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from moai_edge.engines.errors import ManifestError
from moai_edge.runtime import EMPTY_VERBALIZATION, AuxInputs

from .config import CLIP_MEAN, CLIP_STD
from .modeling.vlm import VLM

EncodeText = Callable[[str], list[int]]  # text -> token ids, BOS first


def normalise(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> the reference's CLIP normalisation for pixels in 0..255."""
    mean = torch.tensor(CLIP_MEAN).view(1, -1, 1, 1) * 255
    std = torch.tensor(CLIP_STD).view(1, -1, 1, 1) * 255
    return (x - mean) / std


class TorchCrayonHead:
    """CoLLaVO: the class and number maps (zeros when nothing was found) -> seg features per image token."""

    def __init__(self, model: VLM, encode_text: EncodeText):
        self.model = model

    def prefill_extras(self, aux: list[AuxInputs]) -> dict[str, torch.Tensor]:
        g = self.model.cfg.vision.grid
        maps = [(np.zeros((g, g)) if a.class_map is None else a.class_map,
                 np.zeros((g, g)) if a.number_map is None else a.number_map) for a in aux]
        cls = torch.stack([torch.as_tensor(c, dtype=torch.long).reshape(-1) for c, _ in maps])
        num = torch.stack([torch.as_tensor(n, dtype=torch.long).reshape(-1) for _, n in maps])
        return {"seg_features": self.model.crayon_features(cls, num)}

    def close(self) -> None:
        pass


class TorchCompressorHead:
    """MoAI: the verbalized experts embedded with BOS ++ the colour map through CLIP + projector (fed as fp16, like
    the reference), compressed into the aux tokens, one image at a time (the compressor has no padding mask)."""

    def __init__(self, model: VLM, encode_text: EncodeText):
        self.model, self.encode_text = model, encode_text

    def prefill_extras(self, aux: list[AuxInputs]) -> dict[str, torch.Tensor]:
        m, size = self.model, self.model.cfg.vision.image_size
        cmaps = [np.zeros((size, size, 3), np.float32) if a.colour_map is None else np.asarray(a.colour_map, np.float32)
                 for a in aux]
        pixels = torch.stack([torch.from_numpy(c).permute(2, 0, 1) for c in cmaps]).half().float()
        maps = m.encode_image(normalise(pixels))  # values in 0..1 through the 0-255 normalisation, as the reference
        tokens = []
        for a, features in zip(aux, maps):
            text = a.verbalized if a.verbalized is not None else EMPTY_VERBALIZATION
            verbalized = m.embed(torch.tensor([self.encode_text(text)]))
            tokens.append(m.compress(torch.cat([verbalized, features[None]], dim=1)))
        return {"aux_tokens": torch.cat(tokens)}

    def close(self) -> None:
        pass


TORCH_HEADS = {"collavo": TorchCrayonHead, "moai": TorchCompressorHead}


def torch_head(model: VLM, encode_text: EncodeText):
    """The PyTorch head of the model's family."""
    family = model.cfg.family
    if family not in TORCH_HEADS:
        raise ManifestError(f"unknown model family '{family}': the PyTorch side knows {sorted(TORCH_HEADS)}")
    return TORCH_HEADS[family](model, encode_text)
