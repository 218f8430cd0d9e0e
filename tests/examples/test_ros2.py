"""The ROS 2 example (examples/ros2): message conversion and the node's logic without ROS, over a real runner and
pipeline on the tiny MoAI package; the rclpy node itself where rclpy is importable (a ROS 2 install)."""

from __future__ import annotations

import array
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from moai_edge.engines.options import RuntimeOptions
from moai_edge.runtime.live import FrameResult, LatestFrameRunner, LiveStats
from moai_edge.runtime.pipeline import Pipeline
from moai_edge.runtime.request import Result
from moai_edge.runtime.samples import sample_image

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ros2"
if str(EXAMPLE) not in sys.path:  # the example is a colcon package, not installed with moai-edge
    sys.path.insert(0, str(EXAMPLE))

from moai_edge_ros.bridge import ANSWER, EXPERTS, Bridge, Settings, messages_for  # noqa: E402
from moai_edge_ros.conversion import ENCODINGS, header_of, image_from_msg, image_to_rgb, results_json  # noqa: E402

QUESTION = "What is in the image?"
RGB = np.random.default_rng(7).integers(0, 256, (3, 5, 3), dtype=np.uint8)  # odd sizes: a transposition shows
GRAY16 = np.random.default_rng(8).integers(0, 65536, (3, 5), dtype=np.uint16)  # high and low bytes differ


