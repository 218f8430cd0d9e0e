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


def host_copy(value) -> np.ndarray:
    """A numpy copy of a feed or an output, whether an array or a device-bound one (engines.device_arrays)."""
    return np.array(value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else value)


class FeedRecorder:
    """Keeps a copy of every feed the engines of `components` (None: all) run on, by component; with `outputs`, also
    of what each run returned (`outputs[component][k]` beside `feeds[component][k]`), up to `max_runs` per component
    (None: all)."""

    def __init__(self, components: Iterable[str] | None = None, *, outputs: bool = False, max_runs: int | None = None):
        self.components = None if components is None else set(components)
        self.keep_outputs, self.max_runs = outputs, max_runs
        self.feeds: dict[str, list[dict[str, np.ndarray]]] = {}
        self.outputs: dict[str, list[dict[str, np.ndarray]]] = {}
        self.lock = threading.Lock()  # concurrent experts record from their own threads

    def tap(self, engine: Engine, component: str) -> Engine:
        """`engine`, recording its feeds when `component` is one this recorder keeps."""
        if self.components is not None and component not in self.components:
            return engine
        return RecordingEngine(engine, component, self)

    def wants(self, component: str) -> bool:
        """Whether the next run of `component` is still to be recorded."""
        with self.lock:
            return self.max_runs is None or len(self.feeds.get(component, [])) < self.max_runs

    def keep(self, component: str, feeds: dict[str, np.ndarray]) -> int:
        """Records a run's feeds; returns its index among the component's runs."""
        copied = {k: host_copy(v) for k, v in feeds.items()}
        with self.lock:
            runs = self.feeds.setdefault(component, [])
            runs.append(copied)
            return len(runs) - 1

    def keep_output(self, component: str, index: int, outputs: dict[str, np.ndarray]) -> None:
        copied = {k: host_copy(v) for k, v in outputs.items()}
        with self.lock:
            runs = self.outputs.setdefault(component, [])
            runs.extend([{}] * (index + 1 - len(runs)))
            runs[index] = copied


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
        if not self.recorder.wants(self.component):
            return self.engine.run(feeds, out)
        index = self.recorder.keep(self.component, feeds)
        result = self.engine.run(feeds, out)
        if self.recorder.keep_outputs:
            self.recorder.keep_output(self.component, index, result)
        return result

    def __getattr__(self, name: str):
        """What the wrapped engine offers beyond the protocol (a backend's device binding), unchanged."""
        return getattr(self.engine, name)

    def metadata(self) -> dict[str, str]:
        return self.engine.metadata()

    def synchronize(self) -> None:
        sync = getattr(self.engine, "synchronize", None)
        if sync is not None:
            sync()

    def close(self) -> None:
        self.engine.close()
