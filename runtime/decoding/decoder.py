"""Prefill and decode over the engines, holding the KV cache.

Rows are right-padded in the prefill: a row's real tokens sit at slots [0, length), its padding after them.
Each decode step writes a row's new token at slot `length` (which is also its RoPE position: positions count
only real tokens), so a row gives exactly its batch-1 result. The cache's and the feeds' dtypes are the decode
graph's input dtypes, and it lives where the decode engine runs when the engine can place arrays (on a GPU, in
device memory for the whole answer).
"""

from __future__ import annotations

import numpy as np

from moai_edge.engines.manifest import ModelDims
from moai_edge.engines.protocol import Engine

from .kv_cache import KVCache
from ..limits import check_context


def input_dtypes(engine: Engine) -> dict[str, np.dtype]:
    return {s.name: np.dtype(s.dtype) for s in engine.inputs()}


class DecoderRunner:
    def __init__(self, *, prefill: Engine, decode: Engine, embed_table: np.ndarray, dims: ModelDims):
        self.prefill_engine, self.decode_engine = prefill, decode
        self.embed_table = embed_table
        self.dims = dims
        self.dtypes = input_dtypes(decode)
        self.cache: KVCache | None = None

    def prefill(self, feeds: dict[str, np.ndarray], *, max_new_tokens: int) -> np.ndarray:
        """feeds: the prefill graph's inputs (inputs_embeds, attention_mask, position_ids, im_mask, ...).
        Returns logits (B,V) at each row's last real position and fills the cache."""
        mask = feeds["attention_mask"]
        rows, seq = mask.shape
        d = self.dims
        check_context(seq, max_new_tokens, d.max_context)
        self.cache = KVCache(num_layers=d.num_layers, rows=rows, kv_heads=d.num_kv_heads, head_dim=d.head_dim,
                             max_len=seq + max_new_tokens, dtype=self.dtypes["past_key.0"],
                             place=getattr(self.decode_engine, "device_array", None))
        out = self.prefill_engine.run(feeds)
        self.cache.fill(out, lengths=mask.sum(axis=1))
        return out["logits"]

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """tokens (R,) -> logits (R,V) for the next position; advances the cache one slot."""
        embeds = self.embed_table[np.asarray(tokens, np.int64)][:, None, :]
        kv_feeds, in_place = self.cache.step_feeds()
        feeds = {"inputs_embeds": embeds.astype(self.dtypes["inputs_embeds"], copy=False), **kv_feeds}
        out = self.decode_engine.run(feeds, out=in_place)
        self.cache.advance()
        return out["logits"]

    def select_rows(self, index: np.ndarray) -> None:
        self.cache.select_rows(np.asarray(index, np.int64))
