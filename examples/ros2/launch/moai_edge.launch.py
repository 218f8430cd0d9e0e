"""ros2 launch moai_edge_ros moai_edge.launch.py engine:=/path/to/pkg question:="What is ahead?" [image_topic:=...]"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

ARGUMENTS = {  # name -> (default, type, help)
    "engine": ("", str, "engine package folder (required)"),
    "question": ("What is in front of the robot?", str, "the question asked about every frame"),
    "image_topic": ("/camera/image_raw", str, "sensor_msgs/Image topic"),
    "max_new_tokens": ("32", int, "answer length in tokens; 0: the package's default"),
    "device": ("cpu", str, "cpu, cuda or tensorrt"),
}


def generate_launch_description():
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=text)
          for name, (default, _, text) in ARGUMENTS.items()),
        Node(
            package="moai_edge_ros",
            executable="moai_edge_node",
            name="moai_edge",
            output="screen",
            parameters=[{name: ParameterValue(LaunchConfiguration(name), value_type=kind)
                         for name, (_, kind, _) in ARGUMENTS.items()}],
        ),
    ])
