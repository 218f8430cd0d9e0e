"""The decode graph on onnxruntime's fused ops (export.gqa_decode): its shape, its PyTorch twin, and what it refuses."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import onnx  # noqa: E402

from moai_edge.engines.errors import ExportValidationError  # noqa: E402
from moai_edge.engines.manifest import load_manifest  # noqa: E402
from moai_edge.export.gqa_decode import build_gqa_decode, check_decodable  # noqa: E402
from moai_edge.export.graphs import TARGETS, kv_names, to_seq_major  # noqa: E402
from moai_edge.export.merge_decoder import branch_of  # noqa: E402
from moai_edge.export.onnx_export import example_inputs, torch_outputs  # noqa: E402

from ..float32_noise import sum_noise  # noqa: E402


def test_one_fused_attention_per_layer_and_no_kv_reshuffling(tiny_packages):
    """The KV path has no transpose, concatenation or head expansion: one GroupQueryAttention per layer reads and
    writes the buffers; the branch is a few nodes per layer (the traced graph had ~180)."""
    m = load_manifest(tiny_packages["moai"])
    model = onnx.load(str(m.path(m.component("decode").file)), load_external_data=False)
    ops = Counter(n.op_type for n in branch_of(model, prefill=False).node)
    layers = m.model.num_layers
    assert ops["GroupQueryAttention"] == layers and ops["SkipSimplifiedLayerNormalization"] == 2 * layers
    assert not {"Transpose", "Concat", "Expand", "Softmax"} & set(ops)
    assert sum(ops.values()) <= 16 * layers + 9  # + the first RMSNorm's 6 standard ops, fused by onnxruntime


def assert_within_sum_noise(ours: np.ndarray, ref: np.ndarray, *, terms: int) -> None:
    """A batch against one row: other matmul kernels, other summation orders. Each value compared (a key, a value, a
    logit) is a projection of the normed hidden state: a sum over `terms` (hidden_size) terms of the outputs' size."""
    np.testing.assert_allclose(ours, ref, rtol=0, atol=sum_noise(terms, np.abs(ref).max()))


def test_the_twin_is_the_reference_decode_step_over_the_buffers(tiny_references):
    """DecodeGraph (what export validates the graph against) equals the model's own decode step run on each row's
    past alone, with the new key and value at the row's length and every other slot unchanged."""
    model = tiny_references["collavo"]
    target = TARGETS["decode"]
    feeds = example_inputs(target, model, 3)
    out = torch_outputs(target, model, feeds)
    names = kv_names(model)
    for row, length in enumerate(feeds["seqlens_k"].tolist()):
        past = [(feeds[f"past_key.{i}"][row:row + 1, :, :length], feeds[f"past_value.{i}"][row:row + 1, :, :length])
                for i in range(model.cfg.decoder.num_layers)]
        with torch.no_grad():
            logits, kv = model.decode_step(feeds["inputs_embeds"][row:row + 1],
                                           torch.ones(1, length + 1, dtype=torch.long), torch.tensor([[length]]), past)
        assert_within_sum_noise(out["logits"][row], logits[0].numpy(), terms=model.cfg.decoder.hidden_size)
        for name, new in zip(names, to_seq_major(kv)):  # (1, 1, kv, hd) each
            buffer = out[name][row]
            assert_within_sum_noise(buffer[:, length], new[0, 0].numpy(), terms=model.cfg.decoder.hidden_size)
            untouched = np.delete(buffer, length, axis=1)
            assert np.array_equal(untouched, np.delete(feeds[f"past_{name}"][row].numpy(), length, axis=1))


def test_a_head_size_gqa_cannot_take_is_refused():
    model = SimpleNamespace(cfg=SimpleNamespace(decoder=SimpleNamespace(head_dim=24)))
    with pytest.raises(ExportValidationError, match="multiple of 16, found 24"):
        check_decodable(model)
    with pytest.raises(ExportValidationError, match="found 24"):
        build_gqa_decode(model)


def test_the_decode_graph_passes_the_onnx_checker_and_its_first_norm_is_fused(tiny_packages, tmp_path):
    """Every op is a standard one or com.microsoft's (a bare SimplifiedLayerNormalization in the default domain failed
    the checker: "No Op registered ... domain_version of 17"), and onnxruntime fuses the first RMSNorm's standard ops
    into its SimplifiedLayerNormalization kernel, so the outputs are that kernel's, as before."""
    import onnxruntime as ort

    model = build_gqa_decode(load_checkpoint_model(tiny_packages))
    onnx.checker.check_model(model, full_check=True)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["SimplifiedLayerNormalization"] == 1 and not {"Pow", "ReduceMean", "Sqrt", "Div"} & set(ops)


def load_checkpoint_model(tiny_packages):
    from moai_edge.export.checkpoint import load_checkpoint

    return load_checkpoint(tiny_packages["moai"] / "checkpoint")[0]
