"""The published support tables the static checks read, kept as data beside this file (each names its source):
onnx-tensorrt's operator matrix (tensorrt_ops.json) and onnxruntime's CUDA kernel table (cuda_kernels.json)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
TENSORRT_MINIMUM = "10.3"  # JetPack 6.1 / 6.2: what a package's graphs are checked against for TensorRT


@lru_cache(maxsize=None)
def tensorrt_table() -> dict:
    return json.loads((HERE / "tensorrt_ops.json").read_text())


@lru_cache(maxsize=None)
def cuda_table() -> dict:
    return json.loads((HERE / "cuda_kernels.json").read_text())


def tensorrt_versions() -> list[str]:
    return list(tensorrt_table()["versions"])
