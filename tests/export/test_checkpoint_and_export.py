"""Checkpoint loading from the published layout, and export's own validation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from moai_edge.engines.errors import CheckpointError, ExportValidationError  # noqa: E402
from moai_edge.engines.manifest import load_manifest  # noqa: E402
from moai_edge.export.checkpoint import load_checkpoint  # noqa: E402
from moai_edge.export.config import preset_config  # noqa: E402
from moai_edge.export.graphs import TARGETS  # noqa: E402
from moai_edge.export.onnx_export import (check_symbolic_axes, export_graph, torch_outputs,  # noqa: E402
                                          validate_graph, example_inputs)


@pytest.mark.parametrize("family", ["collavo", "moai"])
def test_config_is_inferred_from_the_tensors(tiny_packages, tiny_references, family):
    """The published config.json lacks the PLoRA rank, mixers, compressor and crayon sizes: read from shapes."""
    ckpt = tiny_packages[family] / "checkpoint"
    config = json.loads((ckpt / "config.json").read_text())
    assert not {"plora_rank", "mixer_layers", "num_latents"} & set(config)
    got = tiny_references[family].cfg
    want = preset_config(family, "tiny", vocab_size=got.decoder.vocab_size)
    if family == "collavo":  # no mixer tensors, so no mixer size to read
        want.decoder.mixer_rank = got.decoder.mixer_rank
    assert got.decoder == want.decoder and got.vision == want.vision
    assert got.compressor == want.compressor and got.crayon == want.crayon
    assert (got.decoder.mixer_layers != ()) == (family == "moai")
    assert got.decoder.seg_branch == (family == "collavo")
    assert sorted(p.name for p in ckpt.glob("*.safetensors")) == ["model-00001-of-00002.safetensors",
                                                                  "model-00002-of-00002.safetensors"]


def test_missing_tensor_is_named(tiny_packages, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_packages["moai"] / "checkpoint", ckpt)
    shard = sorted(ckpt.glob("*.safetensors"))[-1]
    tensors = load_file(shard)
    victim = sorted(tensors)[0]
    del tensors[victim]
    save_file(tensors, shard, metadata={"format": "pt"})
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    del index["weight_map"][victim]
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(ckpt)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("family", ["collavo", "moai"])
def test_every_graph_was_validated_in_export(tiny_packages, family):
    m = load_manifest(tiny_packages[family])
    m.verify_all()  # every sha256 the export recorded is the file's
    diffs = m.source["validation_max_abs_diff"]
    # PP-OCR is copied as is
    graphs = {n for n, c in m.components.items() if c.kind == "onnx" and not n.startswith("ocr_")}
    family_graphs = ({"crayon"} if family == "collavo"
                     else {"compressor", "detector", "scene_graph", "scene_graph_masks"})
    assert set(diffs) == graphs == {"vision", "prefill", "decode", "panoptic"} | family_graphs
    experts = ("panoptic", "detector", "scene_graph", "scene_graph_masks")  # their bounds: export/experts/package.py
    assert max(v for k, v in diffs.items() if k not in (*experts, "prefill")) < 1e-4
    # MoAI's fp16 gate rounding: a gate logit that the fp32 noise puts across a rounding boundary moves by one
    # fp16 step (export/package.py graph_tolerance)
    assert diffs["prefill"] < (5e-3 if family == "moai" else 1e-4)
    assert diffs["panoptic"] < 1e-2  # Mask2Former's thresholded masked attention: see export/experts/package.py


@pytest.mark.parametrize("family", ["collavo", "moai"])
def test_random_init_gives_spread_logits(tiny_references, family):
    model = tiny_references[family]
    feeds = example_inputs(TARGETS["prefill"], model, 1)
    logits = torch_outputs(TARGETS["prefill"], model, feeds)["logits"]
    assert logits.std() > 1.0  # far from uniform: a wrong graph changes the argmax


def test_validation_names_the_wrong_output(tiny_references):
    model = tiny_references["moai"]
    target = TARGETS["decode"]

    def wrong(feeds):
        out = torch_outputs(target, model, {k: torch.from_numpy(v) for k, v in feeds.items()})
        out["value.1"] = out["value.1"] + 1e-2
        return out

    with pytest.raises(ExportValidationError, match=r"'value.1' differs from PyTorch by max 0.01"):
        validate_graph(target, model, wrong)


def test_frozen_batch_axis_is_caught(tiny_references, tmp_path):
    import onnx

    model = tiny_references["moai"]
    target = TARGETS["vision"]
    path = tmp_path / "vision.onnx"
    export_graph(target, model, path)
    check_symbolic_axes(target, model, path)
    proto = onnx.load(str(path))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # as if traced without dynamic axes
    onnx.save(proto, str(path))
    with pytest.raises(ExportValidationError, match="'pixel_values' should be symbolic, found fixed size 2"):
        check_symbolic_axes(target, model, path)


def test_mixed_batch_rows_are_caught(tiny_references):
    model = tiny_references["collavo"]
    target = TARGETS["crayon"]

    def leaky(feeds):  # row results depend on the other rows
        out = torch_outputs(target, model, {k: torch.from_numpy(v) for k, v in feeds.items()})
        out["seg_features"] = (out["seg_features"]
                               + out["seg_features"].mean(axis=0, keepdims=True) * (len(out["seg_features"]) > 1))
        return out

    with pytest.raises(ExportValidationError, match="differs"):
        validate_graph(target, model, leaky)
    assert np.isfinite(validate_graph(target, model, lambda f: torch_outputs(
        target, model, {k: torch.from_numpy(v) for k, v in f.items()}))["seg_features"])
