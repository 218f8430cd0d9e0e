"""A float32 engine package -> the same package at a precision preset (export.precision).

Files the preset keeps are copied; each graph file it lowers is transformed once (export.quantize), for every
component that runs it (prefill and decode are branches of one decoder graph), and saved in its place. A graph
with external weights keeps them outside, in `{stem}.weights` beside it: the merged decoder's weights stay one
file (export.merge_decoder says why that layout, docs/precision.md what it measures). A package in the two-graph
layout (a float16-IO decode graph, for GPUs) gets one weights file per graph. The manifest records each component's
precision and the preset.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from moai_edge.engines.manifest import Component, Manifest, TensorSpec, load_manifest, sha256_of

from . import quantize
from .calibration import calibration_feeds
from .onnx_weights import save_model
from .package import decode_weight_bytes, io_specs, tensorrt_section
from .precision import DECODER, PrecisionPreset


def lowered(proto, kind: str, *, decoder: bool, preset: PrecisionPreset, calibration: list[dict] | None = None):
    if kind == "fp16":
        return quantize.float16(proto)
    if kind == "int8-qdq":
        return quantize.static_int8_qdq(proto, calibration)
    if decoder:
        return quantize.weight_only(proto, preset.rules["decoder"], preset.rules["head"])
    return quantize.dynamic_int8(proto)


def reduce_package(src: Path, out: Path, preset: PrecisionPreset) -> Manifest:
    """Write `src` (a float32 package) at `preset` into `out` and return the saved manifest."""
    import onnx

    src, out = Path(src), Path(out)
    manifest = copy.deepcopy(load_manifest(src))  # changed below: never the shared, cached one
    manifest.verify_all()  # every file of `src` hashed before it is copied or lowered
    out.mkdir(parents=True, exist_ok=True)
    components = {name: replace(comp, precision=preset.of(name)) for name, comp in manifest.components.items()}
    lower = {name for name, c in components.items() if c.kind == "onnx" and c.precision != "fp32"}
    if preset.of("embedding") != "fp32":
        lower.add("embedding")
    kept = {f for name in manifest.components if name not in lower for f in manifest.component_files(name)}
    for rel in sorted(kept | {manifest.tokenizer["file"]}):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, out / rel)
    by_file: dict[str, list[str]] = {}
    for name in sorted(lower - {"embedding"}):
        by_file.setdefault(components[name].file, []).append(name)
    calibrated = {name for name in lower if components[name].precision == "int8-qdq"}
    feeds = calibration_feeds(src, calibrated) if calibrated else {}
    for file, names in by_file.items():
        first = components[names[0]]
        proto = lowered(onnx.load(str(src / file)), first.precision, decoder=names[0] in DECODER, preset=preset,
                        calibration=feeds.get(names[0]))
        external = bool(first.extra_files or first.shared_weights)
        weights = f"{Path(file).stem}.weights" if external else None
        digest = save_model(proto, out / file, weights=weights)
        extra = {weights: sha256_of(out / weights)} if weights else {}
        for name in names:
            changed = {"sha256": digest, "shared_weights": None, "extra_files": extra}
            if len(names) == 1:  # its own graph: the specs are the lowered graph's (a branch keeps its own)
                changed["inputs"], changed["outputs"] = io_specs(proto)
            components[name] = replace(components[name], **changed)
    if "embedding" in lower:
        components["embedding"] = half_embedding(manifest, out)
    manifest.components = components
    manifest.shared_weights = {k: w for k, w in manifest.shared_weights.items()
                               if any(c.shared_weights == k for c in components.values())}
    manifest.source = {**manifest.source, "precision": preset.name}
    manifest.save(out)
    manifest.source["decode_weight_bytes"] = decode_weight_bytes(manifest)  # of the lowered graph, now in `out`
    manifest.tensorrt = tensorrt_section(manifest)  # the lowered graphs, checked again
    manifest.save(out)
    return manifest


def half_embedding(manifest: Manifest, out: Path) -> Component:
    comp = manifest.component("embedding")
    table = manifest.load_array("embedding").astype(np.float16)
    np.save(out / comp.file, table)
    return replace(comp, sha256=sha256_of(out / comp.file), precision="fp16",
                   outputs=[TensorSpec("embed_tokens", "float16", tuple(table.shape))])


def reduce_and_check(src: Path, out: Path, preset: PrecisionPreset) -> Manifest:
    """`reduce_package`, then the reduced package held to `src` on world questions (export.precision_check); the
    measured agreement is recorded in the manifest's source."""
    from moai_edge.runtime import Pipeline

    from .precision_check import check_agreement, measure_agreement

    manifest = reduce_package(src, out, preset)
    with Pipeline.load(src) as reference, Pipeline.load(out) as reduced:
        measured = measure_agreement(reference, reduced)
    manifest.source["precision_check"] = {"against": "fp32", **{k: a.to_json() for k, a in measured.items()}}
    manifest.save(out)
    check_agreement(preset.rules["decoder"].kind, measured["decoder"])
    return manifest
