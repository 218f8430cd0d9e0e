"""Decoder weights read once and handed to every graph that names them: prefill and decode in the two-graph
layout (a float16-IO decode graph; otherwise they are branches of one graph, engines.branch).

The file is memory-mapped once and hashed over that mapping; each tensor is a view of it. The ONNX
Runtime backend turns the views into OrtValues over the same memory and gives them to every session
through `SessionOptions.add_initializer`, so the pages exist once in the process. Sessions that take
them must turn prepacking off, or each session keeps its own repacked copy.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from . import integrity
from .errors import ManifestError
from .manifest import SharedWeights as SharedWeightsSpec
from .manifest import package_file
from .manifest.fields import check_weight_ranges, weight_tensor


class SharedWeights:
    def __init__(self, path: Path, mapping: np.ndarray, stamp: integrity.Stamp, arrays: dict[str, np.ndarray]):
        self.path = path
        self.mapping = mapping  # the whole file; every array is a view of it
        self.stamp = stamp
        self.arrays = arrays  # keep the memory alive as long as any session uses it

    @classmethod
    def open(cls, root: Path, spec: SharedWeightsSpec, *, where: str = "shared_weights",
             verify: bool = True) -> SharedWeights:
        """Every tensor entry is checked (dtype, nbytes = prod(shape) * itemsize, range inside the file) before mapping;
        with `verify` the mapping is hashed (once per process) before any view of it is made."""
        path = package_file(Path(root), spec.file, f"{where}.file")
        if not path.is_file():
            raise ManifestError(f"shared weights file '{spec.file}' named in the manifest is missing from {root}")
        for name, t in spec.tensors.items():
            weight_tensor(t, f"{where}.tensors.{name}")
        check_weight_ranges(spec.file, spec.tensors, path.stat().st_size, where)
        label = f"engine package file '{spec.file}' ({where}.file)"
        mapping, stamp = integrity.map_verified(path, spec.sha256 if verify else None, label)
        check_weight_ranges(spec.file, spec.tensors, len(mapping), where)  # the file as mapped
        arrays = {name: mapping[t["offset"]:t["offset"] + t["nbytes"]].view(np.dtype(t["dtype"])).reshape(t["shape"])
                  for name, t in spec.tensors.items()}
        return cls(path, mapping, stamp, arrays)

    def verify(self, sha256: str, label: str) -> None:
        """IntegrityError unless the mapped file hashes to `sha256` (free when it was already checked)."""
        integrity.check(self.stamp, self.mapping, sha256, label)

    @cached_property
    def ort_values(self) -> dict:
        import onnxruntime as ort

        return {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in self.arrays.items()}

    def add_to(self, session_options) -> None:
        """Names a graph does not hold are ignored by onnxruntime."""
        for name, value in self.ort_values.items():
            session_options.add_initializer(name, value)
