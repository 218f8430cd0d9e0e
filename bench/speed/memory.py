"""Memory while a benchmark runs: process RSS sampled on a thread, GPU memory through NVML, Jetson's shared memory.

RSS comes from /proc/self/status (VmRSS), so a sample costs a file read and no extra package. GPU and
Jetson figures are reported where present and say why they are absent otherwise.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmRSS in /proc/self/status")


class RssSampler:
    """Samples (perf_counter seconds, RSS MB) every `interval_s` between start() and stop()."""

    def __init__(self, interval_s: float = 0.01):
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.sample, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        while not self.stopping.is_set():
            self.samples.append((time.perf_counter(), rss_mb()))
            self.stopping.wait(self.interval_s)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()
        self.samples.append((time.perf_counter(), rss_mb()))

    def peak_mb(self, start: float = float("-inf"), end: float = float("inf")) -> float | None:
        """The highest sample in [start, end]; a window shorter than the interval takes the samples around it."""
        inside = [mb for t, mb in self.samples if start <= t <= end]
        if not inside:
            before = [mb for t, mb in self.samples if t < start][-1:]
            after = [mb for t, mb in self.samples if t > end][:1]
            inside = before + after
        return max(inside) if inside else None


def gpu_memory() -> dict:
    """Used / total MB of GPU 0 through NVML, or why it is not reported."""
    try:
        import pynvml
    except ImportError:
        return {"skipped": "no NVML bindings (pip install nvidia-ml-py)"}
    try:
        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        return {"used_mb": info.used / 2**20, "total_mb": info.total / 2**20}
    except pynvml.NVMLError as exc:
        return {"skipped": f"NVML: {exc}"}


def jetson_memory() -> dict:
    """On Jetson, CPU and GPU share RAM: /proc/meminfo's MemTotal - MemAvailable is what both use."""
    if not Path("/etc/nv_tegra_release").exists():
        return {"skipped": "not a Jetson (no /etc/nv_tegra_release)"}
    info = {k: int(v.split()[0]) / 1024 for k, v in
            (line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)}
    return {"used_mb": info["MemTotal"] - info["MemAvailable"], "total_mb": info["MemTotal"]}
