"""What this machine has for the GPU path, each probe returning its finding or saying why there is none: the
onnxruntime distributions and providers, the GPU, CUDA, cuDNN, TensorRT, cuda-python, the driver, and on a Jetson
the L4T release, the power mode and the clocks. Only the standard library, ctypes and optional cuda-python."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .providers import TENSORRT

ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
TEGRA_RELEASE = Path("/etc/nv_tegra_release")


@dataclass(frozen=True)
class Found:
    """A probe's finding: `value`, or None and `why` it is absent."""

    value: str | None
    why: str = ""

    def __str__(self) -> str:
        return self.value if self.value is not None else f"none ({self.why})"

    def to_json(self):
        return self.value if self.value is not None else {"absent": self.why}


def distribution(name: str) -> Found:
    try:
        return Found(metadata.version(name))
    except metadata.PackageNotFoundError:
        return Found(None, "not installed")


def onnxruntime_distributions() -> dict[str, str]:
    """The onnxruntime distributions installed; more than one share the `onnxruntime` module (the last one installed
    wins), so a GPU user must have exactly onnxruntime-gpu."""
    return {d: f.value for d in ORT_DISTRIBUTIONS if (f := distribution(d)).value is not None}


def ort_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def onnxruntime_summary() -> str:
    """One line: the onnxruntime distributions installed and the providers they list, by short name."""
    dists = ", ".join(f"{d} {v}" for d, v in onnxruntime_distributions().items()) or "not installed"
    return f"onnxruntime: {dists}; providers {', '.join(p.removesuffix('ExecutionProvider') for p in ort_providers())}"


def library_version(names: tuple[str, ...], symbol: str, decode) -> Found:
    """The version a shared library reports through `symbol` (an int), the first of `names` that loads."""
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        fn = getattr(lib, symbol, None)
        if fn is None:
            return Found(None, f"{name} has no {symbol}")
        fn.restype = ctypes.c_size_t
        return Found(decode(int(fn())))
    return Found(None, f"{' / '.join(names)} not found by the dynamic loader")


def tensorrt_version() -> Found:
    """TensorRT's version as libnvinfer reports it (10.x is what onnxruntime's TensorRT provider links)."""
    return library_version(("libnvinfer.so.10", "libnvinfer.so"), "getInferLibVersion",
                           lambda v: f"{v // 10000}.{v // 100 % 100}.{v % 100}" if v >= 10000
                           else f"{v // 1000}.{v // 100 % 10}.{v % 100}")


def cudnn_version() -> Found:
    return library_version(("libcudnn.so.9", "libcudnn.so.8", "libcudnn.so"), "cudnnGetVersion",
                           lambda v: f"{v // 10000}.{v // 100 % 100}.{v % 100}" if v >= 90000
                           else f"{v // 1000}.{v // 100 % 10}.{v % 100}")


def cuda_runtime() -> tuple[Found, Found, Found]:
    """(CUDA runtime version, driver's CUDA version, GPU 0's name) through cuda-python."""
    from .errors import require

    try:
        cudart = require("cuda.bindings.runtime", "gpu")
    except ImportError:  # MissingExtraError
        absent = Found(None, "cuda-python not installed (extra gpu)")
        return absent, absent, absent
    ok = cudart.cudaError_t.cudaSuccess
    err, rt = cudart.cudaRuntimeGetVersion()
    runtime = Found(f"{rt // 1000}.{rt % 1000 // 10}") if err == ok else Found(None, f"CUDA error {int(err)}")
    err, drv = cudart.cudaDriverGetVersion()
    driver = Found(f"{drv // 1000}.{drv % 1000 // 10}") if err == ok and drv else Found(None, "no NVIDIA driver")
    err, count = cudart.cudaGetDeviceCount()
    if err != ok or count == 0:
        return runtime, driver, Found(None, "no CUDA device (cudaGetDeviceCount: "
                                            f"{'0 devices' if err == ok else f'error {int(err)}'})")
    err, prop = cudart.cudaGetDeviceProperties(0)
    name = prop.name.decode(errors="replace").rstrip("\x00") if err == ok else None
    return runtime, driver, Found(name, "" if name else f"CUDA error {int(err)}")


def gpu_name(device_id: int = 0) -> Found:
    return cuda_runtime()[2] if device_id == 0 else Found(None, "only GPU 0 is probed")


def command(args: list[str], timeout: float = 5.0) -> Found:
    """A command's first line of output, or why there is none."""
    if shutil.which(args[0]) is None:
        return Found(None, f"no {args[0]} on PATH")
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Found(None, f"{args[0]}: {exc}")
    text = (out.stdout or out.stderr).strip()
    if out.returncode != 0:
        return Found(None, f"{args[0]} exited {out.returncode}: {text.splitlines()[0] if text else ''}".strip())
    return Found(text or None, "" if text else f"{args[0]} printed nothing")


def l4t_release() -> Found:
    """'R36 (release), REVISION: 4.0' -> '36.4.0' from /etc/nv_tegra_release."""
    if not TEGRA_RELEASE.exists():
        return Found(None, f"not a Jetson (no {TEGRA_RELEASE})")
    first = TEGRA_RELEASE.read_text().splitlines()[0]
    major = first.split()[1].lstrip("R") if first.startswith("#") else first.split()[0].lstrip("R")
    revision = first.split("REVISION:")[1].split(",")[0].strip() if "REVISION:" in first else "?"
    return Found(f"{major}.{revision}")


def power_mode() -> Found:
    """`nvpmodel -q`: 'NV Power Mode: MAXN' (and the mode number)."""
    found = command(["nvpmodel", "-q"])
    return Found(" ".join(found.value.split()), "") if found.value else found


def clocks() -> Found:
    """`jetson_clocks --show`'s lines (locked clocks show min = max), condensed; root is needed."""
    found = command(["jetson_clocks", "--show"])
    return Found("; ".join(line.strip() for line in found.value.splitlines()[:6])) if found.value else found


def cuda_toolkit() -> Found:
    path = Path("/usr/local/cuda/version.json")
    if not path.is_file():
        return Found(None, "no /usr/local/cuda/version.json")
    return Found(json.loads(path.read_text()).get("cuda", {}).get("version"))


def machine_report() -> dict:
    """Everything above, as JSON-ready values."""
    runtime, driver, gpu = cuda_runtime()
    return {"onnxruntime": distribution("onnxruntime").to_json(), "onnxruntime_gpu": distribution("onnxruntime-gpu")
            .to_json(), "onnxruntime_providers": ort_providers(), "cuda_python": distribution("cuda-python").to_json(),
            "cuda_runtime": runtime.to_json(), "cuda_driver": driver.to_json(), "cuda_toolkit": cuda_toolkit()
            .to_json(), "gpu": gpu.to_json(), "cudnn": cudnn_version().to_json(),
            "tensorrt": tensorrt_version().to_json(), "l4t": l4t_release().to_json(),
            "power_mode": power_mode().to_json(), "clocks": clocks().to_json()}


def tensorrt_problems() -> list[str]:
    """Why TensorRT engines cannot be built here (empty: they can): the TensorRT provider, a GPU, libnvinfer."""
    problems = []
    if TENSORRT not in ort_providers():
        problems.append(f"this onnxruntime has no TensorRT provider (providers: {', '.join(ort_providers())}; "
                        f"install onnxruntime-gpu, see constraints/jetson-jp6.txt on a Jetson)")
    gpu, trt = gpu_name(), tensorrt_version()
    if gpu.value is None:
        problems.append(f"no GPU: {gpu.why}")
    if trt.value is None:
        problems.append(f"no TensorRT 10: {trt.why}")
    return problems
