"""Calibration data for static (QDQ) int8: each graph's real inputs on training-split world images.

The float32 package runs its own preprocessing and experts on the images while the engines record every feed
(engines.recording, through `RuntimeOptions.record_feeds`); so each graph is calibrated on exactly what the runtime
gives it, with no second copy of any preprocessing. The world's held-out seeds (what `moai-edge eval` and export's
precision check score) are not used.
"""

from __future__ import annotations

from pathlib import Path

from moai_edge.engines.recording import FeedRecorder
from moai_edge.runtime import Pipeline, RuntimeOptions

CALIBRATION_IMAGES = 16


def calibration_feeds(package: Path, components: set[str], *,
                      images: int = CALIBRATION_IMAGES) -> dict[str, list[dict]]:
    """{component: [feeds, ...]} for those of `components` among the vision tower and the experts."""
    from .world import HELD_OUT_SEED_START, generate

    recorder = FeedRecorder(components)
    with Pipeline.load(package, RuntimeOptions(concurrent=False, record_feeds=recorder)) as pipe:
        for seed in range(HELD_OUT_SEED_START - images, HELD_OUT_SEED_START):
            pipe.observe([generate(seed).image])
    return {name: recorder.feeds.get(name, []) for name in components}
