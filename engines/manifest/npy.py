""".npy components: plain numeric arrays of the declared dtype and shape, never unpickled.

`array_in` builds the array as a view of the (verified) memory map of the whole file, so the bytes
that were hashed are the bytes used.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from ..errors import ManifestError
from .fields import refuse

HEADER_LIMIT = 1 << 16  # numpy reads headers of at most 10000 bytes; the magic and length come before
ZIP_MAGIC = b"PK\x03\x04"


def read_header(f, file: str, where: str) -> tuple[np.dtype, tuple, bool, int]:
    """(dtype, shape, fortran_order, offset of the data) of the .npy file open as `f`."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(f)
        if version not in readers:
            raise ValueError(f"npy format version {version}, expected 1.0 or 2.0")
        shape, fortran, dtype = readers[version](f)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ManifestError(f"manifest field '{where}': expected an .npy array in '{file}', found unreadable "
                            f"content: {exc}") from exc
    return dtype, shape, fortran, f.tell()


def check_npy_file(path: Path, component, where: str) -> None:
    """Reading only the header: a plain array of the declared dtype and shape, with all its bytes present."""
    try:
        with open(path, "rb") as f:
            dtype, shape, _, start = read_header(f, component.file, f"{where}.file")
    except OSError as exc:
        raise ManifestError(f"manifest field '{where}.file': '{component.file}' cannot be read: {exc}") from exc
    check_npy_array(dtype, shape, component, where)
    check_data_size(dtype, shape, path.stat().st_size - start, component.file, where)


def check_data_size(dtype: np.dtype, shape: tuple, data_bytes: int, file: str, where: str) -> None:
    expected = math.prod(shape) * dtype.itemsize
    if data_bytes < expected:
        refuse(f"{where}.file", f"{expected} bytes of array data in '{file}'", f"{data_bytes} (truncated)")


def check_npy_array(dtype: np.dtype, shape: tuple, component, where: str) -> None:
    """A plain numeric array (never pickled objects) of the dtype and shape the component declares."""
    if dtype.hasobject:
        refuse(where, "a plain numeric array (pickled Python objects are refused)",
               f"dtype {dtype} in '{component.file}'")
    if component.outputs:
        spec = component.outputs[0]
        fixed = [a if isinstance(a, int) else None for a in spec.shape]
        if (str(dtype) != spec.dtype or len(shape) != len(fixed)
            or any(a not in (None, b) for a, b in zip(fixed, shape))):
            refuse(where, f"{spec.dtype} {list(spec.shape)} as its outputs declare",
                   f"{dtype} {list(shape)} in '{component.file}'")


def array_in(mapping: np.ndarray, component, where: str) -> np.ndarray:
    """The .npy array held by `mapping` (the whole file as uint8), as a read-only view of it."""
    head = bytes(mapping[:HEADER_LIMIT])
    if head.startswith(ZIP_MAGIC):
        refuse(f"{where}.file", "an .npy array", f"an .npz archive '{component.file}'")
    dtype, shape, fortran, start = read_header(io.BytesIO(head), component.file, f"{where}.file")
    check_npy_array(dtype, shape, component, where)
    check_data_size(dtype, shape, len(mapping) - start, component.file, where)
    count = math.prod(shape)
    data = mapping[start:start + count * dtype.itemsize].view(dtype)
    return data.reshape(shape[::-1]).T if fortran else data.reshape(shape)
