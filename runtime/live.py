"""The robotics path: batch 1, and the latest camera frame wins.

    with Pipeline.load("pkg/moai") as pipe, LatestFrameRunner(pipe, question="What is ahead?", on_result=act) as live:
        for frame in camera:
            live.submit(frame)      # never blocks: a frame still waiting when a newer one arrives is dropped
    print(live.stats().summary())

One worker thread takes the newest waiting frame, runs the pipeline on it and hands the result to
`on_result`. A robot wants an answer about what is in front of it now, so the queue holds at most
`max_pending` frames and older ones are dropped and counted. Each result reports the inference
latency (the pipeline's own work) and the total latency (from `submit`, so queueing included).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from moai_edge.engines.errors import InputError, MoaiEdgeError

from .pipeline import Pipeline
from .request import Result


@dataclass
class FrameResult:
    frame_id: int  # the order of `submit` calls, from 0
    result: Result | None
    error: str | None
    inference_ms: float  # the pipeline's work on this frame
    total_ms: float  # submit -> result, the wait in the queue included


@dataclass
class LiveStats:
    """Every submitted frame is in exactly one of: processed, failed, dropped, pending, in_flight."""

    submitted: int = 0
    processed: int = 0
    failed: int = 0
    dropped: int = 0
    pending: int = 0
    in_flight: int = 0
    callback_errors: int = 0  # on_result raised (the frame still counts as processed)
    inference_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)

    def percentiles(self, which: str) -> dict[str, float]:
        values = getattr(self, f"{which}_ms")
        if not values:
            return {}
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}

    def summary(self) -> str:
        def fmt(which):
            p = self.percentiles(which)
            return " ".join(f"{k} {v:.0f} ms" for k, v in p.items()) or "-"
        callbacks = f", {self.callback_errors} on_result errors" if self.callback_errors else ""
        return (f"{self.submitted} frames: {self.processed} answered, {self.failed} failed, {self.dropped} dropped"
                f"{callbacks}; inference {fmt('inference')}; total {fmt('total')}")


class LatestFrameRunner:
    def __init__(self, pipeline: Pipeline, *, question: str, max_new_tokens: int | None = None,
                 on_result: Callable[[FrameResult], None] | None = None,
                 on_error: Callable[[int, Exception], None] | None = None, max_pending: int = 1):
        """`on_error(frame_id, exc)` hears of every frame that failed and every exception `on_result` raised;
        neither stops the worker."""
        if max_pending < 1:
            raise InputError(f"max_pending must be >= 1, found {max_pending}")
        self.pipeline, self.question, self.max_new_tokens = pipeline, question, max_new_tokens
        self.on_result, self.on_error = on_result, on_error
        self.pending: deque[tuple[int, float, object]] = deque()
        self.max_pending = max_pending
        self.cond = threading.Condition()
        self.closed = False
        self.counts = LiveStats()
        self.latest: FrameResult | None = None
        self.worker = threading.Thread(target=self.serve, name="latest-frame", daemon=True)
        self.worker.start()

    def submit(self, frame) -> int:
        """Queue a frame (path, bytes, PIL image or HxWx3 uint8 array); returns its id. Never blocks."""
        with self.cond:
            if self.closed:
                raise InputError("submit() after close(): this LatestFrameRunner is closed")
            frame_id = self.counts.submitted
            self.counts.submitted += 1
            if len(self.pending) == self.max_pending:
                self.pending.popleft()
                self.counts.dropped += 1
            self.pending.append((frame_id, time.perf_counter(), frame))
            self.cond.notify()
        return frame_id

    def serve(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.closed:
                    self.cond.wait()
                if not self.pending:
                    return
                frame_id, submitted_at, frame = self.pending.popleft()  # in order; overflow already dropped the oldest
                self.counts.in_flight += 1
            done = self.answer(frame_id, submitted_at, frame)
            self.deliver(done)

    def answer(self, frame_id: int, submitted_at: float, frame) -> FrameResult:
        start = time.perf_counter()
        result, error = None, None
        try:
            result = self.pipeline.ask(frame, self.question, decoding="greedy", max_new_tokens=self.max_new_tokens)
        except Exception as exc:  # noqa: BLE001 - a bad frame is reported; the robot's next frame still gets an answer
            error = f"frame {frame_id}: {exc}" if isinstance(exc, MoaiEdgeError) else \
                f"frame {frame_id}: {type(exc).__name__}: {exc}"
            self.report(frame_id, exc)
        end = time.perf_counter()
        done = FrameResult(frame_id, result, error, (end - start) * 1e3, (end - submitted_at) * 1e3)
        with self.cond:
            self.latest = done
            self.counts.in_flight -= 1
            if error:
                self.counts.failed += 1
            else:
                self.counts.processed += 1
                self.counts.inference_ms.append(done.inference_ms)
                self.counts.total_ms.append(done.total_ms)
        return done

    def deliver(self, done: FrameResult) -> None:
        if self.on_result is None:
            return
        try:
            self.on_result(done)
        except Exception as exc:  # noqa: BLE001 - the caller's callback must not kill the worker
            with self.cond:
                self.counts.callback_errors += 1
            self.report(done.frame_id, exc)

    def report(self, frame_id: int, exc: Exception) -> None:
        if self.on_error is None:
            return
        try:
            self.on_error(frame_id, exc)
        except Exception:  # noqa: BLE001 - nothing further to tell: the failure is already counted
            pass

    def stats(self) -> LiveStats:
        with self.cond:
            c = self.counts
            return LiveStats(c.submitted, c.processed, c.failed, c.dropped, len(self.pending), c.in_flight,
                             c.callback_errors, list(c.inference_ms), list(c.total_ms))

    def close(self, *, drain: bool = True) -> None:
        """Stop taking frames; with `drain`, the frames still pending are answered first, else dropped."""
        with self.cond:
            self.closed = True
            if not drain:
                self.counts.dropped += len(self.pending)
                self.pending.clear()
            self.cond.notify_all()
        self.worker.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
