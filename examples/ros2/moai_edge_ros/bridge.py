"""The node's logic without ROS: settings from parameters, image messages to the runner, results to topics.

    bridge = Bridge(publish, question="What is ahead?", warn=log.warning)
    runner = LatestFrameRunner(pipeline, question=..., on_result=bridge.on_result, on_error=bridge.on_error)
    bridge.attach(runner)
    bridge.on_image(msg)     # the subscription callback: convert, remember the header, submit (never blocks)

`publish(topic, text)` is the node's: topic is "answer" or "experts" (published as ~/answer, ~/experts).
`on_result` runs on the runner's worker thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .conversion import answer_text, header_of, image_from_msg, results_json

if TYPE_CHECKING:
    from moai_edge.runtime import FrameResult, LatestFrameRunner

ANSWER, EXPERTS = "answer", "experts"


@dataclass(frozen=True)
class Settings:
    """The node's parameters, checked."""
    engine: str  # the engine package folder
    question: str = "What is in front of the robot?"
    max_new_tokens: int = 32  # 0: the package's generation default
    threads: int = 0  # intra-op threads per engine; 0: the backend's default
    device: str = "cpu"  # cpu, cuda or tensorrt (extras gpu / trt)
    image_topic: str = "/camera/image_raw"
    stats_period_s: float = 10.0  # 0: never log the runner's stats

    def __post_init__(self) -> None:
        problems = [
            *([] if self.engine.strip() else ["engine: expected the path of an engine package, found ''"]),
            *([] if self.question.strip() else ["question: expected a question, found ''"]),
            *([] if self.max_new_tokens >= 0 else [f"max_new_tokens: expected >= 0, found {self.max_new_tokens}"]),
            *([] if self.threads >= 0 else [f"threads: expected >= 0, found {self.threads}"]),
            *([] if self.stats_period_s >= 0 else [f"stats_period_s: expected >= 0, found {self.stats_period_s}"]),
        ]
        if problems:
            raise ValueError("; ".join(problems))


def messages_for(done: FrameResult, *, header: dict | None, question: str) -> list[tuple[str, str]]:
    """What one result publishes: (topic, text) pairs. A failed frame publishes no answer, only its error record."""
    answer = answer_text(done)
    record = (EXPERTS, results_json(done, header=header, question=question))
    return [record] if answer is None else [(ANSWER, answer), record]


class Bridge:
    def __init__(self, publish: Callable[[str, str], None], *, question: str,
                 warn: Callable[[str], None] | None = None, remember: int = 64):
        self.publish, self.question = publish, question
        self.warn = warn or (lambda text: None)
        self.remember = remember  # headers kept for frames not answered yet
        self.runner: LatestFrameRunner | None = None
        self.headers: dict[int, dict] = {}  # runner frame id -> the image's header, in submit order
        self.lock = threading.Lock()
        self.rejected = 0  # image messages that could not be converted
        self.published = 0  # results published (answered or failed frames)

    def attach(self, runner: LatestFrameRunner) -> None:
        self.runner = runner

    def on_image(self, msg) -> int | None:
        """Convert and submit; returns the runner's frame id, or None for a message that could not be converted."""
        if self.runner is None:
            raise RuntimeError("Bridge.on_image before attach(runner)")
        try:
            frame = image_from_msg(msg)
        except ValueError as exc:
            self.rejected += 1
            self.warn(f"image message rejected ({self.rejected} so far): {exc}")
            return None
        with self.lock:  # the header is recorded before the worker can look for it
            frame_id = self.runner.submit(frame)
            self.headers[frame_id] = header_of(msg)
            while len(self.headers) > self.remember:
                self.headers.pop(next(iter(self.headers)))
        return frame_id

    def on_result(self, done: FrameResult) -> None:
        for topic, text in messages_for(done, header=self.take_header(done.frame_id), question=self.question):
            self.publish(topic, text)
        self.published += 1

    def take_header(self, frame_id: int) -> dict | None:
        """The header of this frame; those of older frames (dropped, since results come in order) are forgotten."""
        with self.lock:
            while self.headers and next(iter(self.headers)) < frame_id:
                self.headers.pop(next(iter(self.headers)))
            return self.headers.pop(frame_id, None)

    def on_error(self, frame_id: int, exc: Exception) -> None:
        self.warn(f"frame {frame_id}: {type(exc).__name__}: {exc}")

    def stats_line(self) -> str:
        line = self.runner.stats().summary() if self.runner is not None else "no runner"
        return f"{line}; {self.rejected} image messages rejected"
