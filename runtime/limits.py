"""Bounds on what a caller may ask for, checked before the first image so a bad value costs nothing.

Each check raises InputError naming the option, the allowed range and the value found.
"""

from __future__ import annotations

from moai_edge.engines.errors import ContextError, InputError
from moai_edge.engines.manifest import ModelDims

MAX_BATCH_SIZE = 1024


def check_range(option: str, value, low: int, high: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"{option}: expected an integer from {low} to {high}{note}, found {value!r}")


def check_batch_size(batch_size: int) -> None:
    check_range("batch_size", batch_size, 1, MAX_BATCH_SIZE)


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes, or None where there is none."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def kv_cache_bytes(dims: ModelDims, *, rows: int, positions: int, itemsize: int) -> int:
    return 2 * dims.num_layers * rows * positions * dims.num_kv_heads * dims.head_dim * itemsize


def check_generation(dims: ModelDims, *, max_new_tokens: int | None, rows: int, itemsize: int) -> None:
    """`max_new_tokens` must leave room for the smallest prompt (the image tokens and BOS) in the package's
    context, and the KV cache of `rows` full-context rows must fit in the memory available now."""
    if max_new_tokens is None:
        return
    check_new_tokens(dims, max_new_tokens)
    need = kv_cache_bytes(dims, rows=rows, positions=dims.max_context, itemsize=itemsize)
    free = available_memory()
    if free is not None and need > free:
        raise InputError(f"a KV cache of {rows} rows x {dims.max_context} positions needs {need / 2**30:.1f} GiB, "
                         f"{free / 2**30:.1f} GiB of memory is available: lower the batch size")


def check_new_tokens(dims: ModelDims, max_new_tokens: int) -> None:
    """Room for `max_new_tokens` after the smallest prompt (the image tokens and BOS) in the package's context."""
    room = dims.max_context - dims.num_image_tokens - 1
    check_range("max_new_tokens", max_new_tokens, 1, room,
                f" (the package's context is {dims.max_context} tokens, {dims.num_image_tokens + 1} of them "
                f"taken by the image and BOS at least)")


def check_context(prompt_len: int, max_new_tokens: int, max_context: int) -> None:
    if prompt_len + max_new_tokens > max_context:
        raise ContextError(f"a prompt of {prompt_len} tokens (image tokens included) + {max_new_tokens} new tokens "
                         f"exceeds the package's context of {max_context} tokens: ask for at most "
                         f"{max(0, max_context - prompt_len)} new tokens")
