"""Where a session runs: the execution providers a device asks onnxruntime for, and the check, after the session
opens, that it got them (anchor: jetson-containers' provider assertion).

onnxruntime-gpu lists its CUDA and TensorRT providers whether or not their libraries can load. When one cannot (no
GPU, a missing libcublasLt or cuDNN, a TensorRT its provider was not built against), the session logs the failure on
the process's stderr (and, for TensorRT, prints "Falling back to [...]" on stdout) and opens on the CPU anyway;
`session.get_providers()` is then all that tells. `opening_log` keeps those lines while a GPU session opens, so the
refusal can name the provider and the library that failed.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import threading
import warnings

from .errors import EngineError

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
EXECUTION_PROVIDERS = {"cpu": (CPU,), "cuda": (CUDA, CPU), "tensorrt": (TENSORRT, CUDA, CPU)}
FAILED_LIBRARY = re.compile(r"Failed to load library (\S+) with error: ([^\n\x1b]+)")
FAILED_PROVIDER = re.compile(r"Failed to create (\w+ExecutionProvider)\.\s*([^\n\x1b]*?)(?: Please|\n|\x1b|$)")
EP_ERROR = re.compile(r"EP Error ([^\n]+)")


class CpuFallbackWarning(UserWarning):
    """A session asked for a GPU provider runs on the CPU because the user allowed it (--allow-cpu-fallback)."""


def wanted_provider(device: str, *, tensorrt: bool = True) -> str:
    """The provider a session of `device` must get: TensorRT's, or CUDA's for a graph TensorRT cannot take."""
    return EXECUTION_PROVIDERS[device][0] if device != "tensorrt" or tensorrt else CUDA


def provider_names(device: str, *, tensorrt: bool = True) -> tuple[str, ...]:
    names = EXECUTION_PROVIDERS[device]
    return names[1:] if device == "tensorrt" and not tensorrt else names


class OpeningLog:
    text = ""


_capture = threading.Lock()  # the process's stderr is one: one capture at a time


@contextlib.contextmanager
def opening_log(active: bool):
    """While the block runs, what onnxruntime writes on fd 2 (its C++ log) and on Python's stdout (its fallback
    message) goes to `.text` instead; nothing is captured unless `active`."""
    log = OpeningLog()
    if not active:
        yield log
        return
    with _capture, tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved, printed = os.dup(2), io.StringIO()
        os.dup2(tmp.fileno(), 2)
        try:
            with contextlib.redirect_stdout(printed):
                yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            log.text = tmp.read().decode("utf-8", "replace") + printed.getvalue()


def failures(text: str) -> list[str]:
    """The causes onnxruntime logged: each library that failed to load, each provider it could not create."""
    found = [f"{os.path.basename(lib)} failed to load: {why.strip()}" for lib, why in FAILED_LIBRARY.findall(text)]
    found += [f"{p} could not be created{': ' + why.strip() if why.strip() else ''}"
              for p, why in FAILED_PROVIDER.findall(text)]
    found += [f"onnxruntime: {line.strip()}" for line in EP_ERROR.findall(text)]
    return list(dict.fromkeys(found))  # in order, once each


def check_placement(got: list[str], *, device: str, wanted: str, name: str, log: str, allow_cpu_fallback: bool) -> None:
    """EngineError unless the session of `name` got `wanted`; with `allow_cpu_fallback`, a CpuFallbackWarning."""
    if wanted in got:
        return
    causes = failures(log)
    said = "; ".join(causes) if causes else "onnxruntime logged no cause"
    if allow_cpu_fallback:
        warnings.warn(f"device '{device}': '{name}' runs on {got} instead of {wanted} ({said})", CpuFallbackWarning,
                      stacklevel=3)
        return
    raise EngineError(f"device '{device}': expected '{name}' on onnxruntime's {wanted}, found it placed on {got} "
                      f"({said}). Install what {wanted} needs (`moai-edge doctor` shows what is found), or pass "
                      f"--allow-cpu-fallback to run on the CPU")
