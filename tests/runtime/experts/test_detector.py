"""OWLv2's pre- and post-processing in the runtime vs transformers'. (The exported graph:
tests/export/experts/test_detector.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from moai_edge.runtime.experts.detector import DetectorConfig, post_process_detections, preprocess_detector
from moai_edge.runtime.samples import sample_image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_preprocessing_matches_transformers():
    proc = transformers.Owlv2ImageProcessor()
    for size in ((300, 200), (1200, 900)):  # upscale, and downscale with the Gaussian anti-aliasing
        img = sample_image(size=max(size))[: size[0], : size[1]]
        ref = proc(images=[img], return_tensors="np")["pixel_values"][0]
        ours = preprocess_detector(img, DetectorConfig())
        assert np.abs(ours - ref).max() < 1e-4


def test_post_processing_matches_transformers():
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((1, 50, 7)) * 2 - 2.5).astype(np.float32)
    boxes = rng.uniform(0.05, 0.95, (1, 50, 4)).astype(np.float32)
    ref = transformers.Owlv2ImageProcessor().post_process_object_detection(
        SimpleNamespace(logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes)), threshold=0.1,
        target_sizes=[(490, 490)])[0]
    keep = ref["scores"] >= 0.5  # MoAI's own cut
    ours = post_process_detections(logits[0].max(-1), logits[0].argmax(-1), boxes[0], DetectorConfig())
    assert 0 < len(ours) < 50
    assert [d.label_id for d in ours] == ref["labels"][keep].tolist()
    np.testing.assert_allclose([d.score for d in ours], ref["scores"][keep].numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.stack([d.box for d in ours]), ref["boxes"][keep].numpy(), rtol=1e-6)
    assert post_process_detections(np.full(5, -9.0, np.float32), np.zeros(5, np.int64), boxes[0, :5],
                                   DetectorConfig()) == []
