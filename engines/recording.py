"""Recording the feeds a package's graphs run on: observation as a feature of the engines (as Polygraphy's runners
save their inputs), for int8 calibration and debugging, never by swapping a caller's engines.

    recorder = FeedRecorder({"vision", "panoptic"})
    with Pipeline.load(package, RuntimeOptions(record_feeds=recorder)) as pipe:
        pipe.observe(images)
    recorder.feeds["vision"]   # a copy of every feed the vision graph ran on, in order
"""

from __future__ import annotations

import threading
from typing import Iterable

import numpy as np

from .protocol import Engine, TensorSpec


class FeedRecorder:
    """Keeps a copy of every feed the engines of `components` (None: all) run on, by component."""

    def __init__(self, components: Iterable[str] | None = None):
        self.components = None if components is None else set(components)
        self.feeds: dict[str, list[dict[str, np.ndarray]]] = {}
        self.lock = threading.Lock()  # concurrent experts record from their own threads

    def tap(self, engine: Engine, component: str) -> Engine:
        """`engine`, recording its feeds when `component` is one this recorder keeps."""
        if self.components is not None and component not in self.components:
            return engine
        return RecordingEngine(engine, component, self)

    def keep(self, component: str, feeds: dict[str, np.ndarray]) -> None:
        copied = {k: np.array(v) for k, v in feeds.items()}
        with self.lock:
            self.feeds.setdefault(component, []).append(copied)


class RecordingEngine:
    """An engine that hands a copy of every feed to its recorder before running on it."""

    def __init__(self, engine: Engine, component: str, recorder: FeedRecorder):
        self.engine, self.component, self.recorder = engine, component, recorder
        self.name = engine.name

    def inputs(self) -> list[TensorSpec]:
        return self.engine.inputs()

    def outputs(self) -> list[TensorSpec]:
        return self.engine.outputs()

    def run(self, feeds: dict[str, np.ndarray], out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        self.recorder.keep(self.component, feeds)
        return self.engine.run(feeds, out)

    def metadata(self) -> dict[str, str]:
        return self.engine.metadata()

    def synchronize(self) -> None:
        sync = getattr(self.engine, "synchronize", None)
        if sync is not None:
            sync()

    def close(self) -> None:
        self.engine.close()
