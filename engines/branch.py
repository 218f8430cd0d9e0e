"""Components that are branches of one graph file: one engine (one session, one weights file) serves them all.

A component with `fixed_feeds` runs the graph in its file with those constant inputs added (they select its
branch, e.g. {"is_prefill": true}); the graph's inputs only the other branches read are fed as empty arrays.
The engine of a file is opened once per process while any branch of it is open, and closed with the last.
"""

from __future__ import annotations

import threading

import numpy as np

from .errors import EngineError
from .protocol import TensorSpec, check_feeds


class SharedEngine:
    """An engine with a count of the branches holding it; the last release closes it."""

    def __init__(self, engine):
        self.engine = engine
        self.holders = 0
        self.lock = threading.Lock()

    def acquire(self):
        with self.lock:
            self.holders += 1
        return self.engine

    def release(self) -> bool:
        """True when this was the last holder (the engine is then closed)."""
        with self.lock:
            self.holders -= 1
            last = self.holders == 0
        if last:
            self.engine.close()
        return last


def empty_feed(spec: TensorSpec) -> np.ndarray:
    """An input no branch of this run reads: fixed axes kept, symbolic ones 0."""
    return np.zeros([d if isinstance(d, int) and d >= 0 else 0 for d in spec.shape], spec.dtype)


class BranchEngine:
    def __init__(self, shared: SharedEngine, *, name: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 fixed_feeds: dict[str, bool], check_inputs: bool, on_close=None):
        self.shared, self.engine = shared, shared.acquire()
        self.name = name
        self._inputs, self._outputs = list(inputs), list(outputs)
        self.check_inputs = check_inputs
        self.on_close = on_close
        own = {s.name for s in inputs}
        self.constant = {k: np.array(v, dtype=bool) for k, v in fixed_feeds.items()}
        self.constant.update({s.name: empty_feed(s) for s in self.engine.inputs()
                              if s.name not in own and s.name not in fixed_feeds})

    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def run(self, feeds: dict[str, np.ndarray], out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        if self.engine is None:
            raise EngineError(f"engine '{self.name}' is closed")
        if self.check_inputs:
            check_feeds(self._inputs, feeds, engine=self.name)
        return self.engine.run({**feeds, **self.constant}, out)

    def metadata(self) -> dict[str, str]:
        return self.engine.metadata()

    @property
    def device_array(self):
        """The file engine's `device_array` (an AttributeError where its backend has none)."""
        return self.engine.device_array

    def synchronize(self) -> None:
        sync = getattr(self.engine, "synchronize", None)  # None when closed, or on a backend without streams
        if sync is not None:
            sync()

    def close(self) -> None:
        if self.engine is None:
            return
        self.engine = None
        if self.shared.release() and self.on_close is not None:
            self.on_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
