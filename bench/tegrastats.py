"""tegrastats sampled while a benchmark runs (Jetson): GPU load (GR3D_FREQ), memory-controller load (EMC_FREQ) and
the board's input power (VDD_IN), one sample per interval; absent elsewhere, saying why."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

GR3D = re.compile(r"GR3D_FREQ (\d+)%")
EMC = re.compile(r"EMC_FREQ (\d+)%")
POWER = re.compile(r"VDD_IN (\d+)mW")


def parse_line(line: str) -> dict:
    """One tegrastats line -> {"gpu_load_pct", "emc_load_pct", "power_mw"} (the fields it has)."""
    out = {}
    for key, pattern in (("gpu_load_pct", GR3D), ("emc_load_pct", EMC), ("power_mw", POWER)):
        m = pattern.search(line)
        if m:
            out[key] = int(m.group(1))
    return out


class Tegrastats:
    """`with Tegrastats() as t: ...` then `t.summary()`: samples of the fields above and their medians."""

    def __init__(self, interval_ms: int = 200):
        self.interval_ms, self.process, self.lines = interval_ms, None, []

    def __enter__(self):
        if shutil.which("tegrastats"):
            self.process = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                            stdout=subprocess.PIPE, text=True, start_new_session=True)
        return self

    def __exit__(self, *exc):
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)  # tegrastats and anything it started
            out, _ = self.process.communicate(timeout=5)
            self.lines = out.splitlines()

    def summary(self) -> dict:
        if self.process is None:
            return {"skipped": "no tegrastats on PATH (not a Jetson)"}
        samples = [s for s in map(parse_line, self.lines) if s]
        medians = {k: sorted(s[k] for s in samples if k in s)[len([s for s in samples if k in s]) // 2]
                   for k in ("gpu_load_pct", "emc_load_pct", "power_mw") if any(k in s for s in samples)}
        return {"samples": len(samples), "median": medians, "interval_ms": self.interval_ms}
