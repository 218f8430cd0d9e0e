"""The decoder runner takes its dtypes from the engines' specs: an fp16-IO decode graph runs unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from moai_edge.runtime import DecodingConfig, Pipeline, RuntimeOptions
from moai_edge.runtime.samples import sample_image

QUESTION = "What is in the image?"


def test_an_fp16_io_decode_graph_runs_through_the_same_path(tiny_packages, tiny_fp16_io_package):
    cfg = DecodingConfig(strategy="greedy", max_new_tokens=10, eos_token_ids=())
    images = [sample_image(size=150, seed=s) for s in range(3)]
    results = {}
    for name, pkg in (("fp32", tiny_packages["moai"]), ("fp16", tiny_fp16_io_package)):
        with Pipeline.load(pkg, RuntimeOptions(threads=1)) as pipe:
            specs = {s.name: s.dtype for s in pipe.backbone.engines["decode"].inputs()}
            assert specs["inputs_embeds"] == specs["past_key.0"] == name.replace("fp", "float")  # really fp16-IO
            results[name] = pipe.ask_batch(images, [QUESTION] * 3, decoding=cfg)
    for a, b in zip(results["fp32"], results["fp16"]):
        assert b.tokens == a.tokens  # export validated fp16 rounding keeps the greedy tokens on these weights
        # the KV cache is allocated in the decode graph's dtype: the prompt+10 positions take half the bytes
        assert b.kv_cache_bytes * 2 == a.kv_cache_bytes
    assert len({tuple(r.tokens) for r in results["fp16"]}) > 1


def test_kv_cache_dtype_comes_from_the_spec():
    from moai_edge.runtime.decoding.kv_cache import KVCache

    cache = KVCache(num_layers=2, rows=1, kv_heads=2, head_dim=4, max_len=5, dtype=np.dtype("float16"))
    cache.fill({f"{k}.{i}": np.ones((2, 1, 2, 4), np.float32) for i in range(2) for k in ("key", "value")}, [2])
    feeds, out = cache.step_feeds()
    assert feeds["past_key.0"].dtype == np.float16 and feeds["past_key.0"] is out["key.0"]  # one buffer, in place
    assert feeds["seqlens_k"].tolist() == [2] and int(feeds["total_sequence_length"]) == 3


def prefill_feeds(engine, table: np.ndarray, lengths: list[int]) -> dict[str, np.ndarray]:
    """Right-padded rows of token 7 with the given real lengths; no image, every family input zero."""
    from moai_edge.bench.speed.backbone_memory import zero_prefill_feeds

    feeds = zero_prefill_feeds(engine, max(lengths), rows=len(lengths))
    feeds["inputs_embeds"][:] = table[7]
    feeds["attention_mask"][:] = np.arange(max(lengths))[None] < np.array(lengths)[:, None]
    return feeds


def test_each_row_writes_its_next_token_at_its_own_length_until_the_cache_is_full(tiny_packages):
    from moai_edge.engines.errors import InputError
    from moai_edge.engines.manifest import load_manifest
    from moai_edge.engines.registry import open_engine
    from moai_edge.runtime.decoding.decoder import DecoderRunner

    m = load_manifest(tiny_packages["moai"])
    options = RuntimeOptions(threads=1)
    with open_engine(m, "prefill", options) as prefill, open_engine(m, "decode", options) as decode:
        table = m.load_array("embedding")
        runner = DecoderRunner(prefill=prefill, decode=decode, embed_table=table, dims=m.model)
        runner.prefill(prefill_feeds(prefill, table, [5, 3]), max_new_tokens=3)
        for step, expected in enumerate(([5, 3], [6, 4], [7, 5])):
            before = [k.copy() for k in runner.cache.keys]
            runner.step(np.array([5, 6]))
            for k, old in zip(runner.cache.keys, before):
                written = [np.nonzero(np.any(k[r] != old[r], axis=(0, 2)))[0].tolist() for r in range(2)]
                assert written == [[s] for s in expected], step  # one slot per row, in place, nothing else
        assert runner.cache.lengths.tolist() == [8, 6] and runner.cache.max_len == 8
        with pytest.raises(InputError, match="KV cache full: a row holds 8 of 8 positions"):
            runner.step(np.array([5, 6]))
