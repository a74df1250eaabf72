"""The launch files (``instance_seg_ros/launch/*.launch.py``) run by the real ``launch`` / ``launch_ros``.

Each test starts a ``LaunchService`` in a subprocess, the way ``ros2 launch <file> name:=value ...`` does (one
``IncludeLaunchDescription`` of the installed launch file with the arguments), in this pytest process's own
ROS_DOMAIN_ID (conftest.py), and checks the result from a separate rclpy context: node names and namespaces in
the graph, the topics the node subscribes to (and their QoS), its parameters (parameter service), its lifecycle
state (lifecycle services), or the error launch refuses a bad argument with. Every wait is bounded and the launch
process group (launch and the nodes it started) is always stopped and reaped.

Skipped where ``launch`` / ``launch_ros`` are not installed: they have no wheels, so a plain ``make test`` on a
machine without ROS 2 skips them (README, "The node", launch files).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from ros_helpers import PKG_DIR, ProcessGroup, RosTestContext

NOT_INSTALLED = "launch / launch_ros are not installed (no wheels; a ROS 2 installation has them)"
pytest.importorskip("launch_ros", reason=NOT_INSTALLED)
pytest.importorskip("launch.launch_service", reason=NOT_INSTALLED)

UNTRAINED = str(PKG_DIR / "config" / "test_untrained.yaml")
NODE = "instance_seg_node"
UP_TIMEOUT = 90.0  # launch + torch import + model load on 2 busy cores
EXIT_TIMEOUT = 60.0

# What `ros2 launch FILE a:=b ...` does (ros2launch.api.launch_a_launch_file), without the ros2 CLI.
RUNNER = """
import sys
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

path, *args = sys.argv[1:]
service = LaunchService(argv=args)
service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
    PythonLaunchDescriptionSource(path), launch_arguments=[tuple(a.split(':=', 1)) for a in args])]))
sys.exit(service.run())
"""


def launch_file(name: str) -> str:
    """The installed launch file (what ``ros2 launch instance_seg_ros NAME`` runs)."""
    from ament_index_python.packages import get_package_share_directory

    return os.path.join(get_package_share_directory("instance_seg_ros"), "launch", name)


def start_launch(group: ProcessGroup, name: str, *args: str) -> subprocess.Popen:
    return group.start([sys.executable, "-c", RUNNER, launch_file(name), *args],
                       log_name=f"launch-{name.split('.')[0]}")


def refused(name: str, *args: str) -> str:
    """Run a launch that must fail before starting instance_seg_node; its log."""
    group = ProcessGroup()
    try:
        proc = start_launch(group, name, *args)
        try:
            rc = proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"launch {' '.join(args)} did not exit within {EXIT_TIMEOUT} s; log:\n{group.log(proc)}")
        log = group.log(proc)
        assert rc != 0, f"launch {' '.join(args)} exited 0; log:\n{log}"
        assert f"[{NODE}-" not in log, f"instance_seg_node was started anyway; log:\n{log}"
        return log
    finally:
        group.stop_all()


@contextlib.contextmanager
def launched(name: str, *args: str, test_name: str) -> Iterator[tuple[Launched, subprocess.Popen, ProcessGroup]]:
    """A running launch and a test context beside it; always torn down."""
    group = ProcessGroup()
    ctx = RosTestContext(test_name)
    try:
        proc = start_launch(group, name, *args)
        yield Launched(ctx, proc, group), proc, group
    finally:
        ctx.shutdown()
        group.stop_all()


class Launched:
    """Look at the nodes a launch started, from the test's own rclpy context (bounded waits)."""

    def __init__(self, ctx: RosTestContext, proc: subprocess.Popen, group: ProcessGroup) -> None:
        self.ctx, self.proc, self.group = ctx, proc, group

    def fail(self, what: str) -> None:
        pytest.fail(f"{what}; launch alive={self.proc.poll() is None}; log:\n{self.group.log(self.proc)}")

    def wait(self, predicate, what: str, timeout: float = UP_TIMEOUT) -> None:
        if not self.ctx.spin_until(lambda: self.proc.poll() is None and predicate(), timeout):
            self.fail(what)

    def subscribers(self, topic: str) -> list[Any]:
        """The ``instance_seg_node`` subscriptions on ``topic`` (TopicEndpointInfo)."""
        return [i for i in self.ctx.node.get_subscriptions_info_by_topic(topic) if i.node_name == NODE]

    def wait_subscribed(self, *topics: str) -> None:
        self.wait(lambda: all(self.subscribers(t) for t in topics), f"instance_seg_node never subscribed to {topics}")

    def call(self, srv_type, name: str, request, timeout: float = 20.0) -> Any:
        client = self.ctx.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                self.fail(f"service {name} not available")
            future = client.call_async(request)
            self.wait(future.done, f"no answer from {name}", timeout)
            return future.result()
        finally:
            self.ctx.node.destroy_client(client)

    def parameters(self, node: str, *names: str) -> dict[str, Any]:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        response = self.call(GetParameters, f"{node}/get_parameters", GetParameters.Request(names=list(names)))
        return {n: parameter_value_to_python(v) for n, v in zip(names, response.values, strict=True)}

    def state(self, node: str, timeout: float = 20.0) -> str:
        from lifecycle_msgs.srv import GetState

        return self.call(GetState, f"{node}/get_state", GetState.Request(), timeout).current_state.label

    def change_state(self, node: str, transition_id: int) -> bool:
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.id = transition_id
        return self.call(ChangeState, f"{node}/change_state", request).success


