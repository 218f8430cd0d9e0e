"""Decode's memory roofline: this machine's copy bandwidth, and what decode achieves against it.

Decoding one token reads every decoder weight once (and the KV cache so far), so at batch 1 its
speed is bounded by memory bandwidth: achieved GB/s = bytes read per token x tokens/s.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from moai_edge.engines.manifest import Manifest


def copy_bandwidth_gbs(*, threads: int = 0, size_mb: int = 512, repeats: int = 5) -> float:
    """Best of `repeats` copies of a `size_mb` array (larger than any cache), split over `threads` threads
    (0: one per core, as the decoder uses them), counted as STREAM does: (read + write bytes) / s."""
    threads = threads or os.cpu_count() or 1
    src = np.ones(size_mb * 2**20 // 8)
    dst = np.empty_like(src)
    parts = list(zip(np.array_split(dst, threads), np.array_split(src, threads)))
    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL while it copies
        def copy() -> float:
            t0 = time.perf_counter()
            list(pool.map(lambda p: np.copyto(*p), parts))
            return time.perf_counter() - t0

        copy()  # touch every page first
        best = min(copy() for _ in range(repeats))
    return 2 * src.nbytes / best / 1e9


def decode_weight_bytes(manifest: Manifest) -> int:
    """What one decode step reads: the decode graph file and its weights (shared with prefill or its own)."""
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
            "machine_copy_gbs": bandwidth_gbs, "percent_of_bandwidth": percent,
            "measurement_error": bool(percent > 100)}
