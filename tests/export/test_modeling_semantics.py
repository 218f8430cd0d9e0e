"""Our export-friendly model computes what the reference code computes."""

import pytest
import torch

from moai_edge.export.config import preset_config
from moai_edge.export.modeling.vlm import VLM
from moai_edge.export.tiny import init_weights

from .literal_reference import literal_prefill


def tiny(family, seed=0):
    m = VLM(preset_config(family, "tiny", vocab_size=300)).eval()
    init_weights(m, torch.Generator().manual_seed(seed))
    return m


def prompt(m, seed=0, before=6, after=11):
    g = torch.Generator().manual_seed(seed)
    n = m.cfg.vision.num_patches
    text = m.embed(torch.randint(3, 300, (1, before + after), generator=g))
    img = m.encode_image(torch.randn(1, 3, m.cfg.vision.image_size, m.cfg.vision.image_size, generator=g))
    x = torch.cat([text[:, :before], img, text[:, before:]], dim=1)
    im = torch.zeros(1, x.shape[1], dtype=torch.bool)
    im[:, before:before + n] = True
    return x, im


@torch.no_grad()
@pytest.mark.parametrize("family", ["collavo", "moai"])
def test_prefill_equals_literal_reference(family):
    m = tiny(family)
    x, im = prompt(m)
    L, n = x.shape[1], m.cfg.vision.num_patches
    mask, pos = torch.ones(1, L, dtype=torch.long), torch.arange(L)[None]
    kwargs, literal = {}, {}
    if family == "collavo":
        seg = m.crayon_features(torch.randint(0, 134, (1, n)), torch.randint(0, 21, (1, n)))
        seq = torch.zeros_like(x)
        seq[im] = seg[0]
        kwargs["seg_features"], literal["seg"] = seq, seg
    else:
        aux = m.compress(torch.randn(1, n + 9, m.cfg.decoder.hidden_size))
        kwargs["aux_tokens"] = literal["aux"] = aux
    ours, _ = m.prefill(x, mask, pos, im, **kwargs)
    ref = literal_prefill(m, x, im, **literal)
    assert ours.std() > 1.0  # non-degenerate logits: this comparison can fail
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
    assert ours.argmax() == ref.argmax()


@torch.no_grad()
def test_branches_change_the_result():
    """PLoRA, seg branch and mixer each move the logits: a model that ignored one would fail parity."""
    m = tiny("collavo")
    x, im = prompt(m)
    L = x.shape[1]
    mask, pos = torch.ones(1, L, dtype=torch.long), torch.arange(L)[None]
    with_lora, _ = m.prefill(x, mask, pos, im)
    without, _ = m.prefill(x, mask, pos, torch.zeros_like(im))
    assert (with_lora - without).abs().max() > 0.1
    seq = torch.randn_like(x) * im[..., None]
    with_seg, _ = m.prefill(x, mask, pos, im, seg_features=seq)
    assert (with_seg - with_lora).abs().max() > 0.1


@torch.no_grad()
@pytest.mark.parametrize("family", ["collavo", "moai"])
def test_decode_step_continues_prefill(family):
    """Without the mixer (whose prefill is bidirectional), prefill(L-1) + one decode step == prefill(L)."""
    m = tiny(family)
    x, im = prompt(m)
    L = x.shape[1]
    mask, pos = torch.ones(1, L, dtype=torch.long), torch.arange(L)[None]
    full, _ = m.prefill(x, mask, pos, im)
    _, kv = m.prefill(x[:, :-1], mask[:, :-1], pos[:, :-1], im[:, :-1])
    step, _ = m.decode_step(x[:, -1:], mask, pos[:, -1:], kv)
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)
