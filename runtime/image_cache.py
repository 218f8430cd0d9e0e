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

import numpy as np

from .observation import Observation


def image_key(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).data).hexdigest() + str(pixels.shape)


class ImageCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, Observation] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0
        self.lock = threading.Lock()

    def get(self, key: str, *, need_experts: bool) -> Observation | None:
        with self.lock:
            entry = self.entries.get(key)
            if entry is None or (need_experts and entry.results is None):
                self.misses += 1
                return None
            self.entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, entry: Observation) -> None:
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
