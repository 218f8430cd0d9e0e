"""The float32 noise bound the parity tests take their tolerances from (tests/float32_noise.py)."""

from __future__ import annotations

import numpy as np

from .float32_noise import EPS, sum_noise


def test_two_summation_orders_stay_within_the_bound():
    rng = np.random.default_rng(0)
    for terms in (16, 64, 4096):
        x = rng.standard_normal((200, terms)).astype(np.float32)
        forward = np.cumsum(x, axis=1, dtype=np.float32)  # left to right, rounding after each addition
        pairwise = x.sum(axis=1, dtype=np.float32)  # numpy's blocked pairwise sum
        magnitude = np.abs(forward).max()
        assert np.abs(forward[:, -1] - pairwise).max() <= sum_noise(terms, magnitude)
        assert np.abs(forward[:, -1] - pairwise).max() > 0  # the orders do differ: the bound is not vacuous


def test_the_bound_is_terms_float32_steps_at_the_magnitude():
    assert EPS == 2.0**-23
    assert sum_noise(64, 0.5) == 64 * 2.0**-24
