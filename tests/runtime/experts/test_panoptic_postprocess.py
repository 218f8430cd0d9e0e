"""Our numpy panoptic post-processing against transformers' on the same logits."""

from __future__ import annotations

import numpy as np
import pytest

from moai_edge.runtime.experts.panoptic import PanopticConfig, post_process_panoptic

from ...float32_noise import sum_noise

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def hf_panoptic(class_logits, mask_logits, target):
    from types import SimpleNamespace

    from transformers import Mask2FormerImageProcessor

    out = SimpleNamespace(class_queries_logits=torch.from_numpy(class_logits)[None],
                          masks_queries_logits=torch.from_numpy(mask_logits)[None])
    return Mask2FormerImageProcessor().post_process_panoptic_segmentation(
        out, threshold=0.5, mask_threshold=0.95, label_ids_to_fuse=set(), target_sizes=[(target, target)])[0]


def logits(n_queries: int, n_confident: int, seed: int):
    """Queries 0..n_confident-1 are confident objects with blob-shaped masks; the rest are 'no object'."""
    rng = np.random.default_rng(seed)
    cls = rng.standard_normal((n_queries, 134)).astype(np.float32)
    cls[:, 133] += 6.0  # no object
    y, x = np.mgrid[0:24, 0:24]
    masks = rng.standard_normal((n_queries, 24, 24)).astype(np.float32) - 4
    for q in range(n_confident):
        cls[q, rng.integers(0, 133)] += 12.0
        cy, cx, r = rng.integers(3, 21, 2).tolist() + [rng.integers(3, 9)]
        masks[q] += 12.0 * (((y - cy) ** 2 + (x - cx) ** 2) < r * r)
    return cls, masks


@pytest.mark.parametrize("n_confident", [0, 1, 5])
@pytest.mark.parametrize("target", [490, 35])
@pytest.mark.parametrize("seed", [0, 1])
def test_identical_to_transformers(n_confident, target, seed):
    cls, masks = logits(12, n_confident, seed)
    ours = post_process_panoptic(cls, masks, PanopticConfig(target_size=target))
    ref = hf_panoptic(cls, masks, target)
    theirs = ref["segmentation"].numpy().astype(np.int32)
    differ = ours.segmentation != theirs
    # numpy's exp and torch's sigmoid can differ in the last bit; that flips the argmax only where two
    # queries' score-weighted probabilities tie to ~1e-7, which never happens inside a segment
    assert differ.mean() < 1e-4, differ.sum()
    if differ.any():
        assert set(theirs[differ]) | set(ours.segmentation[differ]) <= {s["id"] for s in ref["segments_info"]} | {0}
    assert [(s.id, s.label_id, s.was_fused) for s in ours.segments] == \
        [(s["id"], s["label_id"], s["was_fused"]) for s in ref["segments_info"]]
    # a score is a softmax probability (<= 1) over the 134 classes: its denominator, a sum of 134 terms, differs by the
    # float32 noise of that sum between torch's vectorised softmax and numpy's; rounding to 6 decimals adds one step
    score_atol = sum_noise(cls.shape[-1], 1.0) + 1e-6
    np.testing.assert_allclose([s.score for s in ours.segments], [s["score"] for s in ref["segments_info"]],
                               rtol=0, atol=score_atol)
    if n_confident:
        assert ours.segments  # the case exercises segments, not only the empty path
    else:
        assert not ours.segments and (ours.segmentation == -1).all()
