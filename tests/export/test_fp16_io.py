"""A decode graph with float16 inputs and outputs (`export_tiny(..., decode_io_dtype="float16")`): its specs say
float16, export validated it, and its outputs are within two fp16 steps of their largest magnitude
(export.onnx_export.FP16_IO) of the float32 graph's, with the same greedy tokens."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from moai_edge.engines.errors import InputError  # noqa: E402
from moai_edge.engines.manifest import load_manifest  # noqa: E402
from moai_edge.engines.options import RuntimeOptions  # noqa: E402
from moai_edge.engines.registry import open_engine  # noqa: E402
from moai_edge.export.graphs import TARGETS, with_io_dtype  # noqa: E402
from moai_edge.export.onnx_export import FP16_IO, example_inputs  # noqa: E402
from moai_edge.export.package import in_place  # noqa: E402

INTEGER_INPUTS = {"seqlens_k", "total_sequence_length"}


def test_decode_specs_are_float16_and_the_rest_float32(tiny_fp16_io_package):
    m = load_manifest(tiny_fp16_io_package)
    decode = m.component("decode")
    assert {s.dtype for s in decode.inputs if s.name not in INTEGER_INPUTS} == {"float16"}
    assert {s.dtype for s in decode.inputs if s.name in INTEGER_INPUTS} == {"int32"}
    assert {s.dtype for s in decode.outputs} == {"float16"}
    prefill = m.component("prefill")
    integer = {"attention_mask", "position_ids", "im_mask"}
    assert {s.dtype for s in prefill.inputs + prefill.outputs if s.name not in integer} == {"float32"}
    assert decode.shared_weights == prefill.shared_weights == "decoder"  # the casts leave the weights shared
    assert m.source["validation_max_abs_diff"]["decode"] <= 2.0**-9 * 16  # two fp16 steps of outputs below 16


def test_outputs_within_two_fp16_steps_of_the_fp32_graph(tiny_packages, tiny_fp16_io_package, tiny_references):
    """Same weights, same (fp16-representable) inputs and KV buffers: the fp16-IO graph's outputs are the fp32 graph's
    within FP16_IO, with the same greedy tokens."""
    model = tiny_references["moai"]
    feeds16 = {k: v.numpy() for k, v in example_inputs(with_io_dtype(TARGETS["decode"], "float16"), model, 3).items()}
    feeds32 = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in feeds16.items()}
    options = RuntimeOptions(threads=1)
    with open_engine(load_manifest(tiny_fp16_io_package), "decode", options) as e16, \
            open_engine(load_manifest(tiny_packages["moai"]), "decode", options) as e32:
        out16, out32 = in_place(e16.run)(feeds16), in_place(e32.run)(feeds32)
    for name, ref in out32.items():
        assert out16[name].dtype == np.float16, name
        assert FP16_IO.ok(out16[name], ref), (name, float(np.max(np.abs(out16[name].astype(np.float64) - ref))))
    assert (out16["logits"].argmax(-1) == out32["logits"].argmax(-1)).all()  # greedy tokens agree


def test_unknown_io_dtype_is_refused():
    with pytest.raises(InputError, match="expected one of .*'float16'.*found 'bfloat16'"):
        with_io_dtype(TARGETS["decode"], "bfloat16")
