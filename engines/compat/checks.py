"""Static checks of a graph against the published support tables, on the CPU: onnx.checker, TensorRT's operator
matrix (per TensorRT version), onnxruntime's CUDA kernels. Each returns the problems as sentences naming the node.

A node's input types come from engines.compat.graph_ops. What is checked of TensorRT's restrictions: the op is a
standard ONNX op in the table, its data input's type is one the table lists, `axes` inputs that must be initializers
are, and Resize's modes and antialiasing; restrictions on values and shapes are listed, not checked.
"""

from __future__ import annotations

from .graph_ops import NodeInfo
from .tables import cuda_table, tensorrt_table

AXES_INPUT = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "Pad": 3, "ReduceMean": 1, "ReduceSum": 1, "ReduceMax": 1,
              "ReduceL2": 1, "CumSum": 1}
RESIZE_MODES = {"mode": ("nearest", "linear"),
                "coordinate_transformation_mode": ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                                                   "asymmetric", "align_corners")}


def data_type(node: NodeInfo) -> str | None:
    """The type of the input an op's types are about: the first (Where's second, after its boolean condition)."""
    index = 1 if node.op == "Where" else 0
    return node.input_types[index] if len(node.input_types) > index else None


def where(node: NodeInfo) -> str:
    return f"{node.qualified} '{node.name or '(unnamed)'}'"


def tensorrt_node_problem(node: NodeInfo, version: str) -> str | None:
    ops = tensorrt_table()["versions"][version]["ops"]
    if node.domain not in ("", "ai.onnx"):
        return f"{where(node)}: not an ONNX op; onnx-tensorrt {version} imports the standard ops only"
    row = ops.get(node.op)
    if row is None:
        return f"{where(node)}: not in onnx-tensorrt {version}'s operator matrix"
    if not row["supported"]:
        return f"{where(node)}: marked unsupported in onnx-tensorrt {version}'s matrix"
    t = data_type(node)
    if node.op != "Constant" and t and row["types"] and t not in row["types"]:
        return f"{where(node)}: input type {t}, TensorRT {version} takes {', '.join(row['types'])}"
    axes = AXES_INPUT.get(node.op)
    if (axes is not None and "must be an initializer" in row.get("restrictions", "") and len(node.inputs) > axes
            and node.inputs[axes] and node.inputs[axes] not in node.constant_inputs):
        return f"{where(node)}: `axes` is computed in the graph; TensorRT {version} needs an initializer"
    if node.op == "Resize":
        for attr, allowed in RESIZE_MODES.items():
            value = node.attributes.get(attr)
            if value is not None and value not in allowed:
                return f"{where(node)}: {attr} '{value}', TensorRT {version} takes {', '.join(allowed)}"
        if node.attributes.get("antialias"):
            return f"{where(node)}: antialiasing, which TensorRT {version} does not support"
    return None


def tensorrt_problems(nodes: list[NodeInfo], opsets: dict[str, int], version: str) -> list[str]:
    """Why TensorRT `version` would not take the graph (empty: it takes every node)."""
    low, high = tensorrt_table()["versions"][version]["opsets"]
    problems = []
    if not low <= opsets.get("", 0) <= high:
        problems.append(f"opset {opsets.get('')}: TensorRT {version} takes opsets {low} to {high}")
    return problems + [p for p in (tensorrt_node_problem(n, version) for n in nodes) if p]


def cuda_kernel_rows(node: NodeInfo) -> list | None:
    return cuda_table()["kernels"].get(node.qualified)


def cuda_node_problem(node: NodeInfo, opset: int) -> str | None:
    if node.op == "Constant" and node.domain in ("", "ai.onnx"):
        return None  # folded into an initializer when the session loads
    rows = cuda_kernel_rows(node)
    if rows is None:
        return f"{where(node)}: no CUDA kernel in onnxruntime's table; it runs on the CPU"
    version = 1 if node.domain not in ("", "ai.onnx") else opset
    row = next((r for r in rows if r[0] <= version and (r[1] is None or version <= r[1])), None)
    if row is None:
        return f"{where(node)}: no CUDA kernel for opset {version}; it runs on the CPU"
    t = data_type(node)
    if t and t not in row[2]:
        return f"{where(node)}: CUDA kernel for {', '.join(row[2])}, not the graph's {t}; it runs on the CPU"
    return None


def cuda_problems(nodes: list[NodeInfo], opsets: dict[str, int]) -> list[str]:
    """The nodes onnxruntime's CUDA provider has no kernel for (they fall back to the CPU)."""
    opset = opsets.get("", 0)
    return [p for p in (cuda_node_problem(n, opset) for n in nodes) if p]
