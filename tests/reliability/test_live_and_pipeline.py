"""The robot path survives bad frames and bad callbacks; a closed Pipeline says so."""

from __future__ import annotations

import threading

import pytest

from moai_edge.engines.errors import EngineError
from moai_edge.runtime.live import LatestFrameRunner
from moai_edge.runtime.pipeline import Pipeline
from moai_edge.runtime.samples import sample_image

from .corpus import bad_files

QUESTION = "What is in front of the robot?"


@pytest.fixture(scope="module")
def collavo(tiny_packages):
    with Pipeline.load(tiny_packages["collavo"], threads=1) as pipe:
        yield pipe


def adds_up(s) -> bool:
    return s.submitted == s.processed + s.failed + s.dropped + s.pending + s.in_flight


def test_the_worker_survives_a_raising_callback_and_undecodable_frames(collavo):
    errors, answered = [], []

    def on_result(r):
        answered.append(r.frame_id)
        if r.frame_id == 0:
            raise ValueError("the robot's handler broke")

    frames = [sample_image(size=100, seed=0), bad_files()["bomb.png"], bad_files()["random.jpg"],
              sample_image(size=100)]
    with LatestFrameRunner(collavo, question=QUESTION, max_new_tokens=2, max_pending=8, on_result=on_result,
                           on_error=lambda i, exc: errors.append((i, type(exc).__name__))) as live:
        for f in frames:
            live.submit(f)
    s = live.stats()
    assert answered == [0, 1, 2, 3], "every frame after the failures was still answered"
    assert (s.processed, s.failed, s.callback_errors) == (2, 2, 1) and adds_up(s)
    assert errors == [(0, "ValueError"), (1, "ImageError"), (2, "ImageError")]


class Flaky:
    """A pipeline whose every other call fails with an error that is not moai-edge's own."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, 0

    def ask(self, *args, **kw):
        self.calls += 1
        if self.calls % 2:
            raise RuntimeError("driver hiccup")
        return self.pipe.ask(*args, **kw)


def test_stats_always_add_up_while_frames_flow(collavo):
    seen = []
    stop = threading.Event()
    with LatestFrameRunner(Flaky(collavo), question=QUESTION, max_new_tokens=2, max_pending=2) as live:
        def watch():
            while not stop.is_set():
                seen.append(adds_up(live.stats()))

        watcher = threading.Thread(target=watch)
        watcher.start()
        for seed in range(12):
            live.submit(sample_image(size=90, seed=seed))
    stop.set()
    watcher.join()
    s = live.stats()
    assert all(seen) and len(seen) > 10 and adds_up(s) and s.failed >= 1 and s.processed >= 1
    assert (s.pending, s.in_flight) == (0, 0)


def test_a_closed_pipeline_raises_its_own_error(tiny_packages):
    pipe = Pipeline.load(tiny_packages["collavo"], threads=1)
    pipe.close()
    pipe.close()  # twice is fine
    with pytest.raises(EngineError, match="closed"):
        pipe.ask(sample_image(size=64), QUESTION, max_new_tokens=2)