# preset -> (extra launch arguments, namespace, topics the node must subscribe to, parameters it must have)
PRESETS = {
    "realsense": (
        (), "/rs",
        ("/camera/camera/color/image_raw", "/camera/camera/aligned_depth_to_color/image_raw",
         "/camera/camera/color/camera_info"),
        {"model.weights": "bundled", "sync.slop": 0.005, "depth.max": 2.0, "qos.input_reliability": "best_effort",
         "use_sim_time": False, "managed": False},
    ),
    "gazebo": (
        ("use_sim_time:=true",), "/gz",
        ("/camera/image", "/camera/depth_image", "/camera/camera_info"),
        {"model.weights": "bundled", "sync.slop": 0.001, "depth.max": 5.0, "qos.input_reliability": "best_effort",
         "use_sim_time": True, "managed": False},
    ),
    "generic": (
        ("image:=/cam/rgb", f"params_file:={UNTRAINED}", "input_reliability:=reliable"), "/left",
        ("/cam/rgb", "/left/depth", "/left/camera_info"),
        {"model.weights": "none", "sync.slop": 0.001, "depth.max": 5.0, "qos.input_reliability": "reliable",
         "use_sim_time": False, "managed": False},
    ),
}


@pytest.mark.parametrize("camera", list(PRESETS))
def test_preset_starts_the_node_with_its_topics_namespace_and_parameters(camera):
    extra, ns, topics, params = PRESETS[camera]
    with launched("instance_seg.launch.py", f"camera:={camera}", f"namespace:={ns.strip('/')}", *extra,
                  test_name=f"test_launch_{camera}") as (run, _, _):
        run.wait(lambda: (NODE, ns) in run.ctx.node.get_node_names_and_namespaces(),
                 f"no {ns}/{NODE} in the graph")
        run.wait_subscribed(*topics)
        assert run.parameters(f"{ns}/{NODE}", *params) == pytest.approx(params)
        reliability = "RELIABLE" if params["qos.input_reliability"] == "reliable" else "BEST_EFFORT"
        assert all(i.qos_profile.reliability.name == reliability for t in topics for i in run.subscribers(t))


def test_unknown_camera_is_refused_with_the_valid_choices():
    log = refused("instance_seg.launch.py", "camera:=kinect")
    assert "kinect" in log
    assert all(preset in log for preset in PRESETS), log


@pytest.mark.parametrize("name", ["instance_seg.launch.py", "sim.launch.py"])
def test_a_params_file_that_does_not_exist_is_refused(name, tmp_path):
    missing = str(tmp_path / "no_such_params.yaml")
    log = refused(name, f"params_file:={missing}")
    assert f"params_file:={missing} does not exist" in log, log


def test_managed_starts_a_lifecycle_node_that_waits_and_takes_transitions():
    from lifecycle_msgs.msg import Transition

    node = f"/managed/{NODE}"
    with launched("instance_seg.launch.py", "camera:=generic", "namespace:=managed", f"params_file:={UNTRAINED}",
                  "managed:=true", test_name="test_launch_managed") as (run, _, _):
        assert run.state(node, timeout=UP_TIMEOUT) == "unconfigured"
        run.ctx.spin_for(2.0)
        assert run.state(node) == "unconfigured", "the managed node went on without its transitions"
        assert not run.subscribers("/managed/image")
        # what `ros2 lifecycle set /managed/instance_seg_node configure` / `activate` do
        assert run.change_state(node, Transition.TRANSITION_CONFIGURE)
        assert run.state(node) == "inactive"
        assert run.change_state(node, Transition.TRANSITION_ACTIVATE)
        assert run.state(node) == "active"
        run.wait_subscribed("/managed/image", "/managed/depth", "/managed/camera_info")


def test_managed_autostart_is_configured_and_activated_by_launch():
    node = f"/auto/{NODE}"
    with launched("instance_seg.launch.py", "camera:=generic", "namespace:=auto", f"params_file:={UNTRAINED}",
                  "managed:=true", "autostart:=true", test_name="test_launch_autostart") as (run, _, _):
        run.wait_subscribed("/auto/image", "/auto/depth", "/auto/camera_info")
        assert run.state(node) == "active"
        assert run.parameters(node, "managed") == {"managed": True}


def test_sim_launch_subscribes_reliably_like_its_camera_and_publishes_instances():
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from instance_seg_msgs.msg import InstanceArray

    with launched("sim.launch.py", "namespace:=simtest", f"params_file:={UNTRAINED}",
                  test_name="test_launch_sim") as (run, _, _):
        run.wait_subscribed("/simtest/image", "/simtest/depth", "/simtest/camera_info")
        for topic in ("/simtest/image", "/simtest/depth", "/simtest/camera_info"):
            assert [i.qos_profile.reliability for i in run.subscribers(topic)] == [ReliabilityPolicy.RELIABLE]
            publishers = [i for i in run.ctx.node.get_publishers_info_by_topic(topic) if i.node_name == "sim_camera"]
            assert [i.qos_profile.reliability for i in publishers] == [ReliabilityPolicy.RELIABLE]
        assert run.parameters(f"/simtest/{NODE}", "qos.input_reliability", "use_sim_time", "model.weights") == {
            "qos.input_reliability": "reliable", "use_sim_time": True, "model.weights": "none"}
        received = []
        run.ctx.node.create_subscription(InstanceArray, "/simtest/instances", received.append,
                                         QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        run.wait(lambda: len(received) >= 3, f"{len(received)} instance messages from the simulated camera")
