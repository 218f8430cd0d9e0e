"""The TensorRT provider configured from the manifest: engines built once and cached per package and device.

    cache root (RuntimeOptions.engine_cache_dir, else $MOAI_EDGE_CACHE, else ~/.cache/moai-edge/tensorrt)
      <package id>/<GPU name>-trt<TensorRT version>/<component>-<graph sha256[:16]>/   engine cache
      <package id>/<GPU name>-trt<TensorRT version>/timing.cache                        timing cache, shared

fp16 is on for the packages of GPU presets (any float16 component), int8 for graphs in explicit (QDQ) int8, the
workspace bounded, and each graph's min/opt/max optimization profile written from the manifest's axis ranges
(`tensorrt.axis_ranges`). A graph the manifest does not send to TensorRT (`tensorrt.graphs`: the decoder's contrib
ops) runs on the CUDA provider instead. Option names: onnxruntime's TensorRT execution provider documentation.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EngineError
from .manifest import MANIFEST_NAME, Manifest
from .protocol import TensorSpec

WORKSPACE_BYTES = 4 << 30  # a bound on what one build may take: 4 GiB of an Orin's shared memory


@dataclass(frozen=True)
class TensorrtPlan:
    """What the manifest says of one graph for TensorRT, with what the cache key needs."""

    component: str
    build: bool = True  # False: the graph runs on the CUDA provider
    reason: str = ""  # why not, when not
    profiles: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)  # min/opt/max -> input -> shape
    fp16: bool = False
    int8: bool = False
    package_id: str = ""
    graph_sha256: str = ""


def cache_root(option: str | None) -> Path:
    default = Path(os.environ.get("MOAI_EDGE_CACHE") or Path.home() / ".cache" / "moai-edge" / "tensorrt")
    return Path(option) if option else default


def safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "unknown"


def device_folder(root: Path, package_id: str, gpu_name: str, trt_version: str) -> Path:
    """The folder of one package's engines on one GPU model and TensorRT version."""
    return root / safe(package_id) / f"{safe(gpu_name)}-trt{safe(trt_version)}"


def engine_folder(device_dir: Path, plan: TensorrtPlan) -> Path:
    return device_dir / f"{safe(plan.component)}-{plan.graph_sha256[:16]}"


def package_id(manifest_bytes: bytes, folder: Path) -> str:
    """A package's key: its folder's name and the first 12 hex digits of its manifest's sha256."""
    return f"{folder.resolve().name}-{hashlib.sha256(manifest_bytes).hexdigest()[:12]}"


def profile_shapes(inputs: list[TensorSpec], ranges: dict[str, list[int]]) -> dict[str, dict[str, tuple[int, ...]]]:
    """min/opt/max shapes of every input from the axis ranges ({axis name: [min, opt, max]}); empty when an input
    has a symbolic axis without a range (TensorRT then builds for the shapes it meets)."""
    out: dict[str, dict[str, tuple[int, ...]]] = {"min": {}, "opt": {}, "max": {}}
    for spec in inputs:
        if all(isinstance(d, int) for d in spec.shape):
            continue
        if any(isinstance(d, str) and d not in ranges for d in spec.shape):
            return {}
        for k, which in enumerate(("min", "opt", "max")):
            out[which][spec.name] = tuple(d if isinstance(d, int) else int(ranges[d][k]) for d in spec.shape)
    return out if out["min"] else {}


def shapes_option(shapes: dict[str, tuple[int, ...]]) -> str:
    """`name:1x3x224x224,other:...`, as trt_profile_*_shapes take them."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in shapes.items())


def provider_options(plan: TensorrtPlan, *, device_id: int, cache_dir: Path) -> dict[str, str]:
    """The TensorRT provider's options for `plan`'s graph, its caches under `cache_dir` (a device folder)."""
    if not plan.graph_sha256:
        raise EngineError(f"'{plan.component}': expected the graph's sha256 from the manifest to key its TensorRT "
                          f"engine cache, found none")
    options = {"device_id": str(device_id), "trt_max_workspace_size": str(WORKSPACE_BYTES),
               "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(engine_folder(cache_dir, plan)),
               "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(cache_dir),
               "trt_fp16_enable": "1" if plan.fp16 else "0", "trt_int8_enable": "1" if plan.int8 else "0"}
    if plan.int8:
        options["trt_int8_use_native_calibration_table"] = "0"  # explicit QDQ scales: no calibration table
    for which in ("min", "opt", "max"):
        if plan.profiles.get(which):
            options[f"trt_profile_{which}_shapes"] = shapes_option(plan.profiles[which])
    return options


GPU_PRESETS = ("fp16", "int4-fp16", "fp16-int8")  # export.precision's presets for GPUs: TensorRT builds in fp16


def tensorrt_plan(manifest: Manifest, component: str) -> TensorrtPlan:
    """What the manifest's `tensorrt` section says of `component`; a graph it does not name runs on CUDA."""
    c, section = manifest.component(component), manifest.tensorrt
    said = section.get("graphs", {}).get(component)
    if said is None:
        reason = ("the package records no TensorRT check (schema 4: re-export it with this moai-edge)" if not section
                  else "the manifest's tensorrt.graphs does not name it")
        said = {"build": False, "reason": reason}
    package = package_id((manifest.root / MANIFEST_NAME).read_bytes(), manifest.root)
    return TensorrtPlan(component=component, build=said["build"], reason=said.get("reason", ""),
                        profiles=profile_shapes(c.inputs, section.get("axis_ranges", {})),
                        fp16=manifest.source.get("precision") in GPU_PRESETS or c.precision == "fp16",
                        int8=c.precision == "int8-qdq", package_id=package, graph_sha256=c.sha256)
