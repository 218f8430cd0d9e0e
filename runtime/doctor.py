"""`moai-edge doctor` and `moai-edge build-engines`: what this machine has for the GPU path, where each graph of a
package would run, and TensorRT's engines built ahead of time so a robot's first answer never waits for a build."""

from __future__ import annotations

import platform
import sys
import time

from moai_edge.engines import platform_info as probe
from moai_edge.engines.errors import EngineError, InputError, MissingExtraError
from moai_edge.engines.manifest import load_manifest
from moai_edge.engines.registry import open_engine


def machine_lines() -> list[str]:
    runtime, driver, gpu = probe.cuda_runtime()
    lines = [f"python {platform.python_version()} on {platform.machine()}", probe.onnxruntime_summary()]
    if len(probe.onnxruntime_distributions()) > 1:
        lines.append("  WARNING: two onnxruntime distributions share one module; for a GPU keep onnxruntime-gpu only: "
                     "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")
    lines += [f"GPU: {gpu}", f"CUDA runtime {runtime}; driver {driver}; toolkit {probe.cuda_toolkit()}",
              f"cuDNN {probe.cudnn_version()}; TensorRT {probe.tensorrt_version()}; "
              f"cuda-python {probe.distribution('cuda-python')}",
              f"Jetson: L4T {probe.l4t_release()}; power mode {probe.power_mode()}; clocks {probe.clocks()}"]
    if gpu.value is None:
        lines.append("No GPU here: --device cuda and --device tensorrt cannot run on this machine (the CPU can).")
    return lines


def placement_lines(package: str, device: str) -> list[str]:
    """Per graph, where its nodes would run for `device`, from the static checks (engines.compat)."""
    try:
        from moai_edge.engines.compat import check_package, placement
    except MissingExtraError as exc:  # pragma: no cover - the onnx package is in the gpu and export extras
        return [f"per-graph placement: {exc}"]
    manifest = load_manifest(package, verify_hashes=False)
    recorded = manifest.tensorrt.get("graphs", {})
    lines = [f"package {package} ({manifest.family}, {manifest.source.get('precision', 'fp32')}), device {device}:"]
    for name, report in check_package(manifest, with_checker=False).items():
        where, notes = placement(report, device)
        if device == "tensorrt" and name in recorded and recorded[name]["build"] != (where == "tensorrt"):
            notes = notes + [f"the manifest says build={recorded[name]['build']}: re-export to refresh it"]
        shown = notes[:2] + ([f"... {len(notes) - 2} more"] if len(notes) > 2 else [])
        lines.append(f"  {name:<18} {where:<9} " + ("; ".join(shown) if shown else "all nodes"))
    return lines


def cmd_doctor(args) -> int:
    lines = machine_lines()
    if args.engine:
        lines += placement_lines(args.engine, args.device)
    print("\n".join(lines))
    return 0


def cmd_build_engines(args) -> int:
    """Every graph of the package opened on TensorRT (or, where the manifest says TensorRT cannot take it, on CUDA),
    which builds and caches its engine; refused, naming what is missing, where TensorRT cannot run."""
    from .commands import runtime_options

    if args.device != "tensorrt":
        raise InputError(f"--device: expected tensorrt (engines are built for TensorRT), found {args.device!r}")
    problems = probe.tensorrt_problems()
    if problems:
        raise EngineError("cannot build TensorRT engines here: " + "; ".join(problems))
    options = runtime_options(args)
    manifest = load_manifest(args.engine)
    graphs = [n for n, c in manifest.components.items() if c.kind == "onnx"]
    for i, name in enumerate(graphs, 1):
        start = time.perf_counter()
        said = manifest.tensorrt.get("graphs", {}).get(name, {})
        open_engine(manifest, name, options).close()
        where = "TensorRT engine cached" if said.get("build") else f"CUDA ({said.get('reason', 'not checked')})"
        print(f"[{i}/{len(graphs)}] {name}: {where}, {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return 0
