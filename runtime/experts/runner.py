"""The package's experts run on images: a loop over the registered experts (runtime.experts.registry) the manifest
names, in registry order, each an independent step (concurrent with a pool)."""

from __future__ import annotations

import time
from concurrent.futures import Executor
from contextlib import nullcontext
from functools import partial
from typing import Callable

import numpy as np

from moai_edge.engines.manifest import Manifest
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.registry import open_engine

from .registry import EXPERTS, Expert, ExpertContext
from .results import ExpertResults
from .schedule import StageGate


class Experts:
    """The package's experts, each on its own engines. `threads` / `memory_arena` override the runtime options for
    the expert engines: concurrently run experts get one thread each, and their large activations go back to the
    system after each run instead of staying pooled."""

    def __init__(self, manifest: Manifest, options: RuntimeOptions, *, threads: int | None = None,
                 memory_arena: bool | None = False):
        self.manifest = manifest
        opener = partial(open_engine, manifest, options=options, threads=threads, memory_arena=memory_arena)
        self.parts: dict[str, Expert] = {}
        try:
            for name in (n for n in EXPERTS if n in manifest.experts):
                self.parts[name] = EXPERTS[name](ExpertContext(manifest, manifest.experts[name], opener))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for part in self.parts.values():
            part.close()
        self.parts = {}

    def steps(self) -> dict[str, Callable[[list[np.ndarray]], list]]:
        """Each packaged expert as a function of the images; they are independent and may run concurrently."""
        return {name: part.run for name, part in self.parts.items()}

    def run(self, images: list[np.ndarray], *, pool: Executor | None = None, timings: dict[str, float] | None = None,
            max_batch: int | None = None, gate: StageGate | None = None) -> list[ExpertResults]:
        """images: HxWx3 uint8 RGB arrays (see runtime.images.load_image). With a pool, the experts run concurrently,
        as many at once as `gate` admits. Each expert takes at most `max_batch` images per graph run (None: all)."""
        def in_chunks(fn):
            step = max_batch or len(images)
            return [r for i in range(0, len(images), step) for r in fn(images[i:i + step])]

        def timed(name, fn):
            with gate.stage(name) if gate is not None else nullcontext():
                t0 = time.perf_counter()
                out = in_chunks(fn)
            if timings is not None:
                timings[f"expert_{name}"] = (time.perf_counter() - t0) * 1e3
            return out

        steps = self.steps()
        if pool is None:
            outs = {name: timed(name, fn) for name, fn in steps.items()}
        else:
            futures = {name: pool.submit(timed, name, fn) for name, fn in steps.items()}
            outs = {name: f.result() for name, f in futures.items()}
        return attach_all(outs, self.manifest.experts, len(images))


def attach_all(outs: dict[str, list], sections: dict, count: int) -> list[ExpertResults]:
    """Per image, the results every expert in `outs` ({name: one output per image}) attached."""
    results = [ExpertResults() for _ in range(count)]
    for name, found in outs.items():
        for result, one in zip(results, found):
            EXPERTS[name].attach(result, one, sections[name])
    return results
