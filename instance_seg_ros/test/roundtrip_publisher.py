"""Publishes sample_data.sample_result() as an InstanceArray on `instances` twice a second until stopped."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sample_data import FRAME_ID, STAMP_NS, sample_result

from instance_seg_msgs.msg import InstanceArray
from instance_seg_ros.ros.conversions import header, instance_array_msg


def main() -> None:
    rclpy.init()
    node = rclpy.create_node("roundtrip_publisher")
    pub = node.create_publisher(InstanceArray, "instances", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    msg = instance_array_msg(sample_result(), header(FRAME_ID, STAMP_NS))
    node.create_timer(0.5, lambda: pub.publish(msg))
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
