"""Launch instance_seg_node for a camera preset.

    ros2 launch instance_seg_ros instance_seg.launch.py camera:=realsense
    ros2 launch instance_seg_ros instance_seg.launch.py camera:=gazebo use_sim_time:=true
    ros2 launch instance_seg_ros instance_seg.launch.py camera:=generic image:=/cam/rgb depth:=/cam/depth \
        camera_info:=/cam/rgb/camera_info params_file:=/path/to/my.yaml managed:=true namespace:=left

Arguments: camera (realsense | gazebo | generic), namespace, params_file (default config/<camera>.yaml,
config/default.yaml for generic; a path that does not exist is refused), use_sim_time, managed, autostart,
input_reliability (best_effort | reliable; empty: the params file decides), image / depth / camera_info to
override the preset's topics, and grasps (false | true, like managed).

grasps:=true also starts grasp_node (Contact-GraspNet grasps per instance; needs the grasp extra, ``make
setup-grasp``) in the same namespace: it reads the node's instances and instance_labels there and gets the same depth
and camera_info topics; it publishes grasps and grasp_markers. Its parameters (max_grasps, score_threshold, select,
ids ...) are its defaults; change them with ``ros2 param set /grasp_node ...``.

managed:=true starts the node as a launch_ros LifecycleNode: it waits in ``unconfigured`` for its transitions,
which launch can drive (autostart:=true: configure, then activate, as soon as the node is up) or you do by hand:

    ros2 lifecycle set /instance_seg_node configure     # loads and warms the model
    ros2 lifecycle set /instance_seg_node activate      # subscribes
    ros2 lifecycle set /instance_seg_node deactivate    # unsubscribes, frees GPU memory

Everything here is also reachable without launch:

    instance_seg_node --ros-args --params-file config/realsense.yaml \
        -r image:=/camera/camera/color/image_raw -r image/compressed:=/camera/camera/color/image_raw/compressed \
        -r depth:=/camera/camera/aligned_depth_to_color/image_raw -r camera_info:=/camera/camera/color/camera_info

With input.compressed:=true in the params file the node subscribes to image/compressed, remapped here to
<image topic>/compressed (image_transport's name).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

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


def _existing_params_file(path):
    """``path`` if it is a file; otherwise a ValueError (launch_ros itself only logs a missing file and the node
    would run on its built-in defaults)."""
    if not os.path.isfile(path):
        raise ValueError(f"params_file:={path} does not exist (or is not a file): give the path of a parameters "
                         "YAML file, or leave params_file out to use the camera preset's config.")
    return path


def _change_state(node, transition_id):
    return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id))


def _autostart(node):
    """Configure ``node`` as soon as its lifecycle services are up, and activate it once it is inactive."""
    return [
        RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, goal_state="inactive",
                                               entities=[_change_state(node, Transition.TRANSITION_ACTIVATE)])),
        node,
        _change_state(node, Transition.TRANSITION_CONFIGURE),
    ]


def _node(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context).strip()

    camera = arg("camera")  # DeclareLaunchArgument's choices have refused anything else
    topics = {key: arg(key) or default for key, default in CAMERAS[camera].items()}
    params_file = _existing_params_file(arg("params_file") or os.path.join(
        get_package_share_directory("instance_seg_ros"), "config",
        "default.yaml" if camera == "generic" else f"{camera}.yaml"))
    managed = arg("managed").lower() in TRUE
    overrides = {"use_sim_time": arg("use_sim_time").lower() in TRUE, "managed": managed}
    if arg("input_reliability"):
        overrides["qos.input_reliability"] = arg("input_reliability")
    remappings = [
        ("image", topics["image"]),
        ("image/compressed", topics["image"] + "/compressed"),
        ("depth", topics["depth"]),
        ("camera_info", topics["camera_info"]),
    ]
    node = (LifecycleNode if managed else Node)(
        package="instance_seg_ros",
        executable="instance_seg_node",
        name="instance_seg_node",
        namespace=arg("namespace"),
        parameters=[params_file, overrides],
        remappings=remappings,
        output="screen",
        emulate_tty=True,
    )
    entities = _autostart(node) if managed and arg("autostart").lower() in TRUE else [node]
    if arg("grasps").lower() in TRUE:
        entities.append(_grasp_node(arg, topics, overrides))
    return entities


def _grasp_node(arg, topics, node_overrides):
    """grasp_node beside instance_seg_node: same namespace (its instances and instance_labels), same depth and
    camera_info topics, same use_sim_time and input reliability."""
    overrides = {"use_sim_time": node_overrides["use_sim_time"]}
    if "qos.input_reliability" in node_overrides:
        overrides["qos.input_reliability"] = node_overrides["qos.input_reliability"]
    return Node(
        package="instance_seg_ros",
        executable="grasp_node",
        name="grasp_node",
        namespace=arg("namespace"),
        parameters=[overrides],
        remappings=[("depth", topics["depth"]), ("camera_info", topics["camera_info"])],
        output="screen",
        emulate_tty=True,
    )


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("camera", default_value="realsense", choices=list(CAMERAS),
                              description="Topic preset: realsense, gazebo (ros_gz_bridge) or generic."),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node."),
        DeclareLaunchArgument("params_file", default_value="",
                              description="Parameters file; default config/<camera>.yaml (default.yaml for generic)."),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock (simulation, bags)."),
        DeclareLaunchArgument("managed", default_value="false",
                              description="Start a lifecycle node that waits for configure/activate transitions."),
        DeclareLaunchArgument("autostart", default_value="false",
                              description="With managed:=true: launch configures, then activates the node."),
        DeclareLaunchArgument("input_reliability", default_value="", choices=["", "best_effort", "reliable"],
                              description="QoS reliability of the inputs (qos.input_reliability); empty: the "
                                          "params file's value."),
        DeclareLaunchArgument("image", default_value="", description="Color image topic (overrides the preset)."),
        DeclareLaunchArgument("depth", default_value="", description="Registered depth topic (overrides the preset)."),
        DeclareLaunchArgument("camera_info", default_value="",
                              description="Color camera_info topic (overrides the preset)."),
        DeclareLaunchArgument("grasps", default_value="false",
                              description="Also start grasp_node (Contact-GraspNet grasps per instance; needs "
                                          "`make setup-grasp`)."),
        OpaqueFunction(function=_node),
    ])
