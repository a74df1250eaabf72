"""``sim_camera_node``: a simulated RGB-D camera over a PyBullet tabletop, publishing like a real driver.

Publishes, all with the same ``header`` (stamp and ``frame_id``) per frame, at ``rate`` Hz:

- ``image`` (sensor_msgs/Image ``rgb8``) and, with ``compressed:=true``, ``image/compressed``
  (sensor_msgs/CompressedImage, JPEG; encoded only while someone subscribes, as image_transport does);
- ``depth`` (sensor_msgs/Image, ``32FC1`` meters with NaN invalid, or ``16UC1`` millimetres with 0 invalid);
- ``camera_info`` (sensor_msgs/CameraInfo, D435-like intrinsics scaled to ``width x height``, no distortion);
- with ``publish_ground_truth:=true``, ``ground_truth`` (instance_seg_msgs/InstanceArray: visible and amodal
  masks, occlusion, true boxes, see :meth:`Frame.to_frame_result <instance_seg_ros.sim.frame.Frame.to_frame_result>`;
  each object's ``track_id`` is the same in every frame of its scene and never taken by another scene's object, as
  in ``isr record`` bags: :func:`ground_truth_msg`);
- with ``use_sim_time:=true``, ``/clock`` (rosgraph_msgs/Clock): the node *is* the simulator, so it advances
  simulated time by ``1 / rate`` per frame, publishes it on ``/clock`` just before the frame and stamps the
  frame with it (the first frame is at ``1 / rate`` s; a zero stamp would mean "unstamped"). Without
  sim time, frames carry the wall-clock time of ``node.get_clock().now()``.

Topic names are relative, the inputs of ``instance_seg_node``: run both in one namespace, or remap
(``-r image:=/camera/color/image_raw``) like any camera driver. Outputs are reliable by default
(``qos.reliability``, ``qos.depth``).

Frames come from :class:`~instance_seg_ros.sim.camera_source.SimCameraSource` (no ROS in it): random scenes
from ``seed`` (scene ``s`` uses ``Scene.random(seed * 100003 + s)``, changed every ``scene_change_every``
frames), a camera that stays put (``static``) or circles the pile (``orbit``, ``orbit_speed`` degrees per
simulated second), optional D435-like noise. The view of a scene's first frame is the one ``isr record --seed S``
uses. A static camera without moving parts renders once per scene and re-publishes that render (with fresh
noise when ``noise`` is on), so the node costs almost nothing then.

Rendering runs in its own thread paced by a monotonic wall clock (never by ``/clock``, which the node
itself drives). When a frame takes longer than ``1 / rate``, the next one starts at once (no backlog, no
catch-up burst) and a throttled warning says which rate is reached. ``max_frames`` > 0 makes the node exit
0 by itself after that many frames (waiting up to 2 s for reliable subscribers to acknowledge them);
``wait_for_subscribers`` > 0 holds the first frame (and simulated time) until that many subscribers have
matched ``image``, so a consumer started alongside misses nothing.
SIGINT / SIGTERM stop the render thread, destroy the node, disconnect PyBullet and exit 0.

Examples::

    sim_camera_node --ros-args -p width:=320 -p height:=240 -p publish_ground_truth:=true
    sim_camera_node --ros-args -r __ns:=/sim -p use_sim_time:=true -p camera_motion:=orbit -p max_frames:=100
    python -m instance_seg_ros.sim.camera_node --ros-args -p depth_encoding:=16UC1 -p compressed:=true
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import rclpy
from rcl_interfaces.msg import (
    SetParametersResult,
)
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from instance_seg_msgs.msg import InstanceArray

from ..core.config import ParamSpec, Settings, param_field
from ..core.images import encode_depth_16uc1
from ..core.text import one_line
from ..core.types import Intrinsics
from ..ros.conversions import (
    camera_info_msg,
    compressed_image_msg,
    header,
    image_msg,
    instance_array_msg,
    stamp_from_ns,
)
from ..ros.node_common import run_node
from ..ros.params import declare_specs
from ..ros.qos import describe, output_qos
from .camera import d435_intrinsics
from .camera_source import SimCameraSource, SimFrame, scene_seed
from .errors import SceneError
from .randomization import SceneConfig, scene_track_id

__all__ = [
    "CAMERA_MOTIONS",
    "DEPTH_ENCODINGS",
    "NODE_NAME",
    "SPECS",
    "SimCameraError",
    "SimCameraNode",
    "SimCameraSettings",
    "ground_truth_msg",
    "main",
]

NODE_NAME = "sim_camera"
CAMERA_MOTIONS = ("static", "orbit")
DEPTH_ENCODINGS = ("32FC1", "16UC1")
_WARN_PERIOD = 10.0  # seconds between "slower than rate" warnings
_ACK_TIMEOUT = 2.0  # seconds to wait for reliable subscribers before exiting after max_frames


class SimCameraError(ValueError):
    """A sim_camera_node parameter is invalid; the message says which and what is allowed."""


@dataclass(frozen=True)
class SimCameraSettings(Settings):
    """The node's parameters, validated; each field's parameter name, default and description are declared once,
    here (:data:`SPECS` is read from them; the ``qos.*`` parameters are the ``qos_*`` attributes).

    Raises:
        SimCameraError: a value of the wrong type, out of range, not one of the choices, or
            ``min_objects > max_objects`` / an empty ``frame_id``.
    """

    error = SimCameraError
    label = "sim_camera_node"

    seed: int = param_field(0, "Random seed of the scenes, the camera views and the noise (same seed, same frames).",
                            low=0, high=2**31 - 1)
    width: int = param_field(640, "Image width in pixels (intrinsics scale with it: fx = 615 * width / 640).",
                             low=16, high=4096)
    height: int = param_field(480, "Image height in pixels (fy = 615 * height / 480).", low=16, high=4096)
    rate: float = param_field(
        10.0, "Frames per second (wall clock). Slower rendering publishes as fast as it can, with a warning; under "
        "use_sim_time, simulated time advances 1/rate per frame whatever the wall time.",
        low=0.01, high=1000.0, dynamic=True)
    scene_change_every: int = param_field(
        0, "Frames per scene before a new random scene is built (0 = one scene forever).", low=0, high=2**31 - 1,
        dynamic=True)
    camera_motion: str = param_field(
        "static", "static: one random tabletop view per scene; orbit: the camera circles the pile at orbit_speed.",
        choices=CAMERA_MOTIONS, dynamic=True)
    orbit_speed: float = param_field(10.0, "Degrees of azimuth per simulated second while camera_motion is orbit.",
                                     low=-360.0, high=360.0, dynamic=True)
    noise: bool = param_field(
        False, "D435-like depth noise (disparity noise and quantisation, edge dropout, holes) and color noise.",
        dynamic=True)
    min_objects: int = param_field(3, "Objects per random scene, at least.", low=1, high=200)
    max_objects: int = param_field(12, "Objects per random scene, at most.", low=1, high=200)
    max_frames: int = param_field(0, "Exit (code 0) after publishing this many frames; 0 = run until stopped.",
                                  low=0, high=2**31 - 1)
    wait_for_subscribers: int = param_field(
        0, "Start publishing (and simulated time) only once image and image/compressed together have this many "
        "subscribers, so that a consumer started alongside gets the first frame (with max_frames: all of them); "
        "0 = start at once.", low=0, high=1000)
    depth_encoding: str = param_field(
        "32FC1", "depth image encoding: 32FC1 meters (NaN invalid, like Gazebo) or 16UC1 millimetres (0 invalid, "
        "like the RealSense driver).", choices=DEPTH_ENCODINGS)
    compressed: bool = param_field(
        False, "Also publish image/compressed (JPEG), encoded only while it has subscribers.")
    frame_id: str = param_field(
        "camera_color_optical_frame", "header.frame_id of every message (an optical frame: x right, y down, "
        "z forward).")
    publish_ground_truth: bool = param_field(
        False, "Publish the scene's ground truth as instance_seg_msgs/InstanceArray on ground_truth (costs one extra "
        "small render per object).")
    qos_reliability: str = param_field("reliable", "Reliability of every publisher: reliable or best_effort.",
                                       choices=("reliable", "best_effort"), name="qos.reliability")
    qos_depth: int = param_field(5, "History depth (keep last) of every publisher.", low=1, high=100,
                                 name="qos.depth")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_objects > self.max_objects:
            raise SimCameraError(f"min_objects ({self.min_objects}) must not exceed max_objects ({self.max_objects}).")
        if not self.frame_id.strip():
            raise SimCameraError("frame_id must not be empty; use the camera's optical frame, e.g. "
                                 "camera_color_optical_frame.")

    @property
    def intrinsics(self) -> Intrinsics:
        return d435_intrinsics(self.width, self.height)

    @property
    def scene_config(self) -> SceneConfig:
        return SceneConfig(min_objects=self.min_objects, max_objects=self.max_objects)


#: every parameter of the node (besides ``use_sim_time``), in declaration order; ``dynamic`` ones change at run time
SPECS: tuple[ParamSpec, ...] = SimCameraSettings.specs()
_SPECS_BY_NAME = {s.name: s for s in SPECS}
_FIELD = {s.name: s.name.replace(".", "_") for s in SPECS}  # dotted parameter name -> settings attribute


# ---------------------------------------------------------------------------------------- the node
class SimCameraNode(Node):
    """The simulated RGB-D camera (see the module docstring for topics, parameters and timing).

    Construction declares the parameters and creates the publishers; :meth:`start` starts the render thread;
    :meth:`close` stops it and disconnects PyBullet. :attr:`finished` becomes set when the thread ends by itself
    (``max_frames`` reached, or an error: see :attr:`error`).

    Raises:
        SimCameraError: invalid parameters (the message names the parameter and what is allowed).
    """

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._settings = self._declare_parameters()
        self._use_sim_time = bool(self.get_parameter("use_sim_time").value)
        s = self._settings
        qos = output_qos(s.qos_reliability, s.qos_depth)
        self._pub_image = self.create_publisher(Image, "image", qos)
        self._pub_depth = self.create_publisher(Image, "depth", qos)
        self._pub_info = self.create_publisher(CameraInfo, "camera_info", qos)
        self._pub_compressed = self.create_publisher(CompressedImage, "image/compressed", qos) if s.compressed else None
        self._pub_gt = self.create_publisher(InstanceArray, "ground_truth", qos) if s.publish_ground_truth else None
        self._pub_clock = None
        if self._use_sim_time:
            # reliable keep-last(10): matches rclpy/rclcpp's best-effort /clock subscriptions and reliable recorders
            self._pub_clock = self.create_publisher(Clock, "/clock", QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.VOLATILE))
        self._source = SimCameraSource(s)
        self._stop = threading.Event()
        self.finished = threading.Event()
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        self._sim_ns = 0
        self._last_stamp_ns = 0
        self._published = 0
        self._late = 0
        self._last_warn = -math.inf
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        topics = ["image", f"depth ({s.depth_encoding})", "camera_info"]
        topics += ["image/compressed"] if s.compressed else []
        topics += ["ground_truth"] if s.publish_ground_truth else []
        topics += ["/clock"] if self._use_sim_time else []
        self.get_logger().info(
            f"{s.width}x{s.height} at {s.rate:g} Hz, {s.camera_motion} camera, seed {s.seed}, frame_id "
            f"{s.frame_id}; publishing {', '.join(topics)} ({describe(qos)}); stamps: "
            f"{'simulated time, published on /clock' if self._use_sim_time else 'wall clock'}"
            f"{f'; exiting after {s.max_frames} frames' if s.max_frames else ''}")

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> SimCameraSettings:
        values = declare_specs(self, SPECS, error=SimCameraError, fixed_note="read-only: set it at start-up",
                               read_only=True, known_hint=f"Known parameters: {', '.join(_FIELD)}, use_sim_time.")
        return SimCameraSettings.from_flat(values)

    def _validate_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """On-set: refuse invalid values (read-only ones are refused by rclpy itself) with a reason."""
        flat = self._settings.to_flat()
        for p in params:
            if p.name == "use_sim_time" and bool(p.value) != self._use_sim_time:
                return SetParametersResult(successful=False, reason=(
                    "use_sim_time is read at start-up (it decides whether this node publishes /clock); restart "
                    "the node with -p use_sim_time:=true|false."))
            spec = _SPECS_BY_NAME.get(p.name)
            if spec is None:
                continue
            value = p.value
            if spec.type is float and p.type_ == Parameter.Type.INTEGER:
                value = float(value)
            flat[p.name] = value
        try:
            SimCameraSettings.from_flat(flat)
        except SimCameraError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: list[Parameter]) -> None:
        flat = self._settings.to_flat()
        changed = {p.name: p.value for p in params if p.name in _SPECS_BY_NAME}
        if not changed:
            return
        flat.update(changed)
        self._settings = SimCameraSettings.from_flat(flat)
        self._source.settings = self._settings  # the render thread picks it up before its next frame
        self.get_logger().info("parameters updated: " + ", ".join(f"{k}={v!r}" for k, v in changed.items()))

    @property
    def settings(self) -> SimCameraSettings:
        return self._settings

    @property
    def frames_published(self) -> int:
        """Frames published so far."""
        return self._published

    @property
    def late_frames(self) -> int:
        """Frames whose rendering and publishing took longer than ``1 / rate``."""
        return self._late

    # ------------------------------------------------------------------ render thread
    def start(self) -> None:
        """Start the render thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sim_camera_render", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the render thread and disconnect PyBullet (idempotent); the node itself stays until destroyed."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.get_logger().warning(f"render thread did not stop within {timeout:g} s")
                return  # it still uses the scene: leave it to process exit
        self._source.close()

    def _next_stamp_ns(self, rate: float) -> int:
        if self._use_sim_time:
            self._sim_ns += max(1, round(1e9 / rate))
            stamp = self._sim_ns
        else:
            stamp = self.get_clock().now().nanoseconds
        stamp = max(stamp, self._last_stamp_ns + 1)  # strictly increasing, even if the wall clock steps back
        self._last_stamp_ns = stamp
        return stamp

    def _publish(self, frame: SimFrame, stamp_ns: int) -> None:
        s = self._settings
        if self._pub_clock is not None:
            self._pub_clock.publish(Clock(clock=stamp_from_ns(stamp_ns)))
        hdr = header(s.frame_id, stamp_ns)
        self._pub_image.publish(image_msg(frame.color, "rgb8", hdr))
        if s.depth_encoding == "16UC1":
            self._pub_depth.publish(image_msg(encode_depth_16uc1(frame.depth), "16UC1", hdr))
        else:
            self._pub_depth.publish(image_msg(frame.depth, "32FC1", hdr))
        self._pub_info.publish(camera_info_msg(frame.intrinsics, hdr))
        if self._pub_compressed is not None and self._pub_compressed.get_subscription_count() > 0:
            self._pub_compressed.publish(compressed_image_msg(frame.color, "jpeg", hdr))
        if self._pub_gt is not None and frame.ground_truth is not None:
            self._pub_gt.publish(ground_truth_msg(frame, hdr))

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:
            if not self._stop.is_set() and self.context.ok():
                self.error = one_line(exc, with_type=True)
                self.get_logger().error(f"simulated camera stopped: {self.error}")
        finally:
            self.finished.set()

    def _wait_for_subscribers(self, count: int) -> bool:
        """Block until ``image`` (+ ``image/compressed``) has ``count`` subscribers; False when stopped first."""
        self.get_logger().info(f"waiting for {count} subscriber(s) on image before publishing the first frame")
        pubs = [p for p in (self._pub_image, self._pub_compressed) if p is not None]
        while sum(p.get_subscription_count() for p in pubs) < count:
            if self._stop.wait(0.02) or not self.context.ok():
                return False
        self.get_logger().info("subscriber(s) connected: publishing")
        return True

    def _loop(self) -> None:
        if self._settings.wait_for_subscribers and not self._wait_for_subscribers(self._settings.wait_for_subscribers):
            return
        due = time.monotonic()
        while not self._stop.is_set():
            s = self._settings
            if s.max_frames and self._published >= s.max_frames:
                self._wait_for_acks()
                self.get_logger().info(f"published {self._published} frames (max_frames); exiting")
                return
            wait = due - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                return
            t0 = time.monotonic()
            frame = self._source.next()
            if frame.timings["scene"] > 0:
                scene = self._source.scene
                self.get_logger().info(
                    f"scene {frame.scene_index} (seed {scene_seed(s.seed, frame.scene_index)}): "
                    f"{len(scene.objects) if scene else 0} objects on a {scene.support if scene else '?'}, built in "
                    f"{frame.timings['scene']:.0f} ms")
            if self._stop.is_set() or not self.context.ok():
                return
            self._publish(frame, self._next_stamp_ns(s.rate))
            self._published += 1
            now = time.monotonic()
            period = 1.0 / s.rate
            work = now - t0
            due += period
            if due < now:  # late: start the next frame now, never catch up with a burst
                due = now
            # a scene's first frame (building it, its first render) is a one-off pause, not a slow camera
            if work > period and frame.timings["scene"] == 0:
                self._late += 1
                if now - self._last_warn >= _WARN_PERIOD:
                    self._last_warn = now
                    self.get_logger().warning(
                        f"a frame takes {work * 1e3:.0f} ms ({1.0 / work:.1f} Hz), slower than rate {s.rate:g} Hz: "
                        f"publishing as fast as possible ({self._late} late frame(s) so far). Lower width/height "
                        f"or rate, or turn off publish_ground_truth / camera_motion orbit.")

    def _wait_for_acks(self) -> None:
        end = time.monotonic() + _ACK_TIMEOUT
        for pub in (self._pub_clock, self._pub_image, self._pub_depth, self._pub_info, self._pub_compressed,
                    self._pub_gt):
            left = end - time.monotonic()
            if pub is not None and left > 0:
                pub.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9)))


