"""Prefill and decode as branches of one decoder graph: one engine serves both and lives while either is open."""

from __future__ import annotations

import numpy as np
import pytest

from moai_edge.engines.errors import EngineError, InputError
from moai_edge.engines.manifest import load_manifest
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.registry import open_engine

OPTIONS = RuntimeOptions(threads=1)


def decode_feeds(m, past: int = 3, max_len: int = 6) -> dict[str, np.ndarray]:
    d = m.model
    feeds = {"inputs_embeds": np.ones((1, 1, d.hidden_size), np.float32), "seqlens_k": np.array([past], np.int32),
             "total_sequence_length": np.array(past + 1, np.int32)}
    for i in range(d.num_layers):
        for kind in ("key", "value"):
            feeds[f"past_{kind}.{i}"] = np.full((1, d.num_kv_heads, max_len, d.head_dim), 0.1, np.float32)
    return feeds


def test_prefill_and_decode_share_one_engine_until_both_close(tiny_packages):
    m = load_manifest(tiny_packages["moai"])
    assert m.component("prefill").file == m.component("decode").file == "decoder.onnx"
    prefill, decode = open_engine(m, "prefill", OPTIONS), open_engine(m, "decode", OPTIONS)
    assert prefill.engine is decode.engine
    inner = decode.engine
    assert {s.name for s in decode.inputs()} == set(decode_feeds(m))  # the branch's own inputs, not the graph's
    prefill.close()
    feeds = decode_feeds(m, past=3)
    buffer = feeds["past_key.0"]
    out = decode.run(feeds, out={"key.0": buffer})  # the other branch still runs, writing the KV buffer in place
    assert out["logits"].shape == (1, m.model.vocab_size) and out["key.0"] is buffer
    written = np.any(buffer != np.float32(0.1), axis=(0, 1, 3))
    assert written.tolist() == [False, False, False, True, False, False]  # only slot 3, the new token's
    decode.close()
    assert inner.session is None  # the last branch closed the engine
    with pytest.raises(EngineError, match="closed"):
        decode.run(decode_feeds(m))
    again = open_engine(m, "decode", OPTIONS)  # a new engine after the last one closed
    assert again.engine is not inner
    again.close()


def test_a_branch_checks_its_own_inputs(tiny_packages):
    m = load_manifest(tiny_packages["moai"])
    with open_engine(m, "decode", OPTIONS) as decode:
        feeds = decode_feeds(m)
        feeds["im_mask"] = np.zeros((1, 1), bool)  # the prefill branch's input
        with pytest.raises(InputError, match="unexpected \\['im_mask'\\]"):
            decode.run(feeds)
