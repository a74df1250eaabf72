"""Launch instance_seg_node for a camera preset.

    ros2 launch instance_seg_ros instance_seg.launch.py camera:=realsense
    ros2 launch instance_seg_ros instance_seg.launch.py camera:=gazebo use_sim_time:=true
    ros2 launch instance_seg_ros instance_seg.launch.py camera:=generic image:=/cam/rgb depth:=/cam/depth \
        camera_info:=/cam/rgb/camera_info params_file:=/path/to/my.yaml managed:=true namespace:=left

Arguments: camera (realsense | gazebo | generic), namespace, params_file (default config/<camera>.yaml,
config/default.yaml for generic), use_sim_time, managed, and image / depth / camera_info to override the
preset's topics. Everything here is also reachable without launch:

    instance_seg_node --ros-args --params-file config/realsense.yaml \
        -r image:=/camera/camera/color/image_raw -r image/compressed:=/camera/camera/color/image_raw/compressed \
        -r depth:=/camera/camera/aligned_depth_to_color/image_raw -r camera_info:=/camera/camera/color/camera_info

With input.compressed:=true in the params file the node subscribes to image/compressed, remapped here to
<image topic>/compressed (image_transport's name).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# camera preset -> the node's inputs (image, depth registered to color, color camera_info)
CAMERAS = {
    "realsense": {
        "image": "/camera/camera/color/image_raw",
        "depth": "/camera/camera/aligned_depth_to_color/image_raw",
        "camera_info": "/camera/camera/color/camera_info",
    },
    "gazebo": {  # ros_gz_bridge of a gz-sim rgbd_camera
        "image": "/camera/image",
        "depth": "/camera/depth_image",
        "camera_info": "/camera/camera_info",
    },
    "generic": {"image": "image", "depth": "depth", "camera_info": "camera_info"},
}
TRUE = ("true", "1", "yes", "on")


def _node(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context).strip()

    camera = arg("camera")
    if camera not in CAMERAS:
        raise RuntimeError(f"camera:={camera} is not a preset; use one of {', '.join(CAMERAS)}.")
    topics = {key: arg(key) or default for key, default in CAMERAS[camera].items()}
    params_file = arg("params_file") or os.path.join(
        get_package_share_directory("instance_seg_ros"), "config",
        "default.yaml" if camera == "generic" else f"{camera}.yaml")
    remappings = [
        ("image", topics["image"]),
        ("image/compressed", topics["image"] + "/compressed"),
        ("depth", topics["depth"]),
        ("camera_info", topics["camera_info"]),
    ]
    return [Node(
        package="instance_seg_ros",
        executable="instance_seg_node",
        name="instance_seg_node",
        namespace=arg("namespace"),
        parameters=[params_file, {"use_sim_time": arg("use_sim_time").lower() in TRUE,
                                  "managed": arg("managed").lower() in TRUE}],
        remappings=remappings,
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("camera", default_value="realsense", choices=list(CAMERAS),
                              description="Topic preset: realsense, gazebo (ros_gz_bridge) or generic."),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node."),
        DeclareLaunchArgument("params_file", default_value="",
                              description="Parameters file; default config/<camera>.yaml (default.yaml for generic)."),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock (simulation, bags)."),
        DeclareLaunchArgument("managed", default_value="false",
                              description="Managed lifecycle node: wait for configure/activate transitions."),
        DeclareLaunchArgument("image", default_value="", description="Color image topic (overrides the preset)."),
        DeclareLaunchArgument("depth", default_value="", description="Registered depth topic (overrides the preset)."),
        DeclareLaunchArgument("camera_info", default_value="",
                              description="Color camera_info topic (overrides the preset)."),
        OpaqueFunction(function=_node),
    ])
