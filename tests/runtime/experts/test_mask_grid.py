"""Masks on their grid standing for their nearest-resized copies (runtime.experts.mask_grid)."""

from __future__ import annotations

import numpy as np
import pytest

from moai_edge.runtime.experts.mask_grid import MaskGrid, resize_nearest

SIZES = [(37, 45), (13, 17), (20, 24), (61, 24)]  # enlarged by non-integer factors, shrunk, unchanged, mixed


@pytest.mark.parametrize("size", SIZES)
def test_resize_is_torchs_nearest(size):
    torch = pytest.importorskip("torch")
    planes = np.random.default_rng(0).normal(size=(3, 20, 24)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(planes)[None], size=size, mode="nearest")[0].numpy()
    np.testing.assert_array_equal(resize_nearest(planes, size), expected)


@pytest.mark.parametrize("size", SIZES)
def test_iou_on_the_grid_is_the_iou_of_the_resized_masks(size):
    masks = np.random.default_rng(1).random((6, 20, 24)) > 0.6
    full = resize_nearest(masks, size).reshape(6, -1)
    inter = (full[1:] & full[0]).sum(-1).astype(np.float32)
    expected = inter / (full[1:] | full[0]).sum(-1).astype(np.float32)
    ours = MaskGrid((20, 24), size).iou_over(masks[0].ravel(), masks[1:].reshape(5, -1))
    np.testing.assert_array_equal(ours, expected)
    assert ours.dtype == np.float32


def test_weights_count_the_copies_of_each_grid_pixel():
    grid = MaskGrid((4, 4), (6, 2))  # rows 0, 0, 1, 2, 2, 3 and columns 0, 2
    assert grid.weights.reshape(4, 4).tolist() == [[2, 0, 2, 0], [1, 0, 1, 0], [2, 0, 2, 0], [1, 0, 1, 0]]
