"""The simulated RGB-D camera (PyBullet tabletop) and instance_seg_node, on simulated time.

    ros2 launch instance_seg_ros sim.launch.py
    ros2 launch instance_seg_ros sim.launch.py params_file:=/path/to/my.yaml managed:=true autostart:=true

Both nodes run in one namespace (default ``sim``); sim_camera_node publishes ``image``, ``depth`` (32FC1
meters) and ``camera_info`` there, which are the node's own input names, so nothing needs remapping, and
``/clock``, which both use with use_sim_time. The node is started by instance_seg.launch.py (camera:=generic),
so params_file (checked to exist), managed, autostart and grasps (also start grasp_node) mean the same as there.

The simulated camera publishes reliably (its ``qos.reliability``), so the node subscribes reliably here
(``qos.input_reliability:=reliable``, whatever the params file says): a best-effort subscriber loses most of a
simulated camera's 640x480 frames across processes (README "Large images"). Without launch:

    sim_camera_node --ros-args -r __ns:=/sim -p use_sim_time:=true -p qos.reliability:=reliable &
    instance_seg_node --ros-args -r __ns:=/sim --params-file config/default.yaml -p use_sim_time:=true \
        -p qos.input_reliability:=reliable
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, ThisLaunchFileDir
from launch_ros.actions import Node

# the camera's publishers and the node's subscriptions, kept equal
RELIABILITY = "reliable"
TRUE = ("true", "1", "yes", "on")


def _camera(context):
    return [Node(
        package="instance_seg_ros",
        executable="sim_camera_node",
        name="sim_camera",
        namespace=LaunchConfiguration("namespace").perform(context).strip(),
        parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time").perform(context).strip().lower() in TRUE,
                     "qos.reliability": RELIABILITY}],
        output="screen",
    )]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="sim", description="Namespace of both nodes."),
        DeclareLaunchArgument("params_file", default_value="",
                              description="instance_seg_node parameters; default config/default.yaml."),
        DeclareLaunchArgument("use_sim_time", default_value="true", description="Run both nodes on /clock."),
        DeclareLaunchArgument("managed", default_value="false", description="Managed lifecycle instance_seg_node."),
        DeclareLaunchArgument("autostart", default_value="false",
                              description="With managed:=true: launch configures, then activates the node."),
        DeclareLaunchArgument("grasps", default_value="false",
                              description="Also start grasp_node on the simulated camera (needs make setup-grasp)."),
        OpaqueFunction(function=_camera),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource([ThisLaunchFileDir(), "/instance_seg.launch.py"]),
            launch_arguments={
                "camera": "generic",
                "namespace": LaunchConfiguration("namespace"),
                "params_file": LaunchConfiguration("params_file"),
                "use_sim_time": LaunchConfiguration("use_sim_time"),
                "managed": LaunchConfiguration("managed"),
                "autostart": LaunchConfiguration("autostart"),
                "grasps": LaunchConfiguration("grasps"),
                "input_reliability": RELIABILITY,
            }.items(),
        ),
    ])
