"""What each graph can run on, checked statically on the CPU against published support tables: onnx.checker,
onnx-tensorrt's operator matrix (TensorRT 10.3 and a current 10.x), onnxruntime's CUDA kernel table.

    graph_ops   an ONNX graph's nodes with their input types (needs the onnx package: extra `gpu`)
    tables      the tables, kept as data beside this file with their sources
    checks      a graph's problems against each table
    report      per package: each graph's checks, and where its nodes would be placed for a device
"""

from .checks import cuda_problems, tensorrt_problems
from .graph_ops import NodeInfo, checker_problem, read_nodes
from .report import GraphReport, check_graph, check_package, placement
from .tables import TENSORRT_MINIMUM, tensorrt_versions

__all__ = ["GraphReport", "NodeInfo", "TENSORRT_MINIMUM", "check_graph", "check_package", "checker_problem",
           "cuda_problems", "placement", "read_nodes", "tensorrt_problems", "tensorrt_versions"]
