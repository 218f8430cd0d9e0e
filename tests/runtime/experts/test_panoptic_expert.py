"""The panoptic expert as packaged: runtime (onnxruntime + numpy) against transformers (model + processor)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moai_edge.runtime.cli import main
from moai_edge.runtime.experts.panoptic import PanopticConfig, preprocess_panoptic
from moai_edge.runtime.samples import sample_image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def hf_processor():
    return transformers.Mask2FormerImageProcessor(size={"height": 384, "width": 384})


def test_preprocessing_matches_transformers():
    rng = np.random.default_rng(0)
    for shape, exact in (((320, 320, 3), True), ((100, 150, 3), True), ((480, 640, 3), False)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        ref = hf_processor()(images=[img], return_tensors="np")["pixel_values"][0]
        diff = np.abs(preprocess_panoptic(img, PanopticConfig()) - ref)
        # upscaling is exact; downscaling (torchvision's uint8 antialias kernel vs PIL's) differs by 1 grey level
        assert diff.max() < (1e-6 if exact else 1.01 / 255 / 0.224)


def test_results_match_transformers(package):
    manifest, experts = package
    section = manifest.experts["panoptic"]
    model = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(section["source"]).eval()
    images = [sample_image(size=s, seed=i) for i, s in enumerate((320, 256, 300))]
    ours = experts.run(images)
    proc = hf_processor()
    with torch.no_grad():
        out = model(**proc(images=images, return_tensors="pt"))
    t = section["target_size"]
    refs = proc.post_process_panoptic_segmentation(out, threshold=0.5, mask_threshold=0.95, label_ids_to_fuse=set(),
                                                   target_sizes=[(t, t)] * len(images))
    assert any(r.panoptic.segments for r in ours)  # the tiny expert finds something: the comparison can fail
    for r, ref in zip(ours, refs):
        assert ([(s.id, s.label_id) for s in r.panoptic.segments]
                == [(s["id"], s["label_id"]) for s in ref["segments_info"]])
        agree = (r.panoptic.segmentation == ref["segmentation"].numpy().astype(np.int32)).mean()
        assert agree > 0.999, agree


def test_batch_of_four_equals_one_at_a_time(package):
    _, experts = package
    images = [sample_image(size=s, seed=i) for i, s in enumerate((320, 200, 410, 256))]
    batch = experts.run(images)
    for img, r in zip(images, batch):
        alone = experts.run([img])[0]
        np.testing.assert_array_equal(alone.panoptic.segmentation, r.panoptic.segmentation)
        assert alone.panoptic.segments == r.panoptic.segments


@pytest.mark.parametrize("family", ["collavo", "moai"])
def test_cli_experts_json(tiny_packages, tmp_path, capsys, family):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(sample_image()).save(path)
    assert main(["experts", "--engine", str(tiny_packages[family]), str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert isinstance(report["segments"], list)
    assert ("crayon_text" in report) == (family == "collavo") and ("verbalized" in report) == (family == "moai")
