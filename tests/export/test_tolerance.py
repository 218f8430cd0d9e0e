"""The validation's tolerance: elementwise, relative to the max, and for query outputs a fraction of queries."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="the export side needs moai-edge[export]")

from moai_edge.engines.errors import ExportValidationError  # noqa: E402
from moai_edge.export.experts.package import TOLERANCES  # noqa: E402
from moai_edge.export.onnx_export import Tolerance, compare  # noqa: E402


def logits(batch: int = 4, queries: int = 200, classes: int = 134) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 10, (batch, queries, classes)).astype(np.float32)


def test_a_few_flipped_queries_pass_the_panoptic_check_and_a_mixed_image_does_not():
    tol, ref = TOLERANCES["panoptic"], logits()
    flipped = ref.copy()
    flipped[3, :7] += 5.0  # the measured case: 7 of 800 queries off, by up to ~2.6% of the range
    assert tol.ok(flipped, ref) and tol.agreement(flipped, ref) == pytest.approx(793 / 800)
    mixed = ref.copy()
    mixed[3] = ref[2]  # one image of four answered with another's queries
    assert not tol.ok(mixed, ref)
    with pytest.raises(ExportValidationError, match=r"75.00% of its queries within, 97% needed"):
        compare("panoptic (batch 4)", {"class_queries_logits": mixed}, {"class_queries_logits": ref}, tol)


def test_without_query_agreement_one_element_off_fails():
    ref = logits()
    off = ref.copy()
    off[0, 0, 0] += 1.0
    strict = Tolerance(atol=1e-4, rtol=1e-2, of_max=True)
    assert strict.ok(ref.copy(), ref) and not strict.ok(off, ref)
    assert strict.agreement(off, ref) == pytest.approx(1 - 1 / off.size)
