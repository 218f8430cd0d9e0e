"""The KV cache: per layer K and V buffers of (max_len, rows, kv_heads, head_dim), allocated once.

Sequence-major so that the filled prefix `buf[:length]` is contiguous and is fed to the decode
graph without a copy; the graph returns only the new token's K/V, written in place.
"""

from __future__ import annotations

import numpy as np

from moai_edge.engines.errors import InputError


class KVCache:
    def __init__(self, *, num_layers: int, rows: int, kv_heads: int, head_dim: int, max_len: int, dtype: np.dtype):
        shape = (max_len, rows, kv_heads, head_dim)
        self.keys = [np.zeros(shape, dtype) for _ in range(num_layers)]
        self.values = [np.zeros(shape, dtype) for _ in range(num_layers)]
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[0]

    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.keys + self.values)

    def append(self, outputs: dict[str, np.ndarray]) -> None:
        """Write `key.{i}` / `value.{i}` (n, rows, kv, hd) of new positions after the filled prefix."""
        n = outputs["key.0"].shape[0]
        if self.length + n > self.max_len:
            raise InputError(f"KV cache full: {self.length} + {n} positions exceed the allocated {self.max_len}")
        end = self.length + n
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            k[self.length:end] = outputs[f"key.{i}"]
            v[self.length:end] = outputs[f"value.{i}"]
        self.length = end

    def feeds(self) -> dict[str, np.ndarray]:
        out = {}
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            out[f"past_key.{i}"] = k[: self.length]
            out[f"past_value.{i}"] = v[: self.length]
        return out

    def select_rows(self, index: np.ndarray) -> None:
        """Keep rows `index` (may repeat rows: beams expand B rows to B*num_beams)."""
        n = self.length
        for bufs in (self.keys, self.values):
            for i, b in enumerate(bufs):
                if len(index) == b.shape[1]:
                    b[:n] = b[:n, index]
                else:
                    new = np.zeros((b.shape[0], len(index), *b.shape[2:]), b.dtype)
                    new[:n] = b[:n, index]
                    bufs[i] = new
