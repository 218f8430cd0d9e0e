"""Graph transforms to a lower precision, on in-memory ONNX graphs (their weights loaded), with onnxruntime's tools.

Each takes a ModelProto and returns a new one; `export.reduce_package` decides which applies to which graph.
"""

from __future__ import annotations

import logging
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from moai_edge.engines.errors import ExportValidationError

from .onnx_weights import subgraphs
from .precision import Rule, WeightOnly

# The decoder's base weights, by node name: the prefill's as the exporter names them (module paths), the decode
# graph's as export.gqa_decode does; the PLoRA, seg and mixer branches are not matched and keep float32. The output
# head is found from the graph instead (output_head).
BASE_MATMUL = re.compile(r"/(Plora_main|output|base)/MatMul$")
LOGITS = "logits"  # the decoder graphs' output that the head computes
BETWEEN_HEAD_AND_LOGITS = ("Squeeze", "Unsqueeze", "Reshape", "Flatten", "Cast", "Identity")  # walked back through
HEAD_OPS = ("MatMul", "MatMulNBits")  # the head, before and after weight-only quantization


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


def output_head(model) -> list[str]:
    """The names of the nodes computing the decoder's `logits`: its output head, in each branch of a merged decoder."""
    return head_of(model.graph, LOGITS)


def head_of(graph, output: str) -> list[str]:
    """The MatMul computing `output` of `graph`, walking back through shape ops and casts, and into If branches."""
    producer = {name: node for node in graph.node for name in node.output}
    name, node = output, producer.get(output)
    while node is not None and node.op_type in BETWEEN_HEAD_AND_LOGITS:
        name, node = node.input[0], producer.get(node.input[0])
    if node is not None and node.op_type == "If":
        k = list(node.output).index(name)
        branches = [a.g for a in node.attribute if a.name in ("then_branch", "else_branch")]
        return [head for branch in branches for head in head_of(branch, branch.output[k].name)]
    if node is None or node.op_type not in HEAD_OPS:
        found = f"{node.op_type} node {node.name!r}" if node is not None else f"no node computing {name!r}"
        raise ExportValidationError(f"the decoder's output head: expected a MatMul computing {output!r} in graph "
                                    f"{graph.name!r} (through {', '.join(BETWEEN_HEAD_AND_LOGITS)} at most), "
                                    f"found {found}")
    return [node.name]


def matmul_nbits(model, settings: WeightOnly, *, exclude: list[str]):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, bits=settings.bits, block_size=settings.block_size,
                                     is_symmetric=settings.symmetric, accuracy_level=settings.accuracy_level,
                                     nodes_to_exclude=exclude)
    with quiet():
        quantizer.process()
    return quantizer.model.model


def weight_only(model, base: WeightOnly, head: Rule):
    """The decoder's base matmuls as MatMulNBits (blockwise, `base.bits` per weight, a scale per block), and its output
    head (output_head) the same way at `head`'s bits when `head` is weight-only too (else left float32). Branches
    and attention keep their MatMuls."""
    heads = set(output_head(model))
    is_base = lambda name: bool(BASE_MATMUL.search(name)) and name not in heads  # noqa: E731
    model = matmul_nbits(model, base, exclude=matmuls(model, lambda name: not is_base(name)))
    if isinstance(head, WeightOnly):
        model = matmul_nbits(model, head, exclude=matmuls(model, lambda name: name not in heads))
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


KEEP_FLOAT32 = ("GridSample",)  # onnxruntime's CUDA GridSample has a float32 kernel only (engines/compat)


def float16(model):
    """Weights and computation in float16, inputs and outputs kept as they are (float32 ones behind casts), the ops
    of KEEP_FLOAT32 in float32; the nodes sorted again, as onnx.checker wants them (the converter appends casts)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=model.ByteSize() > 1_800_000_000,
                                    op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(KEEP_FLOAT32))
    for graph in subgraphs(half.graph):
        topological_sort(graph)
    return half


def topological_sort(graph) -> None:
    """`graph`'s nodes in an order where each comes after the producers of its inputs (stable otherwise)."""
    produced = {o for n in graph.node for o in n.output if o}
    done, ordered, left = set(), [], list(graph.node)
    while left:
        ready = [n for n in left if all(i in done or i not in produced for i in n.input)]
        if not ready:
            raise ExportValidationError(f"graph {graph.name!r}: expected an acyclic graph, found a cycle among "
                                        f"{[n.name for n in left][:5]}")
        ready_ids = {id(n) for n in ready}
        ordered += ready
        done.update(o for n in ready for o in n.output)
        left = [n for n in left if id(n) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)


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
                        # biases kept float: TensorRT and onnxruntime's CUDA DequantizeLinear take no int32 input
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
        return onnx.load(str(out))
