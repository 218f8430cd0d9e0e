"""`moai-edge bench --compare genai`: our checkpoint as a Llama is the same decoder, and the comparison's rows."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the Llama conversion needs moai-edge[export]")
og = pytest.importorskip("onnxruntime_genai", reason="needs moai-edge[compare]")

from moai_edge.bench.compare.genai import CompareConfig, GenaiDecode, build_genai, compare_genai, markdown, to_llama  # noqa: E402
from moai_edge.engines.manifest import load_manifest  # noqa: E402
from moai_edge.engines.options import RuntimeOptions  # noqa: E402


@pytest.fixture(scope="module")
def llama(tiny_packages, tmp_path_factory):
    checkpoint = load_manifest(tiny_packages["collavo"]).source["checkpoint"]
    return to_llama(checkpoint, tmp_path_factory.mktemp("llama") / "collavo")


def test_the_llama_is_our_decode_path(llama, tiny_references):
    """Text-only logits of the converted Llama equal our decoder's base path (no branch acts without image tokens)."""
    from transformers import LlamaForCausalLM

    ours = tiny_references["collavo"]
    ids = torch.tensor([[1, 17, 52, 9, 300, 41, 7]])
    with torch.no_grad():
        theirs = LlamaForCausalLM.from_pretrained(llama).eval()(ids).logits
        mask = torch.ones_like(ids)
        h, _ = ours.run_layers(ours.embed(ids), mask, torch.arange(ids.shape[1])[None], None)
        expected = ours.output(ours.model.norm(h))
    assert torch.allclose(theirs, expected, atol=1e-4, rtol=1e-4), float((theirs - expected).abs().max())


def test_genai_float32_decoder_gives_our_logits(llama, tiny_references, tmp_path):
    ours = tiny_references["collavo"]
    genai = GenaiDecode(build_genai(llama, tmp_path / "fp32", "fp32"))
    ids = np.array([[1, 17, 52, 9, 300, 41, 7]], np.int32)
    params = genai.og.GeneratorParams(genai.model)
    params.set_search_options(max_length=16, batch_size=1)
    generator = genai.og.Generator(genai.model, params)
    generator.append_tokens(ids)
    logits = np.asarray(generator.get_output("logits")).reshape(-1, ours.cfg.decoder.vocab_size)[-1]
    with torch.no_grad():
        t = torch.from_numpy(ids.astype(np.int64))
        h, _ = ours.run_layers(ours.embed(t), torch.ones_like(t), torch.arange(t.shape[1])[None], None)
        expected = ours.output(ours.model.norm(h))[0, -1].numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-3)


def test_comparison_rows(tiny_packages):
    cfg = CompareConfig(engine_dir=tiny_packages["collavo"], batch_sizes=(1, 2), past=24, steps=3, rounds=1,
                        options=RuntimeOptions(threads=1))
    rows = compare_genai(cfg)
    assert [(r["precision"], r["batch"]) for r in rows] == [("fp32", 1), ("fp32", 2), ("int4", 1), ("int4", 2)]
    for r in rows:
        assert r["ours_tokens_per_s"] > 0 and r["genai_tokens_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["genai_ms_per_step"] / r["ours_ms_per_step"])
        assert r["ours_tokens_per_s"] == pytest.approx(r["batch"] * 1e3 / r["ours_ms_per_step"])
    for one, two in (rows[:2], rows[2:]):
        assert "ours_gain" not in one and two["ours_gain"] == pytest.approx(
            two["ours_tokens_per_s"] / one["ours_tokens_per_s"])
        assert two["genai_gain"] == pytest.approx(two["genai_tokens_per_s"] / one["genai_tokens_per_s"])
        assert two["gain_ceiling"] > two["ours_gain"]  # a tiny decoder's step is far from reading memory at full speed
    assert "| ceiling |" in markdown(rows)
