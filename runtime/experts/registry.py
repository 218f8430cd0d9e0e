"""The expert registry: each expert is one file of runtime/experts that registers, with `@expert(name)`, a class that
opens its engines from an `ExpertContext`, runs on a batch of images and attaches one image's output to its
`ExpertResults`. Registry order is the order runtime/experts/__init__.py imports them (panoptic first). The PyTorch
reference (bench.reference.experts) attaches its outputs with the same `attach`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Protocol

import numpy as np

from moai_edge.engines.manifest import Manifest
from moai_edge.engines.protocol import Engine

from .results import ExpertResults


@dataclass(frozen=True)
class ExpertContext:
    """What an expert opens itself from: the manifest, its section there, and an opener of package components
    (with the options the experts run under)."""

    manifest: Manifest
    section: dict
    open: Callable[[str], Engine]


class Expert(Protocol):
    def run(self, images: list[np.ndarray]) -> list:
        """HxWx3 uint8 RGB images -> one output per image."""

    @staticmethod
    def attach(result: ExpertResults, found, section: dict) -> None:
        """Put one image's output (and what the section says about it, e.g. labels) into its results."""

    def close(self) -> None: ...


EXPERTS: dict[str, type] = {}


def expert(name: str):
    """Class decorator: the class runs the manifest's expert section `name`; constructed with an ExpertContext."""
    def register(cls):
        EXPERTS[name] = cls
        return cls
    return register


def config_from(cls, section: dict):
    """A config dataclass from the manifest's section for it (which also names files and sources)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in section.items() if k in names})
