"""Per package: each graph's static checks, and where its nodes would run for a device (doctor, export)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..manifest import Manifest
from .checks import cuda_problems, tensorrt_problems
from .graph_ops import checker_problem, read_nodes
from .tables import TENSORRT_MINIMUM, tensorrt_versions


@dataclass
class GraphReport:
    file: str
    nodes: int
    checker: str | None  # onnx.checker's complaint, or None
    tensorrt: dict[str, list[str]] = field(default_factory=dict)  # TensorRT version -> problems
    cuda: list[str] = field(default_factory=list)  # nodes without a CUDA kernel

    @property
    def tensorrt_ok(self) -> bool:
        """Whether the minimum supported TensorRT (TENSORRT_MINIMUM) takes the whole graph."""
        return not self.tensorrt.get(TENSORRT_MINIMUM)


def check_graph(path: str | Path, *, with_checker: bool = True) -> GraphReport:
    nodes, opsets = read_nodes(path)
    return GraphReport(file=Path(path).name, nodes=len(nodes),
                       checker=checker_problem(path) if with_checker else None,
                       tensorrt={v: tensorrt_problems(nodes, opsets, v) for v in tensorrt_versions()},
                       cuda=cuda_problems(nodes, opsets))


def check_package(manifest: Manifest, *, with_checker: bool = True) -> dict[str, GraphReport]:
    """Each graph component's report; a file several components share (the merged decoder) is read once."""
    by_file: dict[str, GraphReport] = {}
    out = {}
    for name, c in manifest.components.items():
        if c.kind != "onnx":
            continue
        if c.file not in by_file:
            by_file[c.file] = check_graph(manifest.path(c.file), with_checker=with_checker)
        out[name] = by_file[c.file]
    return out


def placement(report: GraphReport, device: str) -> tuple[str, list[str]]:
    """(where the graph runs for `device`: 'cpu', 'cuda' or 'tensorrt', the nodes that fall back and why)."""
    if device == "cpu":
        return "cpu", []
    if device == "tensorrt" and report.tensorrt_ok:
        return "tensorrt", []
    reasons = ([f"not TensorRT {TENSORRT_MINIMUM}: {report.tensorrt[TENSORRT_MINIMUM][0]}"]
               if device == "tensorrt" else [])
    return "cuda", reasons + [f"to the CPU: {p}" for p in report.cuda]