def wire(encoding: str, *, bigendian: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(pixels as a camera driver sends them (H, W, bytes per pixel) uint8, the RGB array they mean)."""
    alpha = np.full(RGB.shape[:2] + (1,), 200, np.uint8)
    gray = RGB[..., 1]
    sent = {
        "rgb8": RGB, "bgr8": RGB[..., ::-1],
        "rgba8": np.concatenate([RGB, alpha], axis=2), "bgra8": np.concatenate([RGB[..., ::-1], alpha], axis=2),
        "mono8": gray[..., None],
        "mono16": GRAY16.astype(">u2" if bigendian else "<u2")[..., None].view(np.uint8),
    }[encoding]
    meant = {"mono8": np.repeat(gray[..., None], 3, axis=2),
             "mono16": np.repeat((GRAY16 >> 8).astype(np.uint8)[..., None], 3, axis=2)}.get(encoding, RGB)
    return np.ascontiguousarray(sent).reshape(RGB.shape[0], RGB.shape[1], -1), meant


def image_msg(pixels: np.ndarray, encoding: str, *, pad: int = 0, bigendian: bool = False, stamp: int = 0,
              data_as=bytes):
    """A sensor_msgs/Image look-alike: rows of `pixels` followed by `pad` junk bytes each."""
    h = pixels.shape[0]
    rows = pixels.reshape(h, -1)
    padded = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    header = SimpleNamespace(stamp=SimpleNamespace(sec=stamp, nanosec=500), frame_id="camera_optical")
    return SimpleNamespace(header=header, height=h, width=pixels.shape[1], encoding=encoding,
                           is_bigendian=int(bigendian), step=padded.shape[1], data=data_as(padded.tobytes()))


# -- conversion ---------------------------------------------------------------------------------------------------

def test_the_tests_cover_every_encoding():
    assert set(ENCODINGS) == {"rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16"}


@pytest.mark.parametrize("pad", [0, 3])  # 3: odd padding, so mono16 rows start unaligned
@pytest.mark.parametrize("encoding, bigendian", [("rgb8", False), ("bgr8", False), ("rgba8", False),
                                                 ("bgra8", False), ("mono8", False), ("mono16", False),
                                                 ("mono16", True)])
def test_every_encoding_becomes_the_rgb_it_means(encoding, bigendian, pad):
    sent, meant = wire(encoding, bigendian=bigendian)
    out = image_from_msg(image_msg(sent, encoding, pad=pad, bigendian=bigendian))
    assert out.dtype == np.uint8 and out.shape == (3, 5, 3)
    np.testing.assert_array_equal(out, meant)
    assert out.flags.c_contiguous and out.flags.writeable and out.flags.owndata


def test_mono16_endianness_is_honoured():
    sent, _ = wire("mono16", bigendian=True)
    wrong = image_from_msg(image_msg(sent, "mono16", bigendian=False))  # the same bytes read little-endian
    right = image_from_msg(image_msg(sent, "mono16", bigendian=True))
    assert not np.array_equal(wrong, right)
    assert right[0, 0, 0] == GRAY16[0, 0] >> 8


@pytest.mark.parametrize("data_as", [bytes, bytearray, lambda b: array.array("B", b), list])
def test_data_as_rclpy_gives_it(data_as):
    """rclpy's uint8[] is an array.array('B'); bytes and plain lists work too."""
    sent, meant = wire("bgr8")
    np.testing.assert_array_equal(image_from_msg(image_msg(sent, "bgr8", pad=2, data_as=data_as)), meant)


def test_the_frame_owns_its_pixels():
    """The runner keeps the frame after the callback returns: a driver reusing the buffer must not change it."""
    msg = image_msg(RGB, "rgb8", data_as=bytearray)
    out = image_from_msg(msg)
    msg.data[:] = b"\x00" * len(msg.data)
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("change, message", [
    (dict(encoding="yuv422"), r"encoding 'yuv422': expected one of rgb8, bgr8"),
    (dict(encoding="16UC1"), r"encoding '16UC1'"),
    (dict(data=b"\x00" * 44), r"rgb8 image 5x3 with step 15: expected step \* height = 45 bytes of data, found 44"),
    (dict(data=b"\x00" * 46), r"expected step \* height = 45 bytes of data, found 46"),
    (dict(step=14, data=b"\x00" * 42), r"rgb8 image 5 pixels wide: expected step >= 15 bytes \(3 per pixel\), "
                                       r"found step 14"),
    (dict(height=0, data=b""), r"rgb8 image of 5x0: expected a positive width and height"),
])
def test_a_message_that_does_not_fit_is_a_value_error_saying_why(change, message):
    fields = dict(height=3, width=5, encoding="rgb8", step=15, data=RGB.tobytes(), is_bigendian=False)
    with pytest.raises(ValueError, match=message):
        image_to_rgb(**{**fields, **change})


def test_header_of():
    msg = image_msg(RGB, "rgb8", stamp=42)
    assert header_of(msg) == {"stamp": {"sec": 42, "nanosec": 500}, "frame_id": "camera_optical"}


# -- payloads and the bridge without a pipeline --------------------------------------------------------------------

def made_up_result(answer="a red circle") -> FrameResult:
    result = Result(id=None, answer=answer, tokens=[5, 6], verbalized="The image has a circle.",
                    experts={"detections": [{"label": "circle", "score": np.float32(0.5), "box": np.arange(4.0)}]},
                    timings_ms={"experts": 3.0, "decode": 2.0})
    return FrameResult(frame_id=7, result=result, error=None, inference_ms=5.25, total_ms=9.5)


def test_results_json_carries_what_the_topic_documents():
    record = json.loads(results_json(made_up_result(), header={"stamp": {"sec": 1, "nanosec": 2}, "frame_id": "c"},
                                     question=QUESTION))
    assert record == {
        "frame_id": 7, "header": {"stamp": {"sec": 1, "nanosec": 2}, "frame_id": "c"}, "question": QUESTION,
        "answer": "a red circle", "error": None, "tokens": [5, 6],
        "experts": {"detections": [{"label": "circle", "score": 0.5, "box": [0.0, 1.0, 2.0, 3.0]}]},
        "verbalized": "The image has a circle.", "timings_ms": {"experts": 3.0, "decode": 2.0},
        "latency_ms": {"inference": 5.25, "total": 9.5}}


def test_a_failed_frame_publishes_its_error_and_no_answer():
    failed = FrameResult(frame_id=3, result=None, error="frame 3: cannot decode", inference_ms=1.0, total_ms=2.0)
    (topic, text), = messages_for(failed, header=None, question=QUESTION)
    assert topic == EXPERTS
    record = json.loads(text)
    assert record["error"] == "frame 3: cannot decode" and record["answer"] is None and record["experts"] is None
    assert [t for t, _ in messages_for(made_up_result(), header=None, question=QUESTION)] == [ANSWER, EXPERTS]


class FakeRunner:
    def __init__(self):
        self.frames = []

    def submit(self, frame) -> int:
        self.frames.append(frame)
        return len(self.frames) - 1

    def stats(self) -> LiveStats:
        return LiveStats(submitted=len(self.frames), processed=1, dropped=len(self.frames) - 1)


def test_the_bridge_submits_converted_frames_and_publishes_each_with_its_image_header():
    published, warnings = [], []
    bridge = Bridge(lambda topic, text: published.append((topic, text)), question=QUESTION, warn=warnings.append,
                    remember=3)
    bridge.attach(runner := FakeRunner())
    ids = [bridge.on_image(image_msg(wire("bgr8")[0], "bgr8", stamp=s)) for s in range(5)]
    assert ids == [0, 1, 2, 3, 4] and len(runner.frames) == 5
    np.testing.assert_array_equal(runner.frames[0], RGB)
    assert sorted(bridge.headers) == [2, 3, 4]  # no more than `remember` waiting headers

    assert bridge.on_image(image_msg(RGB, "yuv422")) is None  # rejected: counted and told, the runner never sees it
    assert bridge.rejected == 1 and len(runner.frames) == 5 and "yuv422" in warnings[0]

    done = made_up_result()
    done.frame_id = 3  # frame 2 was dropped by the runner: its header is forgotten with this answer
    bridge.on_result(done)
    assert [t for t, _ in published] == [ANSWER, EXPERTS] and published[0][1] == "a red circle"
    assert json.loads(published[1][1])["header"]["stamp"]["sec"] == 3
    assert sorted(bridge.headers) == [4] and bridge.published == 1
    assert bridge.stats_line().endswith("; 1 image messages rejected") and "5 frames" in bridge.stats_line()


def test_on_image_before_attach_is_a_clear_error():
    with pytest.raises(RuntimeError, match="attach"):
        Bridge(lambda *a: None, question=QUESTION).on_image(image_msg(RGB, "rgb8"))


def test_settings_check_every_parameter():
    assert Settings(engine="pkg").image_topic == "/camera/image_raw"
    with pytest.raises(ValueError, match="engine: expected the path of an engine package") as info:
        Settings(engine=" ", threads=-1, stats_period_s=-1.0)
    assert "threads: expected >= 0, found -1" in str(info.value) and "stats_period_s" in str(info.value)
    with pytest.raises(ValueError, match="max_new_tokens"):
        Settings(engine="pkg", max_new_tokens=-2)


# -- the bridge over a real runner and pipeline ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline(tiny_packages):
    with Pipeline.load(tiny_packages["moai"], RuntimeOptions(threads=1)) as pipe:
        yield pipe


def test_the_bridge_over_the_latest_frame_runner(pipeline):
    """Camera messages faster than the model: the newest is answered, each answer carries its own image's header,
    the expert results are the pipeline's, and no header of a dropped frame is kept."""
    frame = sample_image(size=160, seed=3)
    expected = pipeline.ask(frame, QUESTION, decoding="greedy", max_new_tokens=4)
    published = []
    bridge = Bridge(lambda topic, text: published.append((topic, text)), question=QUESTION)
    with LatestFrameRunner(pipeline, question=QUESTION, max_new_tokens=4, on_result=bridge.on_result,
                           on_error=bridge.on_error) as runner:
        bridge.attach(runner)
        ids = [bridge.on_image(image_msg(frame[..., ::-1], "bgr8", pad=4, stamp=s)) for s in range(4)]
    stats = runner.stats()
    assert ids == [0, 1, 2, 3] and stats.processed + stats.dropped == 4 and stats.failed == 0
    answers = [text for topic, text in published if topic == ANSWER]
    records = [json.loads(text) for topic, text in published if topic == EXPERTS]
    assert len(answers) == len(records) == stats.processed == bridge.published
    assert records[-1]["frame_id"] == 3  # the newest frame is always answered
    assert answers == [expected.answer] * len(answers)
    for record in records:
        assert record["header"] == {"stamp": {"sec": record["frame_id"], "nanosec": 500}, "frame_id": "camera_optical"}
        assert record["answer"] == expected.answer and record["tokens"] == expected.tokens
        assert record["experts"] == json.loads(json.dumps(expected.experts))
        assert record["verbalized"] == expected.verbalized and record["question"] == QUESTION
        assert record["latency_ms"]["total"] >= record["latency_ms"]["inference"] > 0
        assert set(record["timings_ms"]) == set(expected.timings_ms)
    assert bridge.headers == {}


def test_a_frame_the_pipeline_fails_on_publishes_an_error_record(pipeline):
    published = []
    bridge = Bridge(lambda topic, text: published.append((topic, text)), question=QUESTION)
    with LatestFrameRunner(pipeline, question=QUESTION, max_new_tokens=2, on_result=bridge.on_result) as runner:
        bridge.attach(runner)
        runner.submit(b"not an image")  # past the bridge: a frame only the pipeline can find wrong
    (topic, text), = published
    record = json.loads(text)
    assert topic == EXPERTS and record["answer"] is None and "frame 0" in record["error"]
    assert record["header"] is None


# -- the rclpy node -----------------------------------------------------------------------------------------------

def ros_image(frame: np.ndarray, stamp: int):
    from sensor_msgs.msg import Image

    msg = Image(height=frame.shape[0], width=frame.shape[1], encoding="bgr8", is_bigendian=0,
                step=frame.shape[1] * 3, data=np.ascontiguousarray(frame[..., ::-1]).tobytes())
    msg.header.stamp.sec, msg.header.frame_id = stamp, "test_camera"
    return msg


def test_the_node_answers_a_published_image(tiny_packages, pipeline):
    rclpy = pytest.importorskip("rclpy", reason="rclpy comes with a ROS 2 install (source /opt/ros/<distro>/"
                                                "setup.bash), not from pip")
    pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs comes with a ROS 2 install")
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from moai_edge_ros.node import IMAGE_QOS, RESULT_QOS, MoaiEdgeNode

    frame = sample_image(size=160, seed=5)
    expected = pipeline.ask(frame, QUESTION, decoding="greedy", max_new_tokens=4).answer
    overrides = [Parameter("engine", value=str(tiny_packages["moai"])), Parameter("question", value=QUESTION),
                 Parameter("max_new_tokens", value=4), Parameter("threads", value=1),
                 Parameter("image_topic", value="/test_camera/image_raw"), Parameter("stats_period_s", value=0.0)]
    rclpy.init()
    try:
        with pytest.raises(ValueError, match="engine"):
            MoaiEdgeNode(name="moai_edge_unset")  # no engine parameter
        node = MoaiEdgeNode(parameter_overrides=overrides)
        peer = rclpy.create_node("test_camera_peer")
        camera = peer.create_publisher(Image, "/test_camera/image_raw", IMAGE_QOS)
        answers, records = [], []
        peer.create_subscription(String, "/moai_edge/answer", lambda m: answers.append(m.data), RESULT_QOS)
        peer.create_subscription(String, "/moai_edge/experts", lambda m: records.append(json.loads(m.data)),
                                 RESULT_QOS)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.add_node(peer)
        sent, last, deadline = 0, 0.0, time.monotonic() + 300
        while not (answers and records) and time.monotonic() < deadline:
            if time.monotonic() - last > 0.5:  # until discovery has matched the two: frames before that are lost
                camera.publish(ros_image(frame, stamp=sent))
                sent, last = sent + 1, time.monotonic()
            executor.spin_once(timeout_sec=0.05)
        assert answers, f"no answer on /moai_edge/answer after {sent} frames"
        assert answers[0] == expected
        assert records[0]["answer"] == expected and records[0]["error"] is None
        assert records[0]["header"]["frame_id"] == "test_camera" and records[0]["header"]["stamp"]["sec"] < sent
        executor.shutdown()
        node.destroy_node()
        assert node.runner.closed and node.pipeline.closed
        peer.destroy_node()
    finally:
        rclpy.try_shutdown()
