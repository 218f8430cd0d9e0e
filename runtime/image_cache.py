"""What an image gives every question about it, kept by the image's content: the vision features, and the experts'
results with the family's inputs made from them (the verbalized text, crayon maps, colour map).

A second question about the same image then runs only the backbone. Keyed by a hash of the decoded, resized
pixels (what the tower and the experts see), so a path, bytes or an array of the same picture hit alike.
Bounded by bytes: the least recently used entries leave first. Off by default (`RuntimeOptions.image_cache_mb`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, fields

import numpy as np

from .experts.runner import ExpertResults
from .families import AuxInputs


def image_key(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).data).hexdigest() + str(pixels.shape)


@dataclass
class Seen:
    features: np.ndarray  # (N, H) the vision tower's output for this image
    results: ExpertResults | None = None  # None until the experts ran on it
    aux: AuxInputs | None = None

    def nbytes(self) -> int:
        arrays = [self.features] + [getattr(self.aux, f.name) for f in fields(AuxInputs)] if self.aux else [self.features]
        size = sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))
        if self.results is not None:
            size += self.results.panoptic.segmentation.nbytes + 4096  # the lists around it: a few KB
        return size


class ImageCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, Seen] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0
        self.lock = threading.Lock()

    def get(self, key: str, *, need_experts: bool) -> Seen | None:
        with self.lock:
            entry = self.entries.get(key)
            if entry is None or (need_experts and entry.results is None):
                self.misses += 1
                return None
            self.entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, entry: Seen) -> None:
        size = entry.nbytes()
        with self.lock:
            old = self.entries.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes()
            if size > self.max_bytes:
                return
            self.entries[key] = entry
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, dropped = self.entries.popitem(last=False)
                self.bytes -= dropped.nbytes()
