"""OWLv2 as exported: the cached-query graph vs transformers' full forward, and the query lists read as data.
(Pre- and post-processing vs transformers: tests/runtime/experts/test_detector.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from moai_edge.engines.errors import InputError
from moai_edge.engines.manifest import load_manifest
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.registry import open_engine
from moai_edge.runtime.experts.detector import DetectorConfig, preprocess_detector
from moai_edge.runtime.samples import sample_image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from moai_edge.export.experts.detector import load_detector, query_tokens, read_labels  # noqa: E402


@pytest.fixture(scope="module")
def packaged(tiny_packages):
    m = load_manifest(tiny_packages["moai"])
    section = m.experts["detector"]
    engine = open_engine(m, "detector", RuntimeOptions())
    queries = np.load(m.path(m.component(section["queries"]).file))
    yield m, section, engine, queries, load_detector(section["source"])
    engine.close()


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


def test_queries_from_a_moai_clone_are_read_as_data(tmp_path):
    utils = tmp_path / "utils"
    utils.mkdir()
    (utils / "constants.py").write_text("import os\nADE20K_847 = ['wall', 'sky']\nIMAGENET_CLASSES = ['tench']\n"
                                        "os.system('false')\n")
    assert read_labels(moai_repo=tmp_path)["detector_queries"] == ["wall", "sky", "tench"]
    (tmp_path / "q.json").write_text('["a", "b"]')
    assert read_labels(labels_file=tmp_path / "q.json")["detector_queries"] == ["a", "b"]


def moai_clone(root, imagenet: str):
    (root / "utils").mkdir(parents=True)
    (root / "utils" / "constants.py").write_text(f"ADE20K_847 = ['wall', 'sky']\nIMAGENET_CLASSES = {imagenet}\n")
    return root


@pytest.mark.parametrize("value, found", [
    ("sorted(__import__('os').listdir('.')) + [open(MARKER, 'w').name]", "found code, which is not run: sorted("),
    ("[c for c in 'ab']", "found code, which is not run: [c for c in 'ab']"),
    ("['tench', 7]", "found ['tench', 7]"),
    ("'tench'", "found 'tench'"),
])
def test_a_constant_that_is_not_a_literal_list_of_strings_is_named_and_never_run(tmp_path, value, found):
    marker = tmp_path / "ran"
    clone = moai_clone(tmp_path / "moai", value.replace("MARKER", repr(str(marker))))
    with pytest.raises(InputError) as refused:
        read_labels(moai_repo=clone)
    message = str(refused.value)
    assert message.startswith(f"{clone / 'utils' / 'constants.py'}, line 2: IMAGENET_CLASSES: ") and found in message
    assert "expected a literal list of strings" in message and not marker.exists()


def test_a_constants_file_that_does_not_parse_is_named(tmp_path):
    clone = moai_clone(tmp_path, "['tench'")
    with pytest.raises(InputError, match=r"constants.py: expected Python source .* found a file that does not parse"):
        read_labels(moai_repo=clone)


@pytest.mark.parametrize("content, found", [(b'["wall", "sky"', "Expecting ','"), (b"\xffwall", "can't decode byte")])
def test_a_labels_file_that_does_not_read_is_named(tmp_path, content, found):
    path = tmp_path / "labels.json"
    path.write_bytes(content)
    expected = "labels.json: expected a JSON list or object of label strings, or UTF-8 text with one label a line"
    with pytest.raises(InputError, match=f"{expected}, found .*{found}"):
        read_labels(labels_file=path)
