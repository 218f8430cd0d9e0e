"""The nodes of an ONNX graph with the element type of each input: what the static support checks read.

Types are propagated here, node by node in the graph's (topological) order, from the graph's inputs, initializers
and constants: an op's outputs take the type of its first typed input unless `OUTPUT_TYPES` says otherwise. This
covers onnxruntime's contrib ops too, which onnx's shape inference does not know. Reading a graph needs the `onnx`
package (extra `gpu`); its external weights are never loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EngineError, require

# ONNX TensorProto element types by number -> numpy-style names
ELEMENT_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
                 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16",
                 17: "float8e4m3fn", 19: "float8e5m2", 21: "uint4", 22: "int4"}
INT64_OUT = ("Shape", "Size", "NonZero", "ArgMax", "ArgMin", "NonMaxSuppression")
BOOL_OUT = ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf")


@dataclass(frozen=True)
class NodeInfo:
    """One node: where it is, what it is, the element type of each input ("" for an absent optional one, None where
    unknown) and the attributes the checks read (ints, floats, strings and lists of them)."""

    graph: str
    name: str
    domain: str  # "" for the default ONNX domain
    op: str
    input_types: tuple[str | None, ...]
    inputs: tuple[str, ...]
    attributes: dict = field(default_factory=dict)
    constant_inputs: frozenset[str] = frozenset()  # inputs that are initializers or Constant outputs

    @property
    def qualified(self) -> str:
        return f"{self.domain}:{self.op}" if self.domain not in ("", "ai.onnx") else self.op


def attribute_value(a):
    value = require("onnx.helper", "gpu").get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return value if isinstance(value, (int, float, str)) else None  # tensors and graphs: not read by the checks


def output_types(node, types: list[str | None], attrs: dict) -> list[str | None]:
    """The element types of `node`'s outputs from its inputs' `types`."""
    first = next((t for t in types if t), None)
    n, op = len(node.output), node.op_type
    if op in ("Cast", "RandomNormal", "RandomUniform", "EyeLike") and ("to" in attrs or "dtype" in attrs):
        return [ELEMENT_TYPES.get(attrs.get("to", attrs.get("dtype")))] * n
    if op in INT64_OUT:
        return ["int64"] * n
    if op in BOOL_OUT:
        return ["bool"] * n
    if op == "TopK":
        return [first, "int64"]
    if op in ("Where", "CastLike"):
        return [types[1] if op == "CastLike" else (types[1] or types[2])] * n
    if op == "QuantizeLinear":
        return [types[2] if len(types) > 2 and types[2] else "uint8"]
    if op == "DequantizeLinear":
        return [types[1]]
    if op == "DynamicQuantizeLinear":
        return ["uint8", "float32", "uint8"]
    if op in ("MatMulInteger", "ConvInteger"):
        return ["int32"] * n
    if op in ("Constant", "ConstantOfShape"):
        return [attrs.get("__value_type", "float32")]
    if op == "SkipSimplifiedLayerNormalization" or op == "SkipLayerNormalization":
        return [first, "float32", "float32", first][:n]
    return [first] * n


def nodes_of(graph, known: dict[str, str | None], constants: set[str], where: str) -> list[NodeInfo]:
    """Every node of `graph` and of its subgraphs, with input types; `known` maps value names to types (outer
    scopes' included) and is extended in place."""
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            known.setdefault(v.name, ELEMENT_TYPES.get(v.type.tensor_type.elem_type))
    for init in graph.initializer:
        known[init.name] = ELEMENT_TYPES.get(init.data_type)
        constants.add(init.name)
    out = []
    for node in graph.node:
        attrs = {a.name: attribute_value(a) for a in node.attribute}
        if node.op_type in ("Constant", "ConstantOfShape"):
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                attrs["__value_type"] = ELEMENT_TYPES.get(value.data_type)
        types = tuple((known.get(i) if i else "") for i in node.input)
        out.append(NodeInfo(where, node.name, node.domain, node.op_type, types, tuple(node.input),
                            {k: v for k, v in attrs.items() if v is not None},
                            frozenset(i for i in node.input if i in constants)))
        for a in node.attribute:
            if a.g.node:
                out += nodes_of(a.g, known, constants, f"{where}/{node.name}.{a.name}")
        results = output_types(node, list(types), attrs)
        if node.op_type == "If":
            branch = next(a.g for a in node.attribute if a.name == "then_branch")
            results = [known.get(o.name) for o in branch.output]
        for name, t in zip(node.output, results):
            if name:
                known.setdefault(name, t)
        if node.op_type == "Constant":
            constants.update(node.output)
    return out


def read_nodes(path: str | Path) -> tuple[list[NodeInfo], dict[str, int]]:
    """The nodes of the graph in `path` with their input types, and its opsets (domain -> version)."""
    onnx = require("onnx", "gpu")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not a graph
        raise EngineError(f"'{path}': expected an ONNX graph, could not read it ({exc})") from exc
    opsets = {o.domain or "": o.version for o in model.opset_import}
    return nodes_of(model.graph, {}, set(), model.graph.name or Path(path).stem), opsets


def checker_problem(path: str | Path) -> str | None:
    """What onnx.checker says of the graph in `path` (with its external data, full check), or None when it passes."""
    onnx = require("onnx", "gpu")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        return str(exc).strip().splitlines()[0]
    return None
