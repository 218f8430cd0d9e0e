"""Decode's memory roofline: this machine's read bandwidth, and what decode achieves against it.

Decoding one token reads every weight of the decode graph once (and the KV cache so far), so at batch 1 its
speed is bounded by memory bandwidth: achieved GB/s = bytes read per token x tokens/s.

A batch of B rows reads the weights once per step but every row's KV cache, so its tokens/s can reach at most
B x bandwidth / (weights + B x KV of one row): where the KV cache is large against the weights (a small model, a
long prompt, int4 weights), batching can gain little whatever the kernels do.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from moai_edge.engines.manifest import Manifest


def read_bandwidth_gbs(*, threads: int = 0, size_mb: int = 512, repeats: int = 5) -> float:
    """Best of `repeats` passes reading a `size_mb` array (larger than any cache), split over `threads` threads
    (0: one per core, as the decoder uses them): bytes read / s. Each thread takes a dot product of its part with a
    vector of ones (BLAS, which releases the GIL and does two flops per 4 bytes: bound by memory, not compute)."""
    threads = threads or os.cpu_count() or 1
    data = np.ones(size_mb * 2**20 // 4, np.float32)
    parts = np.array_split(data, threads)
    ones = np.ones(len(parts[0]), np.float32)  # the first part is the longest
    with ThreadPoolExecutor(threads) as pool:
        def read() -> float:
            t0 = time.perf_counter()
            list(pool.map(lambda p: np.dot(p, ones[:len(p)]), parts))
            return time.perf_counter() - t0

        read()  # touch every page first
        best = min(read() for _ in range(repeats))
    return data.nbytes / best / 1e9


def decode_weight_bytes(manifest: Manifest) -> int:
    """What one decode step reads of the weights, recorded by export (the decode graph's own initializers, not the
    prefill-only ones in the same file); for a package without the record, its files' sizes."""
    recorded = manifest.source.get("decode_weight_bytes")
    if isinstance(recorded, int) and recorded > 0:
        return recorded
    return sum(manifest.path(f).stat().st_size for f in manifest.component_files("decode"))


def kv_bytes_per_token(manifest: Manifest, context: int) -> int:
    """K and V of every layer over `context` positions, float32, one row."""
    d = manifest.model
    return 2 * d.num_layers * d.num_kv_heads * d.head_dim * context * 4


def roofline(manifest: Manifest, *, tokens_per_s: float, context: int, bandwidth_gbs: float) -> dict:
    per_token = decode_weight_bytes(manifest) + kv_bytes_per_token(manifest, context)
    achieved = float(per_token * tokens_per_s / 1e9)
    percent = 100 * achieved / bandwidth_gbs
    return {"bytes_per_token": per_token, "tokens_per_s": float(tokens_per_s), "achieved_gbs": achieved,
            "machine_read_gbs": bandwidth_gbs, "percent_of_bandwidth": percent,
            "measurement_error": bool(percent > 100)}


def batch_ceiling_tokens_per_s(weight_bytes: int, kv_bytes_per_row: int, *, batch: int, bandwidth_gbs: float) -> float:
    """The decode tokens/s a batch of `batch` rows cannot exceed: each step reads the weights once and each row's
    KV cache, at most at the machine's read bandwidth."""
    return batch * bandwidth_gbs * 1e9 / (weight_bytes + batch * kv_bytes_per_row)


def memory_bound_gain(weight_bytes: float, kv_bytes_per_row: float, *, batch: int) -> float:
    """Batch `batch`'s decode tokens/s over batch 1's where both read memory at the same speed."""
    ceiling = lambda b: batch_ceiling_tokens_per_s(weight_bytes, kv_bytes_per_row, batch=b, bandwidth_gbs=1.0)  # noqa: E731
    return ceiling(batch) / ceiling(1)


def batching(manifest: Manifest, *, tokens_per_s: dict[int, float], context: int, bandwidth_gbs: float) -> dict:
    """Per batch size above 1: the measured decode tokens/s over batch 1's (`gain`), and the most it could be
    (`gain_ceiling`: the batch's memory-bound tokens/s over batch 1's measured)."""
    one = tokens_per_s[1]
    weights, kv = decode_weight_bytes(manifest), kv_bytes_per_token(manifest, context)
    return {str(b): {"gain": t / one, "gain_ceiling": batch_ceiling_tokens_per_s(
                weights, kv, batch=b, bandwidth_gbs=bandwidth_gbs) / one}
            for b, t in tokens_per_s.items() if b > 1}
