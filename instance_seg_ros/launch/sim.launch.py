"""The simulated RGB-D camera (PyBullet tabletop) and instance_seg_node, on simulated time.

    ros2 launch instance_seg_ros sim.launch.py
    ros2 launch instance_seg_ros sim.launch.py params_file:=/path/to/my.yaml managed:=true

Both nodes run in one namespace (default ``sim``); sim_camera_node publishes ``image``, ``depth`` (32FC1
meters) and ``camera_info`` there, which are the node's own input names, so nothing needs remapping, and
``/clock``, which both use with use_sim_time. Without launch:

    sim_camera_node --ros-args -r __ns:=/sim -p use_sim_time:=true &
    instance_seg_node --ros-args -r __ns:=/sim -p use_sim_time:=true --params-file config/default.yaml
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

TRUE = ("true", "1", "yes", "on")


def _nodes(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context).strip()

    ns = arg("namespace")
    sim_time = arg("use_sim_time").lower() in TRUE
    return [
        Node(
            package="instance_seg_ros",
            executable="sim_camera_node",
            name="sim_camera",
            namespace=ns,
            parameters=[{"use_sim_time": sim_time}],
            output="screen",
        ),
        Node(
            package="instance_seg_ros",
            executable="instance_seg_node",
            name="instance_seg_node",
            namespace=ns,
            parameters=[arg("params_file"), {"use_sim_time": sim_time, "managed": arg("managed").lower() in TRUE}],
            output="screen",
            emulate_tty=True,
        ),
    ]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("instance_seg_ros"), "config", "default.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="sim", description="Namespace of both nodes."),
        DeclareLaunchArgument("params_file", default_value=default_params, description="instance_seg_node parameters."),
        DeclareLaunchArgument("use_sim_time", default_value="true", description="Run both nodes on /clock."),
        DeclareLaunchArgument("managed", default_value="false", description="Managed lifecycle instance_seg_node."),
        OpaqueFunction(function=_nodes),
    ])
