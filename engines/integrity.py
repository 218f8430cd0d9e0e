"""Each package file's sha256 is checked at most once per process, on the bytes that are then used.

A file is read (an ONNX graph with external data: its bytes, handed to the backend) or memory-mapped (arrays,
shared weights: the mapping the arrays are views of; a self-contained ONNX graph, which the backend then opens
by path, and which must still have the stamp it was hashed with once it is open) and hashed there, before
anything uses it. The digest is
kept per (resolved path, inode, size, mtime_ns), so a second open of an unchanged file never hashes
again. A file rewritten in place with the same size within one file-system timestamp tick keeps its
record; a re-export writes new files and is always seen.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import IntegrityError, ManifestError

_lock = threading.Lock()  # held while hashing, so two threads opening one file hash it once
_digests: dict["Stamp", str] = {}


@dataclass(frozen=True)
class Stamp:
    """One version of one file, as `os.fstat` saw it when it was opened."""

    path: str
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, fd: int, path: Path) -> "Stamp":
        st = os.fstat(fd)
        return cls(str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)

    def check_unchanged(self, label: str) -> None:
        """IntegrityError unless the file is still this version (after a backend opened it by path)."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise IntegrityError(f"{label} disappeared while it was loaded: {exc}") from exc
        if (st.st_ino, st.st_size, st.st_mtime_ns) != (self.inode, self.size, self.mtime_ns):
            raise IntegrityError(f"{label} changed while it was loaded (after its sha256 was checked)")


def digest(data) -> str:
    """The sha256 of a buffer: the one place package bytes are hashed."""
    return hashlib.sha256(memoryview(data)).hexdigest()


def check(stamp: Stamp, data, expected: str, label: str) -> None:
    """IntegrityError naming `label` unless `data` (the file as `stamp` saw it) hashes to `expected`."""
    with _lock:
        actual = _digests.get(stamp)
        if actual is None:
            actual = _digests[stamp] = digest(data)
    if actual != expected:
        raise IntegrityError(f"{label} is corrupted: sha256 {actual[:16]}..., manifest expects {expected[:16]}...")


def read_verified(path: Path, expected: str | None, label: str) -> bytes:
    """The file's bytes, checked against `expected` (None: not checked)."""
    try:
        with open(path, "rb") as f:
            stamp = Stamp.of(f.fileno(), path)
            data = f.read()
    except OSError as exc:
        raise ManifestError(f"{label} cannot be read: {exc}") from exc
    if expected is not None:
        check(stamp, data, expected, label)
    return data


def map_verified(path: Path, expected: str | None, label: str) -> tuple[np.ndarray, Stamp]:
    """The file memory-mapped read-only as uint8 (an empty array for an empty file), checked against
    `expected` (None: not checked), and the stamp it was opened with."""
    try:
        with open(path, "rb") as f:
            stamp = Stamp.of(f.fileno(), path)
            mapping = np.memmap(f, dtype=np.uint8, mode="r") if stamp.size else np.zeros(0, np.uint8)
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{label} cannot be memory-mapped: {exc}") from exc
    if expected is not None:
        check(stamp, mapping, expected, label)
    return mapping, stamp


def forget() -> None:
    """Drop every record (tests that measure hashing start from here)."""
    with _lock:
        _digests.clear()
