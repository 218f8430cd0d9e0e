"""PSGTR as exported: checkpoint layout (OpenPSG's release and mmdet 3 names), refused checkpoints, the graph vs
PyTorch, and the predicate lists read as data. (Pre- and post-processing: tests/runtime/experts/test_scene_graph.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from moai_edge.engines.errors import CheckpointError, InputError
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.registry import open_engine
from moai_edge.runtime.experts.scene_graph import preprocess_scene_graph
from moai_edge.runtime.samples import sample_image

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
from moai_edge.export.experts import scene_graph as psgtr  # noqa: E402
from moai_edge.export.experts.detector import read_labels  # noqa: E402


def test_checkpoint_keys_round_trip_and_mmdet3_names_load(tmp_path):
    model = psgtr.Psgtr(psgtr.TINY)
    ours = model.state_dict()
    release = psgtr.to_openpsg(ours)
    assert "bbox_head.transformer.encoder.layers.0.attentions.0.attn.in_proj_weight" in release
    assert "bbox_head.transformer.decoder.layers.1.attentions.1.attn.out_proj.bias" in release
    back = psgtr.to_ours(release)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    # OpenPSG's own loader renames to mmdet 3 (.self_attn., .ffn., .cross_attn.): those load too
    renamed = {k.replace(".attentions.0.", ".self_attn.").replace(".ffns.0.", ".ffn.")
               .replace(".attentions.1.", ".cross_attn."): v for k, v in release.items()}
    torch.save({"state_dict": renamed}, tmp_path / "mmdet3.pth")
    loaded = psgtr.load_scene_graph(tmp_path / "mmdet3.pth")
    assert loaded.cfg == psgtr.TINY and loaded.test_scale == psgtr.SCALE


def test_bad_checkpoints_are_refused_by_name(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        psgtr.load_scene_graph(tmp_path / "missing.pth")
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(8, 3, 7, 7)}, "hook": object()},
               tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        psgtr.load_scene_graph(tmp_path / "pickled.pth")
    release = psgtr.to_openpsg(psgtr.Psgtr(psgtr.TINY).state_dict())
    del release["bbox_head.rel_cls_embed.bias"]
    release["bbox_head.extra_head.weight"] = torch.zeros(1)
    torch.save({"state_dict": release}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="rel_cls_embed.bias"):
        psgtr.load_scene_graph(tmp_path / "partial.pth")


def close(ours, ref, name):
    assert np.abs(ours - ref).max() <= 1e-4 + 1e-3 * np.abs(ref).max(), name


def test_graphs_match_pytorch_batch_1_and_4(packaged_scene_graph):
    """The trunk graph at batches 1 and 4, and the mask-heads graph on some of the queries: PyTorch's values, and the
    rows the whole model computes for those queries among all of them."""
    m, cfg, engine, model = packaged_scene_graph
    images = [sample_image(size=490, seed=s) for s in range(4)]
    pixels = np.stack([preprocess_scene_graph(img, cfg) for img in images])
    with torch.no_grad():
        ref = {k: v.numpy() for k, v in model.trunk(torch.from_numpy(pixels)).items()}
        whole = dict(zip(psgtr.OUTPUTS, (t.numpy() for t in model(torch.from_numpy(pixels)))))
    out4 = engine.run({"pixel_values": pixels})
    out1 = engine.run({"pixel_values": pixels[:1]})
    for name in psgtr.TRUNK_OUTPUTS:
        close(out4[name], ref[name], name)
        np.testing.assert_allclose(out1[name][0], out4[name][0], rtol=1e-4, atol=1e-4 * np.abs(ref[name]).max())

    queries = [0, 3, 7, 11]
    feeds = {k: ref[k][:, queries] if k.endswith("attention") else ref[k] for k in psgtr.MASK_INPUTS}
    with open_engine(m, "scene_graph_masks", RuntimeOptions()) as masks:
        ours = masks.run(feeds)
    for name in ("sub_masks", "obj_masks"):
        assert ours[name].shape == (4, len(queries), *pixels.shape[2:] // np.array(4))
        close(ours[name], whole[name][:, queries], name)


def test_predicates_from_labels_file_or_moai_clone(tmp_path):
    (tmp_path / "labels.json").write_text('{"detector_queries": ["a"], "psg_predicates": ["over", "on"]}')
    assert read_labels(tmp_path / "labels.json") == {"detector_queries": ["a"], "psg_predicates": ["over", "on"]}
    utils = tmp_path / "utils"
    utils.mkdir()
    (utils / "constants.py").write_text("ADE20K_847 = ['wall']\nIMAGENET_CLASSES = ['tench']\nPREDICATES = ['over']\n")
    assert read_labels(moai_repo=tmp_path)["psg_predicates"] == ["over"]
    (tmp_path / "bad.json").write_text('{"detector_queries": ["a"], "psg_predicates": [1]}')
    with pytest.raises(InputError, match="psg_predicates"):
        read_labels(tmp_path / "bad.json")
