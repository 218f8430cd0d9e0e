"""CoLLaVO's crayon prompt: class and number maps on the vision grid -> seg features at the image positions, and the
segment text before the question."""

from __future__ import annotations

import numpy as np

from moai_edge.engines.errors import InputError
from moai_edge.engines.manifest import ModelDims
from moai_edge.engines.registry import open_engine

from ..contracts import AuxInputs
from ..experts.results import ExpertResults
from ..experts.verbalize import collavo_question, crayon_maps, crayon_text
from .base import Family, HeadParts, family


@family("collavo")
class CoLLaVO(Family):
    graphs = ("crayon",)
    display_name = "crayon_text"
    image_aligned = ("seg_features",)

    def aux_inputs(self, results: ExpertResults) -> AuxInputs:
        class_map, number_map = crayon_maps(results.panoptic)
        return AuxInputs(class_map=class_map, number_map=number_map,
                         segment_text=crayon_text(results.panoptic, results.labels))

    def question(self, aux: AuxInputs, question: str) -> str:
        return collavo_question(aux.segment_text, question)

    def display_text(self, aux: AuxInputs) -> str | None:
        return aux.segment_text

    def open_head(self, parts: HeadParts) -> CrayonHead:
        return CrayonHead(parts)


def crayon_map_ids(aux: AuxInputs, dims: ModelDims) -> tuple[np.ndarray, np.ndarray]:
    """The crayon graph's class and number ids of one image, (grid * grid,) each; zeros where nothing was found."""
    g = dims.grid
    c = np.zeros((g, g), np.int64) if aux.class_map is None else np.asarray(aux.class_map, np.int64)
    n = np.zeros((g, g), np.int64) if aux.number_map is None else np.asarray(aux.number_map, np.int64)
    if c.shape != (g, g) or n.shape != (g, g):
        raise InputError(f"crayon maps must be ({g}, {g}), found class {c.shape} and number {n.shape}")
    # the reference indexes its number table unguarded and fails on an image with more instances of a class than
    # the table has numbers (20); here those instances share the last number
    n = np.minimum(n, dims.num_seg_numbers - 1)
    if c.min() < 0 or c.max() >= dims.num_seg_classes or n.min() < 0:
        raise InputError(f"crayon map values out of range: class ids must be in [0, {dims.num_seg_classes}), "
                         f"numbers in [0, {dims.num_seg_numbers}); found class {c.min()}..{c.max()}, "
                         f"number {n.min()}..{n.max()}")
    return c.reshape(-1), n.reshape(-1)


class CrayonHead:
    """The crayon graph: (class, number) ids per grid cell -> seg features per image token."""

    def __init__(self, parts: HeadParts):
        self.dims = parts.manifest.model
        self.engine = open_engine(parts.manifest, "crayon", parts.options)

    def prefill_extras(self, aux: list[AuxInputs]) -> dict[str, np.ndarray]:
        ids = [crayon_map_ids(a, self.dims) for a in aux]
        feeds = {"class_map": np.stack([c for c, _ in ids]), "number_map": np.stack([n for _, n in ids])}
        return {"seg_features": self.engine.run(feeds)["seg_features"]}

    def close(self) -> None:
        self.engine.close()
