"""The ROS 2 node: camera frames in, answers and the experts' results out (the only module that imports rclpy).

    ros2 run moai_edge_ros moai_edge_node --ros-args -p engine:=/path/to/pkg/moai -p question:="What is ahead?"

Subscribes   <image_topic> (sensor_msgs/Image, default /camera/image_raw): KEEP_LAST, depth 1, BEST_EFFORT
Publishes    ~/answer  (std_msgs/String): the answer about the newest frame
             ~/experts (std_msgs/String): JSON: frame ids, the image header, experts, verbalized text, timings,
                                          latencies, or the error of a frame that failed (conversion.results_json)

The pipeline runs on LatestFrameRunner's worker thread, not in the executor: the subscription callback only
converts the image and hands it over, so the node keeps taking frames while the model works, and a frame that
arrives while it is busy replaces the one waiting.
"""

from __future__ import annotations

from dataclasses import fields

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from moai_edge.engines.errors import MoaiEdgeError
from moai_edge.engines.options import RuntimeOptions
from moai_edge.runtime import LatestFrameRunner, Pipeline

from .bridge import ANSWER, EXPERTS, Bridge, Settings

# Only the newest frame matters (the runner drops the older ones anyway), so the middleware keeps one: a slow
# node never works through a backlog of stale frames. BEST_EFFORT because camera drivers publish with the sensor
# data profile (BEST_EFFORT): a RELIABLE subscription would not match them at all, while a BEST_EFFORT one matches
# both kinds of publisher. A frame lost in transit costs nothing: the next one is a few ms behind.
IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                       durability=DurabilityPolicy.VOLATILE)
# Answers are small and rare next to frames, and each one counts: RELIABLE, the default depth of 10.
RESULT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)

HELP = {
    "engine": "engine package folder (required)",
    "question": "the question asked about every frame",
    "max_new_tokens": "answer length in tokens; 0: the package's generation default",
    "threads": "intra-op threads per engine; 0: the backend's default",
    "device": "cpu, cuda or tensorrt (moai-edge extras gpu / trt)",
    "image_topic": "sensor_msgs/Image topic to answer about",
    "stats_period_s": "seconds between stats lines in the log (a float); 0: none",
}


class MoaiEdgeNode(Node):
    def __init__(self, *, name: str = "moai_edge", parameter_overrides: list[Parameter] | None = None):
        super().__init__(name, parameter_overrides=parameter_overrides)
        self.closed = False
        self.settings = s = self.read_settings()
        self.outputs = {topic: self.create_publisher(String, f"~/{topic}", RESULT_QOS) for topic in (ANSWER, EXPERTS)}
        self.bridge = Bridge(self.publish, question=s.question, warn=self.warn)
        self.pipeline = Pipeline.load(s.engine, RuntimeOptions(device=s.device, threads=s.threads))
        self.runner = LatestFrameRunner(self.pipeline, question=s.question, max_new_tokens=s.max_new_tokens or None,
                                        on_result=self.bridge.on_result, on_error=self.bridge.on_error)
        self.bridge.attach(self.runner)
        self.create_subscription(Image, s.image_topic, self.bridge.on_image, IMAGE_QOS)
        if s.stats_period_s > 0:
            self.create_timer(s.stats_period_s, self.log_stats)
        self.get_logger().info(f"{self.pipeline.manifest.family} package {s.engine} on {s.device}: answering "
                               f"{s.question!r} about {s.image_topic}")

    def read_settings(self) -> Settings:
        """Declare every parameter (read-only: restart the node to change one) and check them."""
        values = {}
        for f in fields(Settings):
            default = "" if f.name == "engine" else f.default
            descriptor = ParameterDescriptor(description=HELP[f.name], read_only=True)
            values[f.name] = self.declare_parameter(f.name, default, descriptor).value
        return Settings(**values)

    def publish(self, topic: str, text: str) -> None:  # on the runner's worker thread
        self.outputs[topic].publish(String(data=text))

    def warn(self, text: str) -> None:
        self.get_logger().warning(text, throttle_duration_sec=2.0)  # a broken camera must not flood the log

    def log_stats(self) -> None:
        self.get_logger().info(self.bridge.stats_line())

    def destroy_node(self):
        """Stop the runner (a frame in flight is finished and published; those waiting are dropped), then free
        the engines, then the ROS side."""
        if not self.closed:
            self.closed = True
            self.runner.close(drain=False)
            self.pipeline.close()
            self.get_logger().info(self.bridge.stats_line())
        return super().destroy_node()


def main(args=None) -> int:
    rclpy.init(args=args)
    try:
        node = MoaiEdgeNode()
    except (ValueError, ParameterException, MoaiEdgeError) as exc:  # bad parameters or package: a message, no traceback
        rclpy.logging.get_logger("moai_edge").fatal(str(exc))
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
