"""PSGTR in the runtime: pre-processing, and OpenPSG's post-processing (transcribed in torch, with its bfloat16
masks) against ours, through to MoAI's relation sentence. (Checkpoint layout and the graph vs PyTorch:
tests/export/experts/test_scene_graph.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines import FeedRecorder
from moai_edge.runtime.experts import Experts
from moai_edge.runtime.experts.scene_graph import (HEADS, SceneGraphConfig, mask_size, post_process_scene_graph,
                                                   preprocess_scene_graph, relations_of, scaled_size, scene_graph_of,
                                                   to_bf16, top_triplets)
from moai_edge.runtime.experts.verbalize import verbalize_relations
from moai_edge.runtime.samples import sample_image

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
from moai_edge.export.experts import scene_graph as psgtr  # noqa: E402
from moai_edge.bench.reference.scene_graph import reference_scene_graph  # noqa: E402


def assert_same(ours, ref, atol=1e-7):
    labels, dists, pairs = ref
    assert ours.labels == labels.tolist()
    assert ours.rel_pairs.tolist() == pairs.tolist()
    np.testing.assert_allclose(ours.rel_dists, dists, rtol=1e-5, atol=atol)


def test_preprocessing_is_mmdet_rescale_bgr_normalize_pad():
    cfg = SceneGraphConfig()
    img = sample_image(size=490)
    x = preprocess_scene_graph(img, cfg)
    assert scaled_size(490, 490, cfg.scale) == (800, 800) and x.shape == (3, 800, 800)  # MoAI's case: no padding
    resized = cv2.resize(img, (800, 800), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    np.testing.assert_allclose(x[0], (resized[..., 2] - 123.675) / 58.395, atol=1e-5)  # blue first
    np.testing.assert_allclose(x[2], (resized[..., 0] - 103.53) / 57.375, atol=1e-5)
    tall = preprocess_scene_graph(img[:300, :470], cfg)  # 300x470 -> 800 short edge, 1253 long; padded to 32
    assert scaled_size(300, 470, cfg.scale) == (800, 1253) and tall.shape == (3, 800, 1280)
    assert np.all(tall[:, :, 1253:] == 0)
    assert mask_size(300, 470, cfg) == (300, 470)


def test_bf16_rounding_matches_torch():
    x = np.random.default_rng(0).normal(size=10000).astype(np.float32) * 10
    np.testing.assert_array_equal(to_bf16(x), torch.from_numpy(x).to(torch.bfloat16).float().numpy())


def synthetic_heads(seed: int, q: int = 12, classes: int = 133, rels: int = 56, hw=(26, 26)):
    """Logits with confident entities and predicates, repeated triplets, stuff and thing classes, shared masks."""
    rng = np.random.default_rng(seed)
    sub = rng.normal(size=(q, classes + 1)).astype(np.float32)
    obj = rng.normal(size=(q, classes + 1)).astype(np.float32)
    rel = rng.normal(size=(q, rels + 1)).astype(np.float32)
    picks = rng.choice([0, 0, 2, 90, 131, 132], size=(2, q))  # person twice as often; 131 is dropped, 132 is not
    sub[np.arange(q), picks[0]] += rng.uniform(2, 12, q)
    obj[np.arange(q), picks[1]] += rng.uniform(2, 12, q)
    rel[np.arange(q), rng.choice([1, 5, 21], q)] += rng.uniform(0, 12, q)
    masks = rng.normal(scale=4, size=(2, q, *hw)).astype(np.float32)
    for i in range(1, q, 3):  # near-copies: duplicate triplets and overlapping things
        masks[:, i] = masks[:, i - 1] + rng.normal(scale=0.3, size=hw)
        sub[i], obj[i] = sub[i - 1] + 0.01, obj[i - 1]
    return sub, obj, rel, masks[0], masks[1]


@pytest.mark.parametrize("seed", range(8))
def test_post_processing_matches_openpsg(seed):
    heads = synthetic_heads(seed)
    size = (61, 47)  # nearest resize by a non-integer factor
    ref = reference_scene_graph(*(torch.from_numpy(h) for h in heads), size, num_relations=56, max_per_img=100)
    ours = post_process_scene_graph(*heads, size, SceneGraphConfig())
    assert_same(ours, ref)


@pytest.mark.parametrize("seed", range(8, 20))
def test_the_masks_of_the_queries_it_reads_give_the_references_result(seed):
    """The runtime runs the mask heads only on `Triplets.mask_queries()`: from those masks alone, the result the
    reference computes from every query's masks."""
    heads = synthetic_heads(seed, q=100, hw=(20, 24))
    cfg = SceneGraphConfig()
    triplets = top_triplets(*heads[:3], cfg)
    queries = triplets.mask_queries()
    assert 0 < len(queries) < 100
    for size in ((37, 45), (13, 17)):  # the masks enlarged, and shrunk (some grid pixels then count for none)
        ours = scene_graph_of(triplets, heads[3][queries], heads[4][queries], size, cfg)
        assert_same(ours, reference_scene_graph(*(torch.from_numpy(h) for h in heads), size, num_relations=56))


