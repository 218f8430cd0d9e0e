"""Per-stage wall-clock time of one call."""

from __future__ import annotations

import time
from contextlib import contextmanager


class Timer:
    """Accumulates milliseconds per named stage, and keeps each span (stage, start, end) in `time.perf_counter`
    seconds so that a memory sampler can attribute its samples to stages."""

    def __init__(self):
        self.ms: dict[str, float] = {}
        self.spans: list[tuple[str, float, float]] = []

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            t1 = time.perf_counter()
            self.ms[stage] = self.ms.get(stage, 0.0) + (t1 - t0) * 1e3
            self.spans.append((stage, t0, t1))
