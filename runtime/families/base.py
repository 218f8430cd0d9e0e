"""The family plug-in: everything CoLLaVO and MoAI do differently in the runtime, in two parts.

- `Family`, one registered object per family: the experts' results -> its `AuxInputs`, the text put before the
  question, the display text, which prefill inputs sit at the image positions, and `open_head`.
- a head, one per loaded package (`Family.open_head(HeadParts)`): the prefill graph's family inputs for a batch,
  computed on the graphs the head opens and owns (crayon / compressor). It is given only what it needs.

The PyTorch side (export.family_heads) implements the same head protocol on the PyTorch modules, for the
reference and for training. Nothing else in the runtime asks which family it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from moai_edge.engines.errors import ManifestError
from moai_edge.engines.manifest import Manifest
from moai_edge.engines.options import RuntimeOptions

from ..contracts import AuxInputs

if TYPE_CHECKING:
    from ..decoding.tokenizer import Tokenizer
    from ..experts.results import ExpertResults


class FamilyHead(Protocol):
    def prefill_extras(self, aux: list[AuxInputs]) -> dict:
        """The prefill graph's family inputs for one batch, by input name, one row per `aux`: (B, N, H) per image
        token for the family's `image_aligned` inputs, (B, ...) for the others."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class HeadParts:
    """What a family head may use besides the graphs it opens itself."""

    manifest: Manifest
    options: RuntimeOptions
    tokenizer: Tokenizer
    embed_table: np.ndarray  # (vocab + 1, H), the decoder's token embeddings
    encode_pixels: Callable[[np.ndarray], np.ndarray]  # the vision tower: (B, 3, S, S) normalized -> (B, N, H)


class Family:
    name: str
    display_name: str  # what the display text is called in reports
    graphs: tuple[str, ...] = ()  # the package's graphs its head opens, besides vision, prefill and decode
    image_aligned: tuple[str, ...] = ()  # prefill inputs given per image token, placed at the image positions

    def aux_inputs(self, results: ExpertResults) -> AuxInputs:
        raise NotImplementedError

    def question(self, aux: AuxInputs, question: str) -> str:
        """The question with what the family puts before it."""
        return question

    def display_text(self, aux: AuxInputs) -> str | None:
        raise NotImplementedError

    def open_head(self, parts: HeadParts) -> FamilyHead:
        raise NotImplementedError


FAMILIES: dict[str, Family] = {}


def family(name: str):
    """Class decorator: register one instance of the class under `name`, the manifest's family."""
    def register(cls):
        FAMILIES[name] = cls()
        FAMILIES[name].name = name
        return cls
    return register


def family_of(name: str) -> Family:
    if name not in FAMILIES:
        raise ManifestError(f"unknown model family '{name}': this moai-edge runs {sorted(FAMILIES)}")
    return FAMILIES[name]
