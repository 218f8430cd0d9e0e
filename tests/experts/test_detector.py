"""OWLv2 as packaged: cached-query graph vs transformers' full forward, pre- and post-processing vs transformers."""

from __future__ import annotations

import numpy as np
import pytest

from moai_edge.engines.manifest import Manifest
from moai_edge.engines.ort_engine import OrtEngine
from moai_edge.runtime.experts.detector import DetectorConfig, post_process_detections, preprocess_detector
from moai_edge.runtime.samples import sample_image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from moai_edge.export.experts.detector import load_detector, query_tokens, read_labels  # noqa: E402


@pytest.fixture(scope="module")
def packaged(tiny_packages):
    m = Manifest.load(tiny_packages["moai"])
    section = m.experts["detector"]
    engine = OrtEngine.load(m.path(m.component("detector").file))
    queries = np.load(m.path(m.component(section["queries"]).file))
    yield m, section, engine, queries, load_detector(section["source"])
    engine.close()


def test_preprocessing_matches_transformers():
    proc = transformers.Owlv2ImageProcessor()
    for size in ((300, 200), (1200, 900)):  # upscale, and downscale with the Gaussian anti-aliasing
        img = sample_image(size=max(size))[: size[0], : size[1]]
        ref = proc(images=[img], return_tensors="np")["pixel_values"][0]
        ours = preprocess_detector(img, DetectorConfig())
        assert np.abs(ours - ref).max() < 1e-4


def test_cached_queries_equal_the_full_forward(packaged):
    """The text side computed once at export gives what the full HF forward computes with the text each time."""
    m, section, engine, queries, model = packaged
    ids, mask = query_tokens(model, section["labels"], section["source"])
    images = [sample_image(size=300, seed=s) for s in (0, 1)]
    pixels = np.stack([preprocess_detector(img, DetectorConfig()) for img in images])
    with torch.no_grad():
        full = model(input_ids=ids.repeat(len(images), 1), attention_mask=mask.repeat(len(images), 1),
                     pixel_values=torch.from_numpy(pixels))
    ours = engine.run({"pixel_values": pixels, "query_embeds": queries})
    best, index = full.logits.max(dim=-1)
    np.testing.assert_allclose(ours["best_logit"], best.numpy(), atol=1e-4)
    assert (ours["best_query"] == index.numpy()).mean() > 0.99
    np.testing.assert_allclose(ours["boxes"], full.pred_boxes.numpy(), atol=1e-4)


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
    assert post_process_detections(np.full(5, -9.0, np.float32), np.zeros(5, np.int64), boxes[0, :5], DetectorConfig()) == []


def test_queries_from_a_moai_clone_are_read_as_data(tmp_path):
    utils = tmp_path / "utils"
    utils.mkdir()
    (utils / "constants.py").write_text("import os\nADE20K_847 = ['wall', 'sky']\nIMAGENET_CLASSES = ['tench']\nos.system('false')\n")
    assert read_labels(moai_repo=tmp_path)["detector_queries"] == ["wall", "sky", "tench"]
    (tmp_path / "q.json").write_text('["a", "b"]')
    assert read_labels(labels_file=tmp_path / "q.json")["detector_queries"] == ["a", "b"]
