"""What the pipeline sees of one image: what every question about it needs besides the question."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .contracts import AuxInputs
from .experts.results import ExpertResults


@dataclass
class Observation:
    """`Pipeline.observe`'s output per image; give it to `Pipeline.score`, or to another package of the same family."""

    features: np.ndarray  # (N, H) the vision tower's output for this image
    results: ExpertResults | None = None  # None until the experts ran on it
    aux: AuxInputs | None = None

    def nbytes(self) -> int:
        arrays = ([self.features] + [getattr(self.aux, f.name) for f in fields(AuxInputs)] if self.aux
                  else [self.features])
        size = sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))
        if self.results is not None:
            size += self.results.panoptic.segmentation.nbytes + 4096  # the lists around it: a few KB
        return size