# ---------------------------------------------------------------------------------------- entry point
def ground_truth_msg(frame: SimFrame, hdr: Any) -> InstanceArray:
    """``frame.ground_truth`` as an InstanceArray with header ``hdr``; each object's ``track_id`` is
    :func:`~instance_seg_ros.sim.randomization.scene_track_id` of the frame's scene and the object's id."""
    msg = instance_array_msg(frame.ground_truth, hdr)
    for m in msg.instances:
        m.track_id = scene_track_id(frame.scene_index, m.track_id)
    return msg


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sim_camera_node",
        description="Simulated RGB-D camera (PyBullet tabletop): image, depth, camera_info [, ground_truth, /clock]. "
                    "Parameters and remappings go after --ros-args, e.g. --ros-args -p width:=320 -p height:=240 "
                    "-p publish_ground_truth:=true -r __ns:=/sim",
    )
    return parser.parse_args(remove_ros_args(argv)[1:])


def main(args: list[str] | None = None) -> int:
    """Console entry point ``sim_camera_node``; ``args`` is a full argv (program name first).

    Returns:
        0 after SIGINT / SIGTERM or ``max_frames`` frames, 1 when rendering failed, 2 for invalid parameters.
    """
    argv = list(sys.argv if args is None else args)
    _parse_args(argv)
    return run_node(argv, NODE_NAME, SimCameraNode, (SimCameraError, SceneError), _run)


def _run(node: SimCameraNode) -> int:
    """Start ``node`` and spin it until ``max_frames`` frames or shutdown; 1 when rendering failed."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    node.start()
    while rclpy.ok() and not node.finished.is_set():
        executor.spin_once(timeout_sec=0.1)
    return 1 if node.error else 0


if __name__ == "__main__":
    sys.exit(main())
