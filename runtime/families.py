"""The two model families as plug-ins: everything CoLLaVO and MoAI do differently in the runtime.

A family turns the experts' results into its auxiliary inputs, puts what it needs before the
question, computes its prefill graph's extra input, and names its display text. Nothing else in
the runtime asks which family it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from moai_edge.engines.errors import InputError, ManifestError

from .experts.verbalize import (EMPTY_VERBALIZATION, collavo_question, colour_map, crayon_maps, crayon_text, join_parts,
                                verbalize_detections, verbalize_ocr, verbalize_relations, verbalize_segments)
from .decoder import input_dtypes
from .images import normalize_unit

if TYPE_CHECKING:
    from .backbone import Backbone
    from .experts.runner import ExpertResults


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


class Family:
    name: str
    graphs: tuple[str, ...]  # the backbone graphs besides vision, prefill and decode
    image_aligned: tuple[str, ...] = ()  # prefill extras given per image token, placed at the image positions
    display_name: str  # what the display text is called in reports

    def aux_inputs(self, results: ExpertResults) -> AuxInputs:
        raise NotImplementedError

    def question(self, aux: AuxInputs, question: str) -> str:
        return question

    def display_text(self, aux: AuxInputs) -> str | None:
        raise NotImplementedError

    def prefill_extras(self, backbone: Backbone, aux: list[AuxInputs]) -> list[dict[str, np.ndarray]]:
        """Per row, the prefill graph's family input."""
        raise NotImplementedError


FAMILIES: dict[str, Family] = {}


def family(name: str):
    def register(cls):
        FAMILIES[name] = cls()
        FAMILIES[name].name = name
        return cls
    return register


def family_of(name: str) -> Family:
    if name not in FAMILIES:
        raise ManifestError(f"unknown model family '{name}': this moai-edge runs {sorted(FAMILIES)}")
    return FAMILIES[name]


@family("collavo")
class CoLLaVO(Family):
    """Crayon prompt: class/number maps -> seg features at the image positions; segment text before the question."""

    graphs = ("crayon",)
    image_aligned = ("seg_features",)
    display_name = "crayon_text"

    def aux_inputs(self, results: ExpertResults) -> AuxInputs:
        class_map, number_map = crayon_maps(results.panoptic)
        return AuxInputs(class_map=class_map, number_map=number_map,
                         segment_text=crayon_text(results.panoptic, results.labels))

    def question(self, aux: AuxInputs, question: str) -> str:
        return collavo_question(aux.segment_text, question)

    def display_text(self, aux: AuxInputs) -> str | None:
        return aux.segment_text

    def prefill_extras(self, backbone: Backbone, aux: list[AuxInputs]) -> list[dict[str, np.ndarray]]:
        d = backbone.dims
        g = d.grid
        cls, num = [], []
        for a in aux:
            c = np.zeros((g, g), np.int64) if a.class_map is None else np.asarray(a.class_map, np.int64)
            n = np.zeros((g, g), np.int64) if a.number_map is None else np.asarray(a.number_map, np.int64)
            if c.shape != (g, g) or n.shape != (g, g):
                raise InputError(f"crayon maps must be ({g}, {g}), found class {c.shape} and number {n.shape}")
            # the reference indexes its number table unguarded and fails on an image with more instances of a class
            # than the table has numbers (20); here those instances share the last number
            n = np.minimum(n, d.num_seg_numbers - 1)
            if c.min() < 0 or c.max() >= d.num_seg_classes or n.min() < 0:
                raise InputError(f"crayon map values out of range: class ids must be in [0, {d.num_seg_classes}), "
                                 f"numbers in [0, {d.num_seg_numbers}); found class {c.min()}..{c.max()}, "
                                 f"number {n.min()}..{n.max()}")
            cls.append(c.reshape(-1))
            num.append(n.reshape(-1))
        seg = backbone.engines["crayon"].run({"class_map": np.stack(cls), "number_map": np.stack(num)})["seg_features"]
        return [{"seg_features": s} for s in seg]


@family("moai")
class MoAI(Family):
    """Verbalized experts (embedded with BOS) ++ the colour map through the vision tower -> compressor -> aux tokens."""

    graphs = ("compressor",)
    display_name = "verbalized"

    def aux_inputs(self, results: ExpertResults) -> AuxInputs:
        relations = results.scene_graph.relations if results.scene_graph else []
        text = join_parts(verbalize_segments(results.panoptic, results.labels),
                          verbalize_detections(results.detections, results.detector_labels),
                          verbalize_relations(relations), verbalize_ocr([line.text for line in results.ocr]))
        return AuxInputs(verbalized=text, colour_map=colour_map(results.panoptic))

    def display_text(self, aux: AuxInputs) -> str | None:
        return aux.verbalized

    def prefill_extras(self, backbone: Backbone, aux: list[AuxInputs]) -> list[dict[str, np.ndarray]]:
        maps = np.stack([self.colour_map_pixels(backbone, a) for a in aux])
        map_features = backbone.vision.encode_pixels(maps)  # the same tower as the image
        return [{"aux_tokens": self.compress(backbone, a, m)} for a, m in zip(aux, map_features)]

    @staticmethod
    def colour_map_pixels(backbone: Backbone, a: AuxInputs) -> np.ndarray:
        pre = backbone.manifest.preprocess
        s = pre.image_size
        cmap = np.zeros((s, s, 3), np.float32) if a.colour_map is None else np.asarray(a.colour_map, np.float32)
        if cmap.shape != (s, s, 3):
            raise InputError(f"colour_map must have shape ({s}, {s}, 3), found {cmap.shape}")
        cmap = cmap.astype(np.float16).astype(np.float32)  # the reference feeds it as fp16
        return normalize_unit(cmap, pre)

    @staticmethod
    def compress(backbone: Backbone, a: AuxInputs, map_features: np.ndarray) -> np.ndarray:
        """One image at a time: the compressor has no padding mask, so batching unequal texts would change it."""
        text = a.verbalized if a.verbalized is not None else EMPTY_VERBALIZATION
        ids = np.asarray(backbone.tokenizer.encode(text, add_bos=True), np.int64)
        engine = backbone.engines["compressor"]
        dtype = input_dtypes(engine)["aux_inputs"]
        aux_inputs = np.concatenate([backbone.embed_table[ids], map_features])[None].astype(dtype)
        return engine.run({"aux_inputs": aux_inputs})["aux_tokens"][0]
