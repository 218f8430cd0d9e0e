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


class SharedWeights:
    def __init__(self, path: Path, arrays: dict[str, np.ndarray]):
        import onnxruntime as ort

        self.path = path
        self.arrays = arrays  # keep the memory alive as long as any session uses it
        self.ort_values = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in arrays.items()}

    @classmethod
    def open(cls, root: Path, spec: SharedWeightsSpec) -> "SharedWeights":
        path = Path(root) / spec.file
        if not path.is_file():
            raise ManifestError(f"shared weights file '{spec.file}' named in the manifest is missing from {root}")
        mapping = np.memmap(path, dtype=np.uint8, mode="r")
        arrays = {}
        for name, t in spec.tensors.items():
            start, nbytes = int(t["offset"]), int(t["nbytes"])
            if start + nbytes > mapping.size:
                raise ManifestError(
                    f"shared weights '{spec.file}': tensor '{name}' spans bytes {start}..{start + nbytes}, "
                    f"the file has {mapping.size}"
                )
            arrays[name] = mapping[start:start + nbytes].view(np.dtype(t["dtype"])).reshape(t["shape"])
        return cls(path, arrays)

    def add_to(self, session_options) -> None:
        """Names a graph does not hold are ignored by onnxruntime."""
        for name, value in self.ort_values.items():
            session_options.add_initializer(name, value)
