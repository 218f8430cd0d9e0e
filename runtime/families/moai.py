"""MoAI's expert path: the verbalized experts (embedded with BOS) ++ the colour map through the vision tower ->
the compressor -> aux tokens the mixers read."""

from __future__ import annotations

import numpy as np

from moai_edge.engines.errors import InputError
from moai_edge.engines.manifest import PreprocessConfig
from moai_edge.engines.registry import open_engine

from ..contracts import AuxInputs
from ..experts.verbalize import (EMPTY_VERBALIZATION, colour_map, join_parts, verbalize_detections, verbalize_ocr,
                                 verbalize_relations, verbalize_segments)
from ..experts.results import ExpertResults
from ..images import normalize_unit
from .base import Family, HeadParts, family


@family("moai")
class MoAI(Family):
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

    def open_head(self, parts: HeadParts) -> CompressorHead:
        return CompressorHead(parts)


def colour_map_pixels(aux: AuxInputs, preprocess: PreprocessConfig) -> np.ndarray:
    """The colour map as the vision tower takes it, (3, S, S): rounded to float16 as the reference feeds it, then
    normalized; zeros where nothing was found."""
    s = preprocess.image_size
    cmap = np.zeros((s, s, 3), np.float32) if aux.colour_map is None else np.asarray(aux.colour_map, np.float32)
    if cmap.shape != (s, s, 3):
        raise InputError(f"colour_map must have shape ({s}, {s}, 3), found {cmap.shape}")
    return normalize_unit(cmap.astype(np.float16).astype(np.float32), preprocess)


def verbalized_text(aux: AuxInputs) -> str:
    """The text the compressor reads: the verbalized experts, or the reference's text for an empty result."""
    return aux.verbalized if aux.verbalized is not None else EMPTY_VERBALIZATION


class CompressorHead:
    """The compressor graph over [embedded verbalized text ++ colour-map features], one image at a time."""

    def __init__(self, parts: HeadParts):
        self.preprocess, self.tokenizer = parts.manifest.preprocess, parts.tokenizer
        self.embed_table, self.encode_pixels = parts.embed_table, parts.encode_pixels
        self.engine = open_engine(parts.manifest, "compressor", parts.options)
        self.dtype = np.dtype(next(s.dtype for s in self.engine.inputs() if s.name == "aux_inputs"))

    def prefill_extras(self, aux: list[AuxInputs]) -> dict[str, np.ndarray]:
        map_features = self.encode_pixels(np.stack([colour_map_pixels(a, self.preprocess) for a in aux]))
        return {"aux_tokens": np.stack([self.compress(a, m) for a, m in zip(aux, map_features)])}

    def compress(self, aux: AuxInputs, map_features: np.ndarray) -> np.ndarray:
        """One image: the compressor has no padding mask, so batching unequal texts would change it."""
        ids = np.asarray(self.tokenizer.encode(verbalized_text(aux), add_bos=True), np.int64)
        aux_inputs = np.concatenate([self.embed_table[ids], map_features])[None].astype(self.dtype)
        return self.engine.run({"aux_inputs": aux_inputs})["aux_tokens"][0]

    def close(self) -> None:
        self.engine.close()
