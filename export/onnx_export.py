"""Export one graph target to ONNX and validate it against PyTorch inside export itself."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moai_edge.engines.errors import ExportValidationError

from .graphs import GraphTarget
from .modeling.vlm import VLM

OPSET = 17
TRACE_BATCH = 2  # trace with batch >= 2 so no batch axis is specialised to 1


@dataclass(frozen=True)
class Tolerance:
    """|ours - torch| <= atol + rtol * |torch| per element, or rtol * max|torch| when `of_max` (for deep
    stacks whose small outputs carry the absolute noise of the large ones)."""

    atol: float = 1e-4
    rtol: float = 1e-3
    of_max: bool = False
    index_agreement: float = 1.0  # integer outputs (argmax indices): the fraction that must be equal
    argmax_of: tuple[str, ...] = ()  # outputs whose argmax over the last axis (greedy tokens) must equal PyTorch's
    row_rtol: float = 1e-5  # a row of a batch against the same row alone, relative to the output's max
    # outputs shaped (batch, queries, ...): the fraction of (image, query) rows that must be within tolerance; the
    # others may differ by any amount (a query whose thresholded mask flipped)
    query_agreement: float = 1.0

    def agreement(self, ours: np.ndarray, ref: np.ndarray) -> float:
        """The fraction of elements (with `query_agreement` < 1: of (image, query) rows) within tolerance."""
        ours, ref = ours.astype(np.float64), ref.astype(np.float64)
        scale = float(np.max(np.abs(ref), initial=0.0)) if self.of_max else np.abs(ref)
        inside = np.abs(ours - ref) <= self.atol + self.rtol * scale
        if self.query_agreement < 1 and inside.ndim >= 2:
            inside = inside.reshape(*inside.shape[:2], -1).all(-1)
        return float(inside.mean()) if inside.size else 1.0

    def ok(self, ours: np.ndarray, ref: np.ndarray) -> bool:
        return self.agreement(ours, ref) >= self.query_agreement


# The decode graph with float16 IO keeps a float16 KV cache, and onnxruntime's GroupQueryAttention computes in its
# cache's type: the new key is rounded to float16 before its rotary, and the attention rounds at float16. Measured on
# the tiny models: within 2^-11 of each output's largest magnitude; the bound is two float16 steps at that magnitude
# (2^-9 of it). Greedy tokens must agree.
FP16_IO = Tolerance(atol=1e-4, rtol=2.0**-9, of_max=True, argmax_of=("logits",), row_rtol=2.0**-10)


def example_inputs(target: GraphTarget, model: VLM, batch: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1234 + batch)
    return target.inputs(model, batch)


def export_graph(target: GraphTarget, model: VLM, path: Path) -> None:
    """torch -> ONNX with the target's named I/O and symbolic axes (TorchScript exporter, opset 17), then the
    structural checks every graph must pass: symbolic axes and TensorRT-safe GridSample modes. A target written
    directly in ONNX (`target.onnx_graph`) is saved as written."""
    if target.onnx_graph is not None:
        import onnx

        onnx.save_model(target.onnx_graph(model, target.io_dtype), str(path))
        check_symbolic_axes(target, model, path)
        return
    module = target.build(model).eval()
    feeds = example_inputs(target, model, TRACE_BATCH)
    names = list(feeds)
    axes = {k: v for k, v in target.dynamic_axes(model).items() if k in names or k in target.output_names(model)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, tuple(feeds.values()), str(path), input_names=names, output_names=target.output_names(model),
            dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    check_symbolic_axes(target, model, path)
    check_grid_sample_modes(path)


GRID_SAMPLE_MODES = {"bilinear", "nearest", "bicubic"}


def check_grid_sample_modes(onnx_path: Path) -> None:
    """TensorRT's ONNX parser reads opset-20 GridSample modes `linear`/`cubic` as nearest, silently
    (NVIDIA/TensorRT#4646): refuse any mode but the opset-16 names."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    for node in graph.node:
        if node.op_type == "GridSample":
            mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "bilinear")
            if mode not in GRID_SAMPLE_MODES:
                raise ExportValidationError(
                    f"{onnx_path.name}: GridSample node '{node.name}' has mode '{mode}', "
                    f"expected one of {sorted(GRID_SAMPLE_MODES)}"
                )


