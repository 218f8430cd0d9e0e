"""Memory: the stage schedule (one expert per core, no more than a budget holds), peak measurement, and freed memory
going back to the system after an answer."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from moai_edge.engines.errors import InputError
from moai_edge.runtime import Pipeline, RuntimeOptions
from moai_edge.runtime.experts.schedule import StageSchedule
from moai_edge.runtime.memory import PeakMeter, release_freed, rss_mb
from moai_edge.runtime.samples import sample_image

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from Linux's /proc")


def test_without_a_budget_at_most_one_stage_per_core():
    schedule = StageSchedule(cores=2)
    assert schedule.workers(["vision", "panoptic", "detector"], resident_mb=100.0) == 2
    assert StageSchedule(cores=8).workers(["vision", "panoptic"], resident_mb=None) == 2


def test_a_budget_admits_the_largest_stages_that_fit():
    schedule = StageSchedule(cores=4, budget_mb=1000)
    stages = ["vision", "panoptic", "detector", "ocr"]
    assert schedule.workers(stages, resident_mb=500.0) == 1  # nothing measured yet: one at a time
    schedule.peaks_mb.update(vision=100.0, panoptic=300.0, detector=150.0, ocr=20.0)
    assert schedule.workers(stages, resident_mb=500.0) == 2  # 500 + 300 + 150 fits, + 100 does not
    assert schedule.workers(stages, resident_mb=100.0) == 4
    with pytest.warns(RuntimeWarning, match="budget 1000 MB: 800 MB resident plus the largest stage's 300 MB"):
        assert schedule.workers(stages, resident_mb=800.0) == 1


@linux
def test_stages_run_alone_are_measured():
    schedule = StageSchedule(cores=2, budget_mb=10**6)
    gate = schedule.gate(["big"])
    with gate.stage("big"):
        block = np.ones(200 * 2**20 // 8)  # 200 MB, touched
        del block
    assert 190 <= schedule.peaks_mb["big"] <= 260
    with PeakMeter() as meter:
        pass
    assert meter.added_mb is not None and meter.added_mb < 50


@linux
def test_what_a_stage_freed_goes_back_when_it_ends():
    gate = StageSchedule(cores=2).gate(["stage"])
    before = rss_mb()
    with gate.stage("stage"):
        blocks = [np.ones(64 * 1024 // 8) for _ in range(3200)]  # 200 MB of heap (each block under mmap's threshold)
        kept = blocks[::50]  # a few stay, so the heap cannot just shrink from its top
        del blocks
        held = rss_mb()
    after = rss_mb()
    assert held - before > 150 and after - before < 50, (before, held, after)
    del kept


@linux
def test_freed_memory_goes_back():
    assert release_freed()  # glibc


def test_a_bad_budget_is_refused():
    with pytest.raises(InputError, match="memory_budget_mb: expected None .* found 0"):
        RuntimeOptions(memory_budget_mb=0)


@linux
def test_a_pipeline_with_a_budget_measures_its_stages_and_answers_the_same(tiny_packages):
    images = [sample_image(size=160, seed=s) for s in range(2)]
    with Pipeline.load(tiny_packages["moai"], RuntimeOptions(threads=1)) as free:
        expected = [r.tokens for r in free.ask_batch(images, ["What is in the image?"] * 2)]
    with Pipeline.load(tiny_packages["moai"], RuntimeOptions(threads=1, memory_budget_mb=10**6)) as pipe:
        got = [r.tokens for r in pipe.ask_batch(images, ["What is in the image?"] * 2)]
        assert set(pipe.schedule.peaks_mb) == {"vision", "panoptic", "detector", "scene_graph", "ocr"}
        assert all(v >= 0 for v in pipe.schedule.peaks_mb.values())
        assert pipe.schedule.workers(["vision", *pipe.experts.steps()], rss_mb()) == min(5, pipe.schedule.cores)
    assert got == expected
