"""This process's memory (Linux /proc) and the two ways it gets freed memory back to the system.

- `release_freed()`: glibc's malloc_trim(0) returns the heap pages that freed activations left behind (after an
  answer the experts' and the tower's buffers are free but still resident otherwise). A no-op off glibc.
- `PeakMeter`: the process's peak RSS since a reset (VmHWM, reset through /proc/self/clear_refs), to measure what
  one stage adds on top of what is resident.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def status_mb(field: str) -> float | None:
    """A VmXXX field of /proc/self/status in MB, or None where there is none (not Linux)."""
    try:
        lines = STATUS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def rss_mb() -> float | None:
    return status_mb("VmRSS")


@lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None


def release_freed() -> bool:
    """Give freed heap memory back to the system; False where the C library has no malloc_trim."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class PeakMeter:
    """with PeakMeter() as m: work()  ->  m.added_mb: the peak RSS during the work above the RSS before it.
    None where the kernel does not let the peak be reset (then nothing is measured)."""

    def __init__(self):
        self.added_mb: float | None = None

    def __enter__(self):
        self.before = rss_mb()
        try:
            CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.ok = self.before is not None
        except OSError:
            self.ok = False
        return self

    def __exit__(self, *exc):
        peak = status_mb("VmHWM") if self.ok else None
        self.added_mb = max(0.0, peak - self.before) if peak is not None else None