def torch_outputs(target: GraphTarget, model: VLM, feeds: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    module = target.build(model).eval()
    with torch.no_grad():
        outs = module(*feeds.values())
    outs = outs if isinstance(outs, tuple) else (outs,)
    return {n: o.numpy() for n, o in zip(target.output_names(model), outs)}


def compare(name: str, ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], tol: Tolerance) -> dict[str, float]:
    """Max abs diff per output; raises ExportValidationError naming the first output beyond tolerance."""
    diffs = {}
    for out, r in ref.items():
        o = ours[out]
        if o.shape != r.shape:
            raise ExportValidationError(f"{name}: output '{out}' has shape {o.shape}, PyTorch gives {r.shape}")
        if np.issubdtype(r.dtype, np.integer):
            agree = float(np.mean(o == r)) if r.size else 1.0
            diffs[f"{out}_disagreement"] = 1.0 - agree
            if agree < tol.index_agreement:
                raise ExportValidationError(f"{name}: output '{out}' equals PyTorch's at {agree:.2%} of positions, "
                                            f"expected at least {tol.index_agreement:.2%}")
            continue
        diff = float(np.max(np.abs(o.astype(np.float64) - r.astype(np.float64)))) if r.size else 0.0
        diffs[out] = diff
        if out in tol.argmax_of:
            check_greedy_tokens(name, out, o, r)
        if not tol.ok(o, r):
            queries = f"; {tol.agreement(o, r):.2%} of its queries within, {tol.query_agreement:.0%} needed" \
                if tol.query_agreement < 1 else ""
            raise ExportValidationError(
                f"{name}: output '{out}' differs from PyTorch by max {diff:.3g} "
                f"(max |PyTorch| {np.max(np.abs(r)):.3g}; atol {tol.atol}, rtol {tol.rtol}"
                f"{' of the max' if tol.of_max else ''}{queries})"
            )
    return diffs


def check_symbolic_axes(target: GraphTarget, model: VLM, onnx_path: Path) -> None:
    """Every axis declared dynamic must be symbolic in the exported graph (not frozen to the trace size)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    axes = target.dynamic_axes(model)
    for value in list(graph.input) + list(graph.output):
        for axis, label in axes.get(value.name, {}).items():
            dim = value.type.tensor_type.shape.dim[axis]
            if not dim.dim_param:
                raise ExportValidationError(
                    f"{target.name}: axis {axis} ('{label}') of '{value.name}' should be symbolic, "
                    f"found fixed size {dim.dim_value}"
                )


def validate_graph(target: GraphTarget, model: VLM, run, *, tol: Tolerance = Tolerance(),
                   batches=(1, 3)) -> dict[str, float]:
    """Run the exported graph through `run(feeds)->outputs` (an engine) at several batch sizes against PyTorch,
    and check that row 0 of a batch equals the batch-1 result. Returns the max diffs per output."""
    worst: dict[str, float] = {}
    for b in batches:
        feeds = example_inputs(target, model, b)
        ref = torch_outputs(target, model, feeds)
        ours = run({k: v.numpy() for k, v in feeds.items()})
        for k, d in compare(f"{target.name} (batch {b})", ours, ref, tol).items():
            worst[k] = max(worst.get(k, 0.0), d)
    worst["batch_rows"] = check_batch_rows(target, model, run, rtol=tol.row_rtol)
    return worst


def check_greedy_tokens(name: str, out: str, ours: np.ndarray, ref: np.ndarray) -> None:
    """The argmax over the last axis (the greedy token of each row) equals PyTorch's."""
    mine, theirs = ours.argmax(-1), ref.argmax(-1)
    if not np.array_equal(mine, theirs):
        raise ExportValidationError(f"{name}: greedy tokens from '{out}' are {mine.ravel().tolist()}, "
                                    f"PyTorch's are {theirs.ravel().tolist()}")


def batch_axis(target: GraphTarget, model: VLM, name: str) -> int | None:
    return next((ax for ax, label in target.dynamic_axes(model).get(name, {}).items() if label == "batch"), None)


def check_batch_rows(target: GraphTarget, model: VLM, run, *, batch: int = 3, atol: float = 1e-5,
                     rtol: float = 1e-5) -> float:
    """Each row of a batch-N run equals the same row run alone, up to float32 kernel noise (batch shapes pick
    other matmul kernels): |diff| <= atol + rtol * max|output|. Returns the max abs diff."""
    feeds = {k: v.numpy() for k, v in example_inputs(target, model, batch).items()}
    full = run(feeds)
    worst = 0.0
    for row in range(batch):
        single = {}
        for k, v in feeds.items():  # inputs without a batch axis (e.g. cached query embeddings) go in whole
            ax = batch_axis(target, model, k)
            single[k] = v if ax is None else np.take(v, [row], axis=ax)
        single = run(single)
        for out, value in full.items():
            ax = batch_axis(target, model, out)
            diff = (float(np.max(np.abs(np.take(value, [row], axis=ax).astype(np.float64) - single[out])))
                    if value.size else 0.0)
            worst = max(worst, diff)
            if diff > atol + rtol * float(np.max(np.abs(value.astype(np.float64)), initial=0.0)):
                raise ExportValidationError(
                    f"{target.name}: output '{out}' row {row} of a batch of {batch} differs from the same row alone "
                    f"by {diff:.3g}"
                )
    return worst
