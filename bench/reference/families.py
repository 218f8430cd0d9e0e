"""The reference's per-family prefill extras, as the reference repositories compute them in PyTorch.

The runtime's family object (runtime.families.family_of) already says what differs around the model — the
aux inputs from expert results, the question prefix, the display text, which extras sit at the image
positions — and the reference reuses it. What is left is the one step the reference computes with its own
modules: the prefill graph's family input of one row, keyed by the VLM.prefill keyword it feeds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from moai_edge.engines.errors import ManifestError
from moai_edge.runtime.experts.verbalize import EMPTY_VERBALIZATION
from moai_edge.runtime.families import AuxInputs

from .pixels import normalise

if TYPE_CHECKING:
    from .backbone import ReferenceBackbone


class ReferenceFamily:
    name: str

    def prefill_extras(self, backbone: ReferenceBackbone, aux: AuxInputs) -> dict[str, torch.Tensor]:
        """One row's family input of VLM.prefill, by keyword. An input the runtime family lists in `image_aligned`
        is given per image token, (1, N, H), and the backbone places it at the image positions."""
        raise NotImplementedError


REFERENCE_FAMILIES: dict[str, ReferenceFamily] = {}


def reference_family(name: str):
    """Class decorator: register one instance of the class under `name`, the manifest's family."""
    def register(cls):
        instance = cls()
        instance.name = name
        REFERENCE_FAMILIES[name] = instance
        return cls
    return register


def reference_family_of(name: str) -> ReferenceFamily:
    if name not in REFERENCE_FAMILIES:
        raise ManifestError(f"unknown model family '{name}': the reference knows {sorted(REFERENCE_FAMILIES)}")
    return REFERENCE_FAMILIES[name]


@reference_family("collavo")
class CoLLaVOReference(ReferenceFamily):
    """Crayon prompt: the class and number maps (zeros when nothing was found) -> seg features per image token."""

    def prefill_extras(self, backbone: ReferenceBackbone, aux: AuxInputs) -> dict[str, torch.Tensor]:
        g = backbone.model.cfg.vision.grid
        cls = torch.as_tensor(aux.class_map if aux.class_map is not None else np.zeros((g, g)), dtype=torch.long)
        num = torch.as_tensor(aux.number_map if aux.number_map is not None else np.zeros((g, g)), dtype=torch.long)
        return {"seg_features": backbone.model.crayon_features(cls.reshape(1, -1), num.reshape(1, -1))}


@reference_family("moai")
class MoAIReference(ReferenceFamily):
    """The verbalized experts embedded with BOS ++ the colour map through CLIP + projector (fed as fp16, like the
    reference), compressed into the aux tokens."""

    def prefill_extras(self, backbone: ReferenceBackbone, aux: AuxInputs) -> dict[str, torch.Tensor]:
        m = backbone.model
        size = m.cfg.vision.image_size
        cmap = aux.colour_map if aux.colour_map is not None else np.zeros((size, size, 3), np.float32)
        cmap = torch.from_numpy(np.asarray(cmap, np.float32)).permute(2, 0, 1)[None].half()
        maps = m.encode_image(normalise(cmap.float()))
        text = aux.verbalized if aux.verbalized is not None else EMPTY_VERBALIZATION
        verbalized = m.embed(torch.tensor([backbone.tokenizer(text)]))  # BOS first
        return {"aux_tokens": m.compress(torch.cat([verbalized, maps], dim=1))}
