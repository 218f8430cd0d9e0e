"""MoAI's gating softmax is float16 in the reference (`dtype=torch.float16`): ours rounds the same way,
in PyTorch and in the exported prefill graph as onnxruntime loads it."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from moai_edge.export.modeling import mixer

from . import literal_reference as literal
from .test_modeling_semantics import prompt, tiny


def first_mixer_inputs(seed=0):
    m = tiny("moai", seed)
    x, im = prompt(m, seed)
    aux = m.compress(torch.randn(1, m.cfg.vision.num_patches + 9, m.cfg.decoder.hidden_size,
                                 generator=torch.Generator().manual_seed(seed)))
    layer = m.model.layers[m.cfg.decoder.mixer_layers[0]]
    return layer.attention, layer.attention_norm(x), aux, im


@torch.no_grad()
@pytest.mark.parametrize("seed", [0, 1])
def test_gate_equals_the_reference_float16_softmax(seed):
    att, h, _, im = first_mixer_inputs(seed)
    for gate, rows in ((att.moai_GA_img, im[0]), (att.moai_GA_lang, ~im[0])):
        ref = literal.gate(gate, h[0][rows]).float()
        ours = mixer.gate_weights(gate, h)[0][rows]
        assert (ours - ref).abs().max() <= 1e-6
        fp32 = F.softmax(gate(h), dim=-1)[0][rows]  # the old gate: this test can fail
        assert (fp32 - ref).abs().max() > 1e-5


@torch.no_grad()
def test_mixer_equals_the_literal_mixer():
    att, h, aux, im = first_mixer_inputs()
    ours = mixer.mix(att, h, aux=aux, im_mask=im, lang_mask=~im)
    ref = literal.mixer(att, h.clone(), aux, im, ~im)
    assert (ours - ref).abs().max() <= 1e-6


def test_exported_prefill_rounds_the_gate(tiny_packages, tiny_references):
    """onnxruntime at optimization level 'all' keeps the fp16 Cast pairs: the keys after the first mixer follow
    the rounding PyTorch port far more closely than the gap between the fp32 and fp16 gates. (Means, not maxima:
    a position whose gate logit the two sides' fp32 noise puts across an fp16 rounding boundary differs by one
    fp16 step, as any two implementations of the reference's rounding may.)"""
    from moai_edge.engines.manifest import load_manifest
    from moai_edge.engines.options import RuntimeOptions
    from moai_edge.engines.registry import open_engine
    from moai_edge.export.graphs import TARGETS
    from moai_edge.export.onnx_export import example_inputs, torch_outputs

    model, manifest = tiny_references["moai"], load_manifest(tiny_packages["moai"])
    target = TARGETS["prefill"]
    feeds = example_inputs(target, model, 1)
    with open_engine(manifest, "prefill", RuntimeOptions()) as engine:  # onnxruntime optimizes at level 'all'
        graph = engine.run({k: v.numpy() for k, v in feeds.items()})
    port = torch_outputs(target, model, feeds)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mixer, "round_through_fp16", lambda x: x)
        unrounded = torch_outputs(target, model, feeds)
    first = f"key.{model.cfg.decoder.mixer_layers[0]}"
    gap = float(np.mean(np.abs(port[first] - unrounded[first])))
    assert gap > 1e-6
    assert float(np.mean(np.abs(graph[first] - port[first]))) < gap / 20
    assert np.argmax(graph["logits"], -1).tolist() == np.argmax(port["logits"], -1).tolist()
