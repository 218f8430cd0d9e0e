"""What a benchmark ran on: CPU, cores, threads, library versions and the engine package's hash."""

from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(*, threads: int, engine_dir: Path) -> dict:
    manifest = Path(engine_dir) / "manifest.json"
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "threads": threads,
        "jetson": Path("/etc/nv_tegra_release").exists(),
        "python": platform.python_version(),
        "versions": {d: version_of(d) for d in ("moai-edge", "onnxruntime", "onnxruntime-gpu", "numpy", "torch",
                                                "transformers")},
        "gpu_platform": gpu_platform(),  # GPU, CUDA, cuDNN, TensorRT, L4T, power mode, clocks (or why absent)
        "engine": str(engine_dir),
        "engine_manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
    }


def gpu_platform() -> dict:
    """engines.platform_info's report: what a run on a Jetson or an RTX card needs to be reproduced."""
    from moai_edge.engines.platform_info import machine_report

    return machine_report()
