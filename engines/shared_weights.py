"""Decoder weights read once and handed to every graph that names them (prefill and decode).

The file is memory-mapped once; each tensor becomes an OrtValue over that mapping and is given to
every session through `SessionOptions.add_initializer`, so the pages exist once in the process.
Sessions that take them must turn prepacking off, or each session keeps its own repacked copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ManifestError
from .manifest import SharedWeights as SharedWeightsSpec
from .manifest import package_file
from .manifest_fields import check_weight_ranges, weight_tensor


class SharedWeights:
    def __init__(self, path: Path, arrays: dict[str, np.ndarray]):
        import onnxruntime as ort

        self.path = path
        self.arrays = arrays  # keep the memory alive as long as any session uses it
        self.ort_values = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in arrays.items()}

    @classmethod
    def open(cls, root: Path, spec: SharedWeightsSpec) -> "SharedWeights":
        """Every tensor entry is checked (dtype, nbytes = prod(shape) * itemsize, range inside the file) before mapping."""
        path = package_file(Path(root), spec.file, "shared_weights.file")
        if not path.is_file():
            raise ManifestError(f"shared weights file '{spec.file}' named in the manifest is missing from {root}")
        for name, t in spec.tensors.items():
            weight_tensor(t, f"shared_weights.tensors.{name}")
        size = path.stat().st_size
        check_weight_ranges(spec.file, spec.tensors, size)
        mapping = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)  # mmap refuses empty files
        arrays = {name: mapping[t["offset"]:t["offset"] + t["nbytes"]].view(np.dtype(t["dtype"])).reshape(t["shape"])
                  for name, t in spec.tensors.items()}
        return cls(path, arrays)

    def add_to(self, session_options) -> None:
        """Names a graph does not hold are ignored by onnxruntime."""
        for name, value in self.ort_values.items():
            session_options.add_initializer(name, value)
