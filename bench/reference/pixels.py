"""The reference's image preprocessing: torchvision resize of the uint8 image, then the 0-255 normalisation."""

from __future__ import annotations

import numpy as np
import torch

from moai_edge.export.family_heads import normalise


def reference_pixels(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 HxWx3 -> (1,3,S,S): torchvision Resize(antialias=False) on the uint8 tensor, then 0-255 normalisation."""
    from torchvision.transforms import Resize

    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    t = Resize(size=(size, size), antialias=False)(t)[:3]
    return normalise(t[None].float())

