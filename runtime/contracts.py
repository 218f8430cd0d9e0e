"""The plain types the runtime's parts and its callers share. Imports nothing of ours, so any part may use them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

OnToken = Callable[[int, int], "bool | None"]  # (row, token); returning False stops that row's decoding
ShouldStop = Callable[[int], bool]  # (row) -> True once nobody wants that row's answer: checked between decoding steps


@dataclass
class AuxInputs:
    """What the experts contribute. CoLLaVO: crayon maps on the vision grid and the segment text
    ("(#1 person) [0.11, 0.20, 0.46, 0.97], ..."). MoAI: the verbalized expert text and the panoptic
    colour map (S,S,3) with values in 0..1. None means the reference's empty case."""

    class_map: np.ndarray | None = None
    number_map: np.ndarray | None = None
    segment_text: str | None = None
    verbalized: str | None = None
    colour_map: np.ndarray | None = None