def test_post_processing_empty_case_is_the_references():
    sub, obj, rel, sm, om = synthetic_heads(0)
    rel[:, 0] += 50.0  # "no relation" everywhere: nothing passes r > 0.3
    ref = reference_scene_graph(*(torch.from_numpy(h) for h in (sub, obj, rel, sm, om)), (20, 20), num_relations=56)
    ours = post_process_scene_graph(sub, obj, rel, sm, om, (20, 20), SceneGraphConfig())
    assert_same(ours, ref)
    assert ours.labels == [1] and len(ours.rel_pairs) == 0
    assert relations_of(ours, SceneGraphConfig(labels=["person"], predicates=["on"] * 56)) == []


def test_packaged_scene_graph_equals_torch_and_openpsg(packaged_scene_graph):
    """Image -> graphs on onnxruntime (the mask heads on the queries post-processing reads) -> our post-processing ==
    PyTorch model (the mask heads on every query) -> OpenPSG's post-processing."""
    m, cfg, engine, model = packaged_scene_graph
    recorder = FeedRecorder({"scene_graph_masks"})
    experts = Experts(m, RuntimeOptions(record_feeds=recorder))
    try:
        for seed in range(3):
            img = sample_image(size=490, seed=seed)
            ours = experts.parts["scene_graph"].run([img])[0]
            with torch.no_grad():
                out = model(torch.from_numpy(preprocess_scene_graph(img, cfg))[None])
            heads = dict(zip(psgtr.OUTPUTS, (t[0] for t in out)))
            ref = reference_scene_graph(*(heads[k] for k in HEADS), mask_size(490, 490, cfg), num_relations=56)
            assert_same(ours, ref, atol=1e-4)  # the graph's fp32 noise (onnxruntime vs torch) on the distributions
            assert ours.relations == relations_of(ours, cfg)
        queries_run = [feeds["sub_attention"].shape[1] for feeds in recorder.feeds["scene_graph_masks"]]
        assert len(queries_run) == 3 and 0 < min(queries_run) and max(queries_run) < model.cfg.num_queries, queries_run
    finally:
        experts.close()


def test_a_batch_gives_each_image_its_own_graph(packaged_scene_graph):
    """Two images of one padded shape share a trunk run (rows 0 and 1), a third shape runs apart; the mask heads run
    per image on its own queries: each result equals the image's alone."""
    m, cfg, engine, _ = packaged_scene_graph
    experts = Experts(m, RuntimeOptions())
    try:
        flipped = np.ascontiguousarray(sample_image(size=490, seed=2)[::-1, ::-1])  # other masks than image 0's
        images = [sample_image(size=490, seed=1), flipped, sample_image(size=490, seed=3)[:300]]
        together = experts.parts["scene_graph"].run(images)
        for image, graph in zip(images, together):
            alone = experts.parts["scene_graph"].run([image])[0]
            assert graph.labels == alone.labels and graph.rel_pairs.tolist() == alone.rel_pairs.tolist()
            np.testing.assert_allclose(graph.rel_dists, alone.rel_dists, rtol=1e-4, atol=1e-5)
            assert graph.relations == alone.relations
        assert together[0].relations != together[1].relations  # the rows were not mixed up
    finally:
        experts.close()


def test_relation_sentence_from_the_tiny_package(packaged_scene_graph):
    """The tiny checkpoint yields enough triplets for MoAI's sentence; its words come from the package's lists."""
    m, cfg, engine, _ = packaged_scene_graph
    experts = Experts(m, RuntimeOptions())
    try:
        graph = experts.parts["scene_graph"].run([sample_image(size=490, seed=1)])[0]
    finally:
        experts.close()
    assert 0 < len(graph.relations) <= 10
    text = verbalize_relations(graph.relations)
    assert text.startswith("The image includes relationships between objects: ") and text.endswith(".")
    assert all(p in cfg.predicates for _, p, _ in graph.relations)
