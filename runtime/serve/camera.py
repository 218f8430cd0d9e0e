"""The camera WebSocket: the client streams encoded frames (JPEG, PNG, ... as binary messages) and receives, as JSON,
the answer about the newest frame each time one is ready; frames that arrive while the model is busy are dropped
(the latest-frame-wins runner) and counted in every message. A text message {"question": "..."} changes the question
for the frames after it."""

from __future__ import annotations

import asyncio
import json

from ..live import FrameResult, LatestFrameRunner
from ..pipeline import Pipeline
from .errors import RequestRefused
from .metrics import Metrics
from .request_images import check_pixels


def frame_message(done: FrameResult, dropped: int) -> dict:
    head = {"frame_id": done.frame_id, "dropped": dropped}
    if done.result is None:
        return {**head, "error": done.error}
    r = done.result
    return {**head, "answer": r.answer, "experts": {**r.experts, "verbalized": r.verbalized},
            "inference_ms": done.inference_ms, "total_ms": done.total_ms, "timings_ms": r.timings_ms}


async def run_camera(ws, pipeline: Pipeline, *, question: str, max_new_tokens: int | None, max_bytes: int,
                     max_pixels: int, metrics: Metrics) -> None:
    """Until the client disconnects; `ws` is an accepted starlette WebSocket."""
    from starlette.concurrency import run_in_threadpool

    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue[FrameResult] = asyncio.Queue()

    def on_result(done: FrameResult) -> None:
        metrics.frames.labels("answered" if done.result is not None else "failed").inc()
        loop.call_soon_threadsafe(outbox.put_nowait, done)

    runner = LatestFrameRunner(pipeline, question=question, max_new_tokens=max_new_tokens, on_result=on_result)

    async def send_results() -> None:
        while True:
            done = await outbox.get()
            await ws.send_json(frame_message(done, runner.stats().dropped))

    sender = asyncio.create_task(send_results())
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("bytes") is not None:
                refused = refusal(message["bytes"], max_bytes, max_pixels)
                if refused:
                    metrics.frames.labels("refused").inc()
                    await ws.send_json({"error": refused})
                else:
                    runner.submit(message["bytes"])
            else:
                await ws.send_json(change_question(runner, message.get("text")))
    finally:
        sender.cancel()
        await run_in_threadpool(runner.close, drain=False)  # waits for the frame in flight
        metrics.frames.labels("dropped").inc(runner.stats().dropped)


def refusal(frame: bytes, max_bytes: int, max_pixels: int) -> str | None:
    if len(frame) > max_bytes:
        return f"the frame is {len(frame)} bytes, more than this server's limit of {max_bytes}"
    try:
        check_pixels(frame, max_pixels)
    except RequestRefused as exc:
        return str(exc)
    return None


def change_question(runner: LatestFrameRunner, text: str | None) -> dict:
    try:
        question = json.loads(text or "").get("question")
    except (ValueError, AttributeError):
        question = None
    if not isinstance(question, str) or not question.strip():
        return {"error": f'expected a binary frame or a text message {{"question": "..."}}, found {text!r:.80}'}
    runner.question = question
    return {"question": question}
