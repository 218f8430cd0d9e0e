"""ROS messages <-> what the runtime takes and gives, as plain functions (numpy only: no rclpy here).

In:  a sensor_msgs/Image (height, width, encoding, is_bigendian, step, data) -> an HxWx3 uint8 RGB array,
     the frame `LatestFrameRunner.submit` takes.
Out: a `FrameResult` -> the text of the two std_msgs/String topics:
     ~/answer   the answer alone;
     ~/experts  one JSON object per answered frame (see `results_json`).

Anything with those attributes works as a message (the tests use SimpleNamespace), so nothing here needs ROS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from moai_edge.runtime import FrameResult


@dataclass(frozen=True)
class Encoding:
    channels: int
    bytes_per_channel: int
    to_rgb: Callable[[np.ndarray], np.ndarray]  # (H, W, channels) pixels as sent -> (H, W, 3) RGB


ENCODINGS: dict[str, Encoding] = {}  # sensor_msgs/image_encodings names


def encoding(name: str, channels: int, bytes_per_channel: int = 1):
    def register(to_rgb):
        ENCODINGS[name] = Encoding(channels, bytes_per_channel, to_rgb)
        return to_rgb
    return register


@encoding("rgb8", 3)
def rgb8(px):
    return px


@encoding("bgr8", 3)
def bgr8(px):
    return px[..., ::-1]


@encoding("rgba8", 4)
def rgba8(px):
    return px[..., :3]  # alpha dropped: the model sees an opaque image


@encoding("bgra8", 4)
def bgra8(px):
    return px[..., 2::-1]


@encoding("mono8", 1)
def mono8(px):
    return np.repeat(px, 3, axis=2)


@encoding("mono16", 1, 2)
def mono16(px):
    return np.repeat((px >> 8).astype(np.uint8), 3, axis=2)  # the high byte: 0..65535 -> 0..255, as cv_bridge scales


def image_to_rgb(*, height: int, width: int, encoding: str, step: int, data, is_bigendian: bool = False) -> np.ndarray:
    """The fields of a sensor_msgs/Image -> a new (height, width, 3) uint8 RGB array.

    `step` (bytes per row) may exceed width * pixel size: the row padding is skipped. `is_bigendian` matters for
    mono16 only. The array owns its memory: the runner keeps the frame after the subscription callback returns.
    Raises ValueError naming the encoding and what did not fit.
    """
    spec = ENCODINGS.get(encoding)
    if spec is None:
        raise ValueError(f"image encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if height <= 0 or width <= 0:
        raise ValueError(f"{encoding} image of {width}x{height}: expected a positive width and height")
    pixel = spec.channels * spec.bytes_per_channel
    if step < width * pixel:
        raise ValueError(f"{encoding} image {width} pixels wide: expected step >= {width * pixel} bytes "
                         f"({pixel} per pixel), found step {step}")
    raw = as_bytes(data)
    if raw.nbytes != step * height:
        raise ValueError(f"{encoding} image {width}x{height} with step {step}: expected step * height = "
                         f"{step * height} bytes of data, found {raw.nbytes}")
    dtype = np.dtype(np.uint8) if spec.bytes_per_channel == 1 else np.dtype(">u2" if is_bigendian else "<u2")
    px = np.ndarray((height, width, spec.channels), dtype, buffer=raw,
                    strides=(step, pixel, spec.bytes_per_channel))  # a view that skips each row's padding
    return np.array(spec.to_rgb(px), dtype=np.uint8, order="C")  # a copy, contiguous


def as_bytes(data) -> memoryview:
    """Image.data as rclpy gives it (array.array("B"), bytes, a list of ints) -> a flat byte view, no copy if it can."""
    try:
        return memoryview(data).cast("B")
    except TypeError:  # a list, or a buffer that is not C-contiguous
        return memoryview(np.ascontiguousarray(data, dtype=np.uint8)).cast("B")


def image_from_msg(msg) -> np.ndarray:
    return image_to_rgb(height=msg.height, width=msg.width, encoding=msg.encoding, step=msg.step, data=msg.data,
                        is_bigendian=bool(msg.is_bigendian))


def header_of(msg) -> dict:
    """The image's std_msgs/Header as JSON: echoed with its answer so a consumer can match the two."""
    h = msg.header
    return {"stamp": {"sec": int(h.stamp.sec), "nanosec": int(h.stamp.nanosec)}, "frame_id": str(h.frame_id)}


def answer_text(done: FrameResult) -> str | None:
    """The ~/answer text, or None for a frame that failed (its error goes to ~/experts only)."""
    return None if done.result is None else done.result.answer


def results_json(done: FrameResult, *, header: dict | None = None, question: str | None = None) -> str:
    """The ~/experts text: one JSON object.

    frame_id      the runner's count of frames submitted (from 0): gaps are frames dropped for newer ones
    header        the image's header (stamp, frame_id) or null when unknown
    question      the question asked
    answer        the answer, null if the frame failed; error: why it failed, else null
    tokens        the generated token ids
    experts       the experts' structured results (segments, detections, relations, OCR lines)
    verbalized    the family's display text (MoAI's verbalized experts, CoLLaVO's segment text)
    timings_ms    per-stage timings of the pipeline
    latency_ms    {"inference": the pipeline's work, "total": from submit, the queue included}
    """
    r = done.result
    payload = {
        "frame_id": done.frame_id,
        "header": header,
        "question": question,
        "answer": None if r is None else r.answer,
        "error": done.error,
        "tokens": None if r is None else list(r.tokens),
        "experts": None if r is None else r.experts,
        "verbalized": None if r is None else r.verbalized,
        "timings_ms": None if r is None else r.timings_ms,
        "latency_ms": {"inference": round(done.inference_ms, 3), "total": round(done.total_ms, 3)},
    }
    return json.dumps(payload, default=plain)


def plain(value):
    """numpy scalars and arrays in the experts' results -> JSON's numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
