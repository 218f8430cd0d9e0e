"""The KV cache: per layer a K and a V buffer of (rows, kv_heads, max_len, head_dim), allocated once.

The decode graph (export.gqa_decode) reads a buffer as its past and writes the new token's key and value into the
same buffer at the row's own length, so a step copies nothing. Row r's real tokens fill slots [0, lengths[r]);
slots after that may hold the prefill's padding, which no step attends to and the next tokens overwrite.

With `place` (the decode engine's `device_array`), the buffers are bound where the engine runs once the prefill has
filled them: on a GPU they stay in device memory (a step moves the new token in and the logits out), on the CPU they
are OrtValues over the same host memory. Without it they are bound as numpy arrays.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from moai_edge.engines.errors import InputError


class KVCache:
    def __init__(self, *, num_layers: int, rows: int, kv_heads: int, head_dim: int, max_len: int, dtype: np.dtype,
                 place: Callable | None = None):
        shape = (rows, kv_heads, max_len, head_dim)
        self.keys = [np.zeros(shape, dtype) for _ in range(num_layers)]
        self.values = [np.zeros(shape, dtype) for _ in range(num_layers)]
        self.lengths = np.zeros(rows, np.int64)
        self.place = place
        self.bound_keys: list = []  # the buffers where the engine runs, once placed
        self.bound_values: list = []

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.keys + self.values)

    def fill(self, outputs: dict[str, np.ndarray], lengths: np.ndarray) -> None:
        """The prefill's `key.{i}` / `value.{i}` (seq, rows, kv, hd) into slots [0, seq); `lengths` (rows,): each row's
        real tokens among them."""
        n = outputs["key.0"].shape[0]
        if n > self.max_len:
            raise InputError(f"KV cache full: {n} prompt positions exceed the allocated {self.max_len}")
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            k[:, :, :n] = outputs[f"key.{i}"].transpose(1, 2, 0, 3)
            v[:, :, :n] = outputs[f"value.{i}"].transpose(1, 2, 0, 3)
        self.lengths = np.asarray(lengths, np.int64).copy()
        if self.place is not None:  # one copy per answer to a GPU; none on the CPU
            self.bound_keys = [self.place(k) for k in self.keys]
            self.bound_values = [self.place(v) for v in self.values]

    def step_feeds(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The decode graph's KV and length inputs, and the outputs it writes in place (the same buffers)."""
        if int(self.lengths.max(initial=0)) >= self.max_len:
            raise InputError(f"KV cache full: a row holds {int(self.lengths.max())} of {self.max_len} positions")
        feeds = {"seqlens_k": self.lengths.astype(np.int32),
                 "total_sequence_length": np.array(self.lengths.max(initial=0) + 1, np.int32)}
        out = {}
        keys, values = (self.bound_keys, self.bound_values) if self.bound_keys else (self.keys, self.values)
        for i, (k, v) in enumerate(zip(keys, values)):
            feeds[f"past_key.{i}"] = out[f"key.{i}"] = k
            feeds[f"past_value.{i}"] = out[f"value.{i}"] = v
        return feeds, out

    def advance(self) -> None:
        self.lengths += 1

    def select_rows(self, index: np.ndarray) -> None:
        """Keep rows `index` (may repeat rows: beams expand B rows to B*num_beams)."""
        for bufs, bound in ((self.keys, self.bound_keys), (self.values, self.bound_values)):
            for i, b in enumerate(bufs):
                bufs[i] = (bound[i].numpy() if bound else b)[index]  # from a GPU: through the host, per beam step
                if bound:
                    bound[i] = self.place(bufs[i])
        self.lengths = self.lengths[index]
