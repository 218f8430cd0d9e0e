"""Graph transforms to a lower precision, on in-memory ONNX graphs (their weights loaded), with onnxruntime's tools.

Each takes a ModelProto and returns a new one; `export.reduce_package` decides which applies to which graph.
"""

from __future__ import annotations

import logging
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .onnx_weights import subgraphs
from .precision import WeightOnly

# The decoder's base weights and output head, by node name: the prefill's as the exporter names them (module paths),
# the decode graph's as export.gqa_decode does; the PLoRA, seg and mixer branches are not matched and keep float32.
BASE_MATMUL = re.compile(r"/(Plora_main|output|base)/MatMul$")
HEAD_MATMUL = re.compile(r"(^|/)output(/base)?/MatMul$")


@contextmanager
def quiet():
    """onnxruntime's quantizers log every node at INFO, and advice on the root logger at WARNING."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def matmuls(model, keep) -> list[str]:
    """Names of the MatMuls, in the graph and its subgraphs (the merged decoder's If branches), that `keep(name)`."""
    return [n.name for g in subgraphs(model.graph) for n in g.node if n.op_type == "MatMul" and keep(n.name)]


def matmul_nbits(model, settings: WeightOnly, bits: int, *, exclude: list[str]):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=settings.block_size, is_symmetric=settings.symmetric,
                                     accuracy_level=settings.accuracy_level, nodes_to_exclude=exclude)
    with quiet():
        quantizer.process()
    return quantizer.model.model


def weight_only(model, settings: WeightOnly):
    """The decoder's base matmuls as MatMulNBits (blockwise, `settings.bits` per weight, a scale per block), and the
    output head at `settings.head_bits` (None: left float32). Branches and attention keep their MatMuls."""
    base = lambda name: BASE_MATMUL.search(name) and not HEAD_MATMUL.search(name)  # noqa: E731
    model = matmul_nbits(model, settings, settings.bits, exclude=matmuls(model, lambda name: not base(name)))
    if settings.head_bits:
        model = matmul_nbits(model, settings, settings.head_bits,
                             exclude=matmuls(model, lambda name: not HEAD_MATMUL.search(name)))
    return model


def dynamic_int8(model):
    """MatMuls with constant weights as int8 (per channel) with activations quantized per call; the rest unchanged."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet(), tempfile.TemporaryDirectory(prefix="moai-edge-int8-") as work:
        out = Path(work) / "int8.onnx"
        quantize_dynamic(model, out, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                         use_external_data_format=model.ByteSize() > 1_800_000_000)
        return onnx.load(str(out))


def float16(model):
    """Weights and computation in float16, inputs and outputs kept float32 (casts at the edges)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=model.ByteSize() > 1_800_000_000)


def static_int8_qdq(model, feeds: list[dict]):
    """Convolutions and matmuls as int8 in QDQ form (QuantizeLinear/DequantizeLinear pairs), the explicit
    quantization TensorRT builds int8 engines from: weights per channel, activations per tensor with ranges
    calibrated (min-max) on `feeds`, both symmetric (TensorRT takes zero points of 0 only)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.left = iter(feeds)

        def get_next(self):
            return next(self.left, None)

    with quiet(), tempfile.TemporaryDirectory(prefix="moai-edge-qdq-") as work:
        src, out = Path(work) / "float.onnx", Path(work) / "qdq.onnx"
        large = model.ByteSize() > 1_800_000_000
        onnx.save_model(model, str(src), save_as_external_data=large)
        quantize_static(str(src), str(out), Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"], calibrate_method=CalibrationMethod.MinMax,
                        use_external_data_format=large,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        return onnx.load(str(out))
