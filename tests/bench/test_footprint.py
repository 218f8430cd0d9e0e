"""The footprint table's parameter counts equal the PyTorch models' (ours at the tiny preset through the same formulas,
the experts' published configurations on the meta device), and its arithmetic follows the presets."""

from __future__ import annotations

import pytest

from moai_edge.bench.speed.footprint import (DEVICES, EXPERTS, GB, Part, compressor_part, crayon_part, decoder_parts,
                                       footprint, markdown, vision_part)
from moai_edge.export.config import DecoderConfig
from moai_edge.export.precision import PRECISION_PRESETS

torch = pytest.importorskip("torch", reason="counting the PyTorch models' parameters needs moai-edge[export]")
from torch import nn  # noqa: E402


def split(module: nn.Module, *, skip: tuple[str, ...] = ()) -> tuple[int, int]:
    """(nn.Linear weights, every other parameter)."""
    linear = other = 0
    for name, mod in module.named_modules():
        if any(name.startswith(s) for s in skip):
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if isinstance(mod, nn.Linear) and pname == "weight":
                linear += p.numel()
            else:
                other += p.numel()
    return linear, other


@pytest.mark.parametrize("family", ["moai", "collavo"])
def test_our_architecture_counts_match_the_model(family):
    from moai_edge.export.config import preset_config
    from moai_edge.export.modeling.vlm import VLM

    cfg = preset_config(family, "tiny", vocab_size=512)
    with torch.device("meta"):
        model = VLM(cfg)
    d = cfg.decoder
    base, head, branches, embedding = decoder_parts(d)
    params = dict(model.named_parameters())

    def total(keep) -> int:
        return sum(p.numel() for n, p in params.items() if keep(n))

    assert (base.matmul, head.matmul) == (total(lambda n: "Plora_main" in n), total(lambda n: n == "output.weight"))
    assert base.other == total(lambda n: n.startswith("model.") and "norm" in n and "moai_" not in n)
    is_branch = lambda n: "Plora_A" in n or "Plora_B" in n or "Plora_seg" in n or ".moai_" in n  # noqa: E731
    assert (branches.matmul, branches.other) == (total(lambda n: is_branch(n) and n.endswith("weight")),
                                                 total(lambda n: is_branch(n) and n.endswith("bias")))
    assert embedding.other == total(lambda n: n == "model.tok_embeddings.weight")
    tower = vision_part(cfg.vision, d.hidden_size)
    assert (tower.matmul, tower.other) == split(nn.ModuleDict({"vit": model.vit, "proj": model.vision_proj}))
    small = (compressor_part(cfg.compressor, d.hidden_size) if family == "moai"
             else crayon_part(cfg.crayon, cfg.vision, d.hidden_size))
    parts = ([model.moai_compressor] if family == "moai"
             else [model.vision_proj_for_seg, model.seg_prompt_embed, model.seg_num_embed])
    assert (small.matmul, small.other) == split(nn.ModuleList(parts))
    accounted = (base.matmul + base.other + head.matmul + branches.matmul + branches.other + embedding.other
                 + tower.matmul + tower.other + small.matmul + small.other)
    assert accounted == sum(p.numel() for p in params.values())  # nothing left out


def test_expert_counts_are_the_published_configurations():
    from transformers import Mask2FormerForUniversalSegmentation, Owlv2ForObjectDetection

    from moai_edge.export.experts.detector import detector_config
    from moai_edge.export.experts.labels import COCO_PANOPTIC_CLASSES
    from moai_edge.export.experts.panoptic import panoptic_config
    from moai_edge.export.experts.scene_graph import Psgtr, PsgtrConfig

    with torch.device("meta"):
        built = {
            "mask2former-swin-base": Mask2FormerForUniversalSegmentation(
                panoptic_config("small", "moai", list(COCO_PANOPTIC_CLASSES))),
            "mask2former-swin-large": Mask2FormerForUniversalSegmentation(
                panoptic_config("small", "collavo", list(COCO_PANOPTIC_CLASSES))),
            "psgtr-r50": Psgtr(PsgtrConfig()),
        }
        owl = Owlv2ForObjectDetection(detector_config("small"))
    for key, model in built.items():
        assert split(model) == (EXPERTS[key].matmul, EXPERTS[key].other), key
    # the image side only: the query embeddings are computed once at export
    assert split(owl, skip=("owlv2.text_model", "owlv2.text_projection")) == (EXPERTS["owlv2-base-960"].matmul,
                                                                              EXPERTS["owlv2-base-960"].other)


def test_pp_ocr_count_is_the_shipped_graphs():
    import os

    import numpy as np
    import onnx
    import rapidocr_onnxruntime

    from moai_edge.export.experts.ocr_models import MODELS

    folder = os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models")
    count = 0
    for name in MODELS.values():
        graph = onnx.load(os.path.join(folder, name)).graph
        count += sum(int(np.prod(i.dims)) for i in graph.initializer)
        count += sum(int(np.prod(a.t.dims)) for n in graph.node if n.op_type == "Constant"
                     for a in n.attribute if a.name == "value")
    assert count == EXPERTS["pp-ocr"].other


def test_presets_store_fewer_bytes_in_order_and_int4_moai_fits_an_orin_nx_with_4_gb_free():
    fp = footprint("moai")
    totals = [fp["presets"][p]["weights_total"] for p in ("fp32", "fp16", "int8", "int4")]
    assert totals == sorted(totals, reverse=True)
    assert fp["presets"]["fp32"]["weights_total"] / GB > 28  # a 7B decoder alone is 28 GB in float32
    assert fp["presets"]["int4"]["free_gb"]["Jetson Orin NX 16 GB"] >= 4
    int4 = fp["presets"]["int4"]
    assert int4["total"] == pytest.approx(int4["weights_total"] + int4["kv_cache"] + int4["largest_stage_activations"])
    table = markdown(fp)
    assert all(f"free on {d}" in table for d in DEVICES) and all(f"| {p} |" in table for p in PRECISION_PRESETS)


def test_batch_8_decode_gains_less_where_the_weights_read_less():
    """The bound on batch 8 over batch 1: 8 x (W + KV) / (W + 8 KV). Smaller weights (int4) leave the KV cache a
    larger share of each step, so batching gains less; the real 7B's int4 still allows more than 4.5x."""
    fp = footprint("moai")
    gains = [fp["presets"][p]["decode_batch_gain_ceiling"]["8"] for p in ("fp32", "fp16", "int8", "int4")]
    assert gains == sorted(gains, reverse=True) and all(1 < g < 8 for g in gains)
    d = DecoderConfig()
    w = fp["presets"]["int4"]["weights"]["decoder base weights"] + fp["presets"]["int4"]["weights"]["output head"]
    kv = 2 * d.num_layers * d.num_kv_heads * d.head_dim * 4 * (1316 + 64)
    assert gains[-1] == pytest.approx(8 * (w + kv) / (w + 8 * kv)) and gains[-1] > 4.5


def test_part_bytes_follow_the_precision():
    part = Part("x", "decoder", matmul=3200, other=10)
    assert part.nbytes("fp32") == 3210 * 4
    assert part.nbytes("int4") == 3200 * (0.5 + 4 / 32) + 40
    tower = Part("t", "tower", matmul=100, other=10)
    assert tower.nbytes("int8") == 100 + 40  # dynamic int8: the matmul weights, the rest float32
