"""The vision tower (CLIP + projector): images at the vision input size -> image features."""

from __future__ import annotations

import numpy as np

from moai_edge.engines.errors import InputError
from moai_edge.engines.manifest import Manifest
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.registry import open_engine

from .images import check_resize, normalize


class VisionTower:
    def __init__(self, manifest: Manifest, options: RuntimeOptions):
        self.preprocess = manifest.preprocess
        check_resize(self.preprocess)
        self.engine = open_engine(manifest, "vision", options)
        self.dtype = np.dtype(next(s.dtype for s in self.engine.inputs() if s.name == "pixel_values"))

    def encode(self, images: list[np.ndarray]) -> np.ndarray:
        """HxWx3 uint8 RGB images already at the vision input size (Pipeline.expert_input) -> (B, N, H)."""
        s = self.preprocess.image_size
        for img in images:
            if img.shape != (s, s, 3):
                raise InputError(f"the vision tower takes ({s}, {s}, 3) images, found {img.shape}")
        return self.encode_pixels(np.stack([normalize(img, self.preprocess) for img in images]))

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(B,3,S,S) normalized pixels -> (B, N, H)."""
        return self.engine.run({"pixel_values": pixels.astype(self.dtype, copy=False)})["image_features"]

    def close(self) -> None:
        self.engine.close()
