"""moai-edge on ROS 2: camera frames in, answers and the experts' structured results out.

conversion  sensor_msgs/Image -> RGB array, FrameResult -> topic payloads (numpy only)
bridge      the node's logic without ROS (settings, submit, what to publish)
node        the rclpy node and its entry point
"""
