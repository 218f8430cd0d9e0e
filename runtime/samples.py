"""A sample image drawn on the spot, so the demo needs no files."""

from __future__ import annotations

import numpy as np


def sample_image(size: int = 320, seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8: a sky gradient, a green field, a red sun and a blue box."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3), np.float32)
    img[..., 2] = 255 - 120 * y / size
    img[..., 1] = 160 - 60 * y / size
    img[..., 0] = 90
    img[y > size * 0.6] = (60, 160, 70)
    img[(x - size * 0.75) ** 2 + (y - size * 0.2) ** 2 < (size * 0.1) ** 2] = (230, 60, 40)
    img[int(size * 0.5):int(size * 0.8), int(size * 0.15):int(size * 0.4)] = (40, 70, 200)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
