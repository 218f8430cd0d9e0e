"""Move the large initializers of several graphs into one raw weights file, deduplicated by content.

Constant folding gives the same weight different names in different graphs (a transposed MatMul
weight becomes `onnx::MatMul_1234`), so tensors are matched by dtype, shape and bytes. Each graph
keeps its initializers as ONNX external data pointing into the shared file, so it still loads on
its own; the runtime instead maps the file once and hands the tensors to every session.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from moai_edge.engines.manifest import SharedWeights, sha256_of

ALIGN = 64


def subgraphs(graph):
    """`graph` and every graph nested in its nodes' attributes (If / Loop bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g.node:
                yield from subgraphs(attr.g)
            for g in attr.graphs:
                yield from subgraphs(g)


def initializer_nbytes(init) -> int:
    """From its dims and type, so it works with the data loaded or left outside."""
    from onnx.helper import tensor_dtype_to_np_dtype

    return int(np.prod(init.dims, dtype=np.int64)) * np.dtype(tensor_dtype_to_np_dtype(init.data_type)).itemsize


def bytes_read(model, graph) -> int:
    """The bytes of the initializers that the nodes of `graph` (a graph of `model`, or a branch inside it) and of its
    subgraphs read: its own initializers and the outer graph's it names."""
    used = {name for g in subgraphs(graph) for node in g.node for name in node.input}
    inits = {i.name: i for g in (model.graph, *subgraphs(graph)) for i in g.initializer}
    return sum(initializer_nbytes(inits[name]) for name in used & inits.keys())


def _rename_inputs(graph, renames: dict[str, str]) -> None:
    for g in subgraphs(graph):
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in renames:
                    node.input[i] = renames[name]


def write_shared_weights(models: dict, out_dir: Path, weights_file: str, *,
                         min_bytes: int = 1024) -> tuple[SharedWeights, dict]:
    """models: {name: onnx.ModelProto} with their data loaded; rewritten in place and returned
    with the manifest entry of the weights file."""
    from onnx import numpy_helper

    out_dir = Path(out_dir)
    table: dict[tuple, str] = {}  # (dtype, shape, digest) -> canonical name
    tensors: dict[str, dict] = {}
    offset = 0
    with open(out_dir / weights_file, "wb") as f:
        for proto in models.values():
            graph = proto.graph
            renames, keep = {}, []
            seen_here = set()
            for init in graph.initializer:
                arr = numpy_helper.to_array(init)
                if arr.nbytes < min_bytes:
                    keep.append(init)
                    continue
                data = np.ascontiguousarray(arr).tobytes()
                key = (str(arr.dtype), arr.shape, hashlib.sha256(data).hexdigest())
                if key not in table:
                    name = f"shared/{init.name}"  # a namespace no exporter uses, so no clash with local names
                    name = name if name not in tensors else f"{name}.{len(tensors)}"
                    pad = -offset % ALIGN
                    f.write(b"\0" * pad)
                    offset += pad
                    f.write(data)
                    tensors[name] = {"offset": offset, "nbytes": len(data), "dtype": str(arr.dtype),
                                     "shape": list(arr.shape)}
                    offset += len(data)
                    table[key] = name
                canonical = table[key]
                renames[init.name] = canonical
                if canonical in seen_here:  # same bytes twice in one graph: one initializer is enough
                    continue
                seen_here.add(canonical)
                t = tensors[canonical]
                init.name = canonical
                init.ClearField("raw_data")
                for fld in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                    init.ClearField(fld)
                del init.external_data[:]
                for key, value in (("location", weights_file), ("offset", t["offset"]), ("length", t["nbytes"])):
                    entry = init.external_data.add()
                    entry.key, entry.value = key, str(value)
                init.data_location = init.EXTERNAL
                keep.append(init)
            kept = [type(i)() for i in keep]
            for new, old in zip(kept, keep):
                new.CopyFrom(old)
            del graph.initializer[:]
            graph.initializer.extend(kept)
            _rename_inputs(graph, renames)
    spec = SharedWeights(file=weights_file, sha256=sha256_of(out_dir / weights_file), tensors=tensors)
    return spec, models


def save_model(proto, path: Path, *, weights: str | None = None) -> str:
    """Save a graph and return its sha256. With `weights`, its initializers of 1 KiB and more go to that file beside
    it; without, the graph is saved as it is (external data it names already written)."""
    import onnx

    path = Path(path)
    if weights is None:
        onnx.save_model(proto, str(path))
        return sha256_of(path)
    (path.parent / weights).unlink(missing_ok=True)  # onnx appends to an existing file
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=weights,
                    size_threshold=1024)
    (path.parent / weights).chmod(path.stat().st_mode & 0o777)  # onnx creates it private; the package is not
    return sha256_of(path)
