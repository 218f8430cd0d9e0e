"""Wall-clock helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time


def timed_ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def interleaved_ms(a, b, runs: int) -> tuple[float, float]:
    """Medians of a and b timed A B A B after one warm-up each, so machine noise hits both."""
    a(), b()
    pairs = [(timed_ms(a), timed_ms(b)) for _ in range(runs)]
    return statistics.median(x for x, _ in pairs), statistics.median(y for _, y in pairs)
