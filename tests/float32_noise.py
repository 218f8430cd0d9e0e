"""Tolerances from the arithmetic: how far two float32 evaluations of the same sums may differ.

Two evaluations of one float32 sum (another summation order, blocking, a fused multiply-add, a batched kernel instead
of a single-row one) each round every addition by at most half a step (eps / 2) of the running sum, so they differ by
at most `terms * eps * magnitude`, where `magnitude` bounds the running sums. For the random-sign terms of a matmul
the running sums are a random walk that ends at the result: the largest result compared is their size. Comparisons
of bit-identical paths use `array_equal`, not this.
"""

from __future__ import annotations

import numpy as np

EPS = float(np.finfo(np.float32).eps)  # 2^-23: one float32 step at 1.0


def sum_noise(terms: int, magnitude: float) -> float:
    """The bound on |a - b| for two float32 evaluations of a sum of `terms` terms whose running sums stay within
    `magnitude`."""
    return terms * EPS * float(magnitude)
