"""Calibration data for static (QDQ) int8: each graph's real inputs on training-split world images.

The float32 package runs its own preprocessing and experts on the images, with its engines wrapped to keep every
feed they run on; so each graph is calibrated on exactly what the runtime gives it, with no second copy of any
preprocessing. The world's held-out seeds (what `moai-edge eval` and export's precision check score) are not used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moai_edge.engines.options import RuntimeOptions
from moai_edge.runtime.pipeline import Pipeline
from moai_edge.runtime.timer import Timer

CALIBRATION_IMAGES = 16


class RecordingEngine:
    """An engine that keeps a copy of every feed it runs on."""

    def __init__(self, engine):
        self.engine, self.feeds = engine, []

    def run(self, feeds, out=None):
        self.feeds.append({k: np.array(v) for k, v in feeds.items()})
        return self.engine.run(feeds, out)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def calibration_feeds(package: Path, components: set[str], *, images: int = CALIBRATION_IMAGES) -> dict[str, list[dict]]:
    """{component: [feeds, ...]} for those of `components` among the vision tower and the experts."""
    from .world import HELD_OUT_SEED_START, generate

    with Pipeline.load(package, RuntimeOptions(concurrent=False)) as pipe:
        recorders = {}
        if "vision" in components:
            pipe.vision.engine = recorders["vision"] = RecordingEngine(pipe.vision.engine)
        for expert, section in pipe.manifest.experts.items():
            for key, attribute in (("component", expert), ("masks", f"{expert}_masks")):  # the engines' attributes
                if section.get(key) in components and getattr(pipe.experts, attribute, None) is not None:
                    recorder = RecordingEngine(getattr(pipe.experts, attribute))
                    setattr(pipe.experts, attribute, recorder)
                    recorders[section[key]] = recorder
        for seed in range(HELD_OUT_SEED_START - images, HELD_OUT_SEED_START):
            pipe.see([pipe.expert_input(generate(seed).image)], [pipe.experts is not None], Timer())
    return {name: r.feeds for name, r in recorders.items()}
