"""``grasp_node``: Contact-GraspNet grasps for the instances ``instance_seg_node`` finds.

Topics (relative names; the defaults line up with ``instance_seg_node`` in the same namespace, given the same
``depth`` and ``camera_info`` remappings):

- in: ``instances`` (instance_seg_msgs/InstanceArray), ``instance_labels`` (sensor_msgs/Image mono16, 0 =
  background, ``i`` = instance index ``i``; also 16UC1, mono8 or 32SC1), ``depth`` (sensor_msgs/Image 16UC1 mm or
  32FC1 m, registered to the color image) and ``camera_info`` (the color camera's), matched by stamp.
  ``instance_seg_node`` publishes ``instance_labels`` only while someone subscribes (``publish.labels:=auto``):
  this node's subscription is enough.
- out: ``grasps`` (instance_seg_msgs/GraspArray, the header of the InstanceArray: its stamp and frame_id),
  ``grasp_markers`` (visualization_msgs/MarkerArray: DELETEALL, then a line drawing of the Panda gripper per grasp,
  red to green by score) and ``/diagnostics``.

Timing: the planner (:class:`~instance_seg_ros.grasp.ContactGraspNet`) costs about 2 s per instance on a 2-core CPU
(5-8 s when the CPU is shared, e.g. with instance_seg_node), far slower than frames arrive. Subscription callbacks only
stamp-match the messages (:class:`~instance_seg_ros.core.sync.StampSynchronizer`, the ``instances`` message is the
pivot); the newest complete set waits in a :class:`~instance_seg_ros.core.sync.LatestSlot` and one worker thread
plans for it, one instance after the other. **Only the newest synchronized set is processed**: sets that arrive
while the worker is busy replace the waiting one and are counted as ``frames_skipped``, so grasps lag the camera by
at most one planning run (plus instance_seg_node's own latency).
Depth and camera_info arrive long before the instances of their frame (segmentation takes time), so they are queued
(``sync.queue_size`` messages, ``sync.max_age`` seconds); raise both if ``instance_seg_node`` lags the camera by
more than ``sync.max_age`` s.

Bad input never stops the node: a set that cannot be used (wrong encodings or sizes, NaN intrinsics, a label image
that does not belong to the instances ...) is refused with a throttled warning naming the problem and counted by
reason (``rejected.<reason>``) in /diagnostics; the next good set is processed.

The planner (the optional Contact-GraspNet extra, ``make setup-grasp``) is imported and loaded at start-up, not when
this module is imported; without the extra the node logs one error naming ``make setup-grasp`` and exits with
code 1.

Parameters (``ros2 param describe`` shows each): ``max_grasps``, ``score_threshold``, ``select`` (``all`` |
``index`` | ``track_id``) with ``ids``, ``diagnostics.*`` and ``sync.slop`` / ``sync.max_age`` change at run time;
``device``, ``seed``, ``depth.scale_16uc1``, ``sync.queue_size`` and ``qos.*`` are read-only (set at start-up).

Usage::

    grasp_node --ros-args -r depth:=/camera/camera/aligned_depth_to_color/image_raw \\
        -r camera_info:=/camera/camera/color/camera_info -p select:=track_id -p "ids:=[3]"
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CameraInfo, Image
from visualization_msgs.msg import MarkerArray

from instance_seg_msgs.msg import GraspArray, InstanceArray

from ..core.config import ParamSpec, Settings, param_field
from ..core.sync import LatestSlot, Matched, StampSynchronizer
from ..core.text import one_line
from .diagnostics import (
    InputWatch,
    NodeStats,
    NodeView,
    Throttle,
    time_reset_warning,
)
from .frame_inputs import FrameRejected
from .grasp_io import SELECT_MODES, decode_grasp_inputs, grasp_array_msg, grasp_markers_msg, select_indices
from .node_common import WorkerNodeMixin, run_node, spin
from .params import coerced, declare_specs
from .qos import describe, input_qos, output_qos

__all__ = ["NODE_NAME", "SPECS", "STREAMS", "GraspNode", "GraspNodeError", "GraspNodeSettings", "main"]

NODE_NAME = "grasp_node"
#: synchronizer streams (the first is the pivot) and their topics
STREAMS = ("instances", "labels", "depth", "camera_info")
TOPICS = {"instances": (InstanceArray, "instances"), "labels": (Image, "instance_labels"),
          "depth": (Image, "depth"), "camera_info": (CameraInfo, "camera_info")}
IDS = "ids"
_MISSING_HINTS = {
    "labels": "instance_seg_node publishes instance_labels while someone subscribes; check that this node's "
              "instance_labels resolves to its topic (same namespace, or a remapping)",
    "depth": "give this node the depth topic instance_seg_node subscribes to, and raise sync.queue_size / "
             "sync.max_age if instance_seg_node lags the camera by more than sync.max_age",
    "camera_info": "give this node the camera_info topic instance_seg_node subscribes to",
}


class GraspNodeError(ValueError):
    """A grasp_node parameter is invalid; the message says which and what is allowed."""


@dataclass(frozen=True)
class GraspNodeSettings(Settings):
    """The node's scalar parameters, validated (``ids``, an integer array, is declared beside them); each field's
    parameter name, default and description are written once, here (:data:`SPECS` is read from them).

    Raises:
        GraspNodeError: a value of the wrong type, out of range or not one of the choices.
    """

    error = GraspNodeError
    label = NODE_NAME

    max_grasps: int = param_field(5, "At most this many grasps per instance, best score first.", low=1, high=1000,
                                  dynamic=True)
    score_threshold: float = param_field(0.3, "Drop grasps scored below this (the network's confidence, 0..1).",
                                         low=0.0, high=1.0, dynamic=True)
    select: str = param_field(
        "all", "Which instances to plan for: all, index (those whose index is in ids) or track_id (those whose "
        "track_id is in ids; needs tracking in instance_seg_node). Each instance costs ~2 s on a CPU.",
        choices=SELECT_MODES, dynamic=True)
    device: str = param_field("auto", "Where Contact-GraspNet runs: auto (CUDA when available), cpu or cuda.",
                              choices=("auto", "cpu", "cuda"))
    seed: int = param_field(0, "Seeds the planner's random point subsets and sampling: one input, one answer.",
                            low=0, high=2**31 - 1)
    depth_scale: float = param_field(0.001, "Meters per unit of 16UC1 depth (0.001 = millimetres).", low=1e-6,
                                     high=1.0, name="depth.scale_16uc1")
    sync_slop: float = param_field(
        0.02, "Max stamp difference (s) between instances and their depth and camera_info (instances carry the "
        "color image's stamp).", low=0.0, high=10.0, dynamic=True, name="sync.slop")
    sync_queue_size: int = param_field(
        90, "Messages kept per input while waiting for the instances of their frame (3 s of a 30 Hz camera).",
        low=1, high=1000, name="sync.queue_size")
    sync_max_age: float = param_field(
        5.0, "Messages older than this (s, behind the newest) are dropped: must exceed instance_seg_node's latency.",
        low=0.0, high=60.0, dynamic=True, name="sync.max_age")
    input_reliability: str = param_field(
        "best_effort", "Reliability of every input subscription: best_effort (matches every publisher) or reliable.",
        choices=("best_effort", "reliable"), name="qos.input_reliability")
    input_depth: int = param_field(5, "History depth (keep last) of each input subscription.", low=1, high=100,
                                   name="qos.input_depth")
    output_reliability: str = param_field("reliable", "Reliability of grasps and grasp_markers.",
                                          choices=("best_effort", "reliable"), name="qos.output_reliability")
    output_depth: int = param_field(5, "History depth (keep last) of each output publisher.", low=1, high=100,
                                    name="qos.output_depth")
    diagnostics_period: float = param_field(1.0, "Seconds between /diagnostics messages.", low=0.1, high=60.0,
                                            name="diagnostics.period")
    stale_timeout: float = param_field(
        10.0, "Warn when an input has no publisher, or its publishers deliver nothing, for this many seconds; "
        "0 disables.", low=0.0, high=3600.0, dynamic=True, name="diagnostics.stale_timeout")
    warn_throttle: float = param_field(
        5.0, "At most one warning per problem every this many seconds.", low=0.0, high=3600.0, dynamic=True,
        name="diagnostics.warn_throttle")


#: the scalar parameters, in declaration order (``ids`` besides)
SPECS: tuple[ParamSpec, ...] = GraspNodeSettings.specs()
_SPECS_BY_NAME = {s.name: s for s in SPECS}
_IDS_DESCRIPTOR = ParameterDescriptor(
    name=IDS, type=ParameterType.PARAMETER_INTEGER_ARRAY,
    description="Instance indices (select:=index) or track ids (select:=track_id) to plan for; unused with "
                "select:=all. Ids not in a frame are ignored.",
    additional_constraints="integers >= 1; changes at run time")


def _ids(value: Any) -> tuple[int, ...]:
    """The ``ids`` parameter's value as a tuple (unset: empty).

    Raises:
        GraspNodeError: a value below 1.
    """
    ids = tuple(int(v) for v in (value if value is not None else ()))
    if any(v < 1 for v in ids):
        raise GraspNodeError(f"ids are instance indices or track ids, all >= 1; got {list(ids)}.")
    return ids


class GraspNode(WorkerNodeMixin, Node):
    """Contact-GraspNet grasps per instance (see the module docstring for topics, timing and parameters).

    Construction declares the parameters and creates the publishers; :meth:`load_planner` builds the planner
    (unless one is handed in); :meth:`start` subscribes and starts the worker; :meth:`close` stops it.

    Args:
        planner: an object with ``ContactGraspNet.plan``'s signature (default: built by :meth:`load_planner`).

    Raises:
        GraspNodeError: invalid parameters (the message names the parameter and what is allowed).
    """

    _failure_text = "grasp planning failed"

    def __init__(self, node_name: str = NODE_NAME, *, planner: Any = None, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._settings, self._ids = self._declare_parameters()
        s = self._settings
        self._planner = planner
        self._stats = NodeStats()
        self._throttle = Throttle(s.warn_throttle)
        self._slot: LatestSlot[tuple[Matched, float]] = LatestSlot()
        self._sync = StampSynchronizer(STREAMS, slop=s.sync_slop, queue_size=s.sync_queue_size,
                                       max_age=s.sync_max_age, on_match=self._on_match, on_drop=self._on_drop,
                                       on_reset=self._on_time_reset)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._subs: dict[str, Any] = {}
        self._inputs: dict[str, InputWatch] = {stream: InputWatch(topic=self.resolve_topic_name(topic))
                                               for stream, (_t, topic) in TOPICS.items()}
        self._state = "inactive"
        self._active_since = 0.0
        self._last_frame: dict[str, Any] = {}
        self._diag_last: dict[str, int] = {}

        qos = output_qos(s.output_reliability, s.output_depth)
        self._pub_grasps = self.create_publisher(GraspArray, "grasps", qos, event_callbacks=PublisherEventCallbacks(
            incompatible_qos=partial(self._on_incompatible_qos, "grasps", "subscriber")))
        self._pub_markers = self.create_publisher(MarkerArray, "grasp_markers", qos,
                                                  event_callbacks=PublisherEventCallbacks(incompatible_qos=partial(
                                                      self._on_incompatible_qos, "grasp_markers", "subscriber")))
        self._add_parameter_callbacks_and_diagnostics(s.diagnostics_period)

    # ================================================================== parameters
    @property
    def settings(self) -> GraspNodeSettings:
        return self._settings

    @property
    def ids(self) -> tuple[int, ...]:
        return self._ids

    @property
    def stats(self) -> NodeStats:
        return self._stats

    def _declare_parameters(self) -> tuple[GraspNodeSettings, tuple[int, ...]]:
        # ids first: declare_specs warns about overrides that match no declared parameter
        ids = self.declare_parameter(IDS, Parameter.Type.INTEGER_ARRAY, _IDS_DESCRIPTOR).value
        values = declare_specs(self, SPECS, error=GraspNodeError, fixed_note="read-only: set it at start-up",
                               read_only=True, known_hint=f"Known parameters: {', '.join(_SPECS_BY_NAME)}, {IDS}, "
                                                          "use_sim_time.")
        return GraspNodeSettings.from_flat(values), _ids(ids)

    def _coerce_parameters(self, params: list[Parameter]) -> list[Parameter]:
        """Pre-set: an integer given for a float parameter (``ros2 param set ... score_threshold 1``) is a double."""
        return [coerced(_SPECS_BY_NAME.get(p.name), p) for p in params]

    def _validate_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """On-set: refuse invalid values with a reason (rclpy itself refuses changes to read-only ones)."""
        try:
            self._merged(params)
        except GraspNodeError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _merged(self, params: list[Parameter]) -> tuple[GraspNodeSettings, tuple[int, ...]]:
        flat, ids = self._settings.to_flat(), self._ids
        for p in params:
            if p.name == IDS:
                ids = _ids(p.value)
            elif p.name in _SPECS_BY_NAME:
                flat[p.name] = p.value
        return GraspNodeSettings.from_flat(flat), ids

    def _apply_parameters(self, params: list[Parameter]) -> None:
        """Post-set: take the new values; the worker reads them before its next set."""
        self._settings, self._ids = self._merged(params)
        self._throttle.period = self._settings.warn_throttle
        self._sync.configure(slop=self._settings.sync_slop, max_age=self._settings.sync_max_age)
        changed = ", ".join(f"{p.name}={p.value!r}" for p in params if p.name in _SPECS_BY_NAME or p.name == IDS)
        if changed:
            self.get_logger().info(f"parameters updated: {changed}")

    # ================================================================== planner, start and stop
    @property
    def planner_loaded(self) -> bool:
        return self._planner is not None

    def load_planner(self) -> None:
        """Import and load Contact-GraspNet on ``device`` (a no-op when a planner was handed in).

        Raises:
            GraspExtraMissing: the optional extra is not installed (``make setup-grasp``).
            GraspError: the checkpoint does not load.
        """
        if self._planner is not None:
            return
        from ..grasp import ContactGraspNet  # torch; the extra itself is imported by the constructor

        s = self._settings
        t0 = time.perf_counter()
        self._planner = ContactGraspNet(device=None if s.device == "auto" else s.device, seed=s.seed)
        self.get_logger().info(f"Contact-GraspNet loaded on {self._planner.device} in "
                               f"{time.perf_counter() - t0:.1f} s")

    def start(self) -> None:
        """Start the worker and subscribe to the inputs (once)."""
        if self._worker is not None:
            return
        self._start_worker("grasp_worker")
        s = self._settings
        qos = input_qos(s.input_reliability, s.input_depth)
        for stream, (mtype, topic) in TOPICS.items():
            events = SubscriptionEventCallbacks(incompatible_qos=partial(self._on_incompatible_qos, topic,
                                                                         "publisher"))
            sub = self.create_subscription(mtype, topic, partial(self._on_input, stream), qos,
                                           event_callbacks=events)
            self._subs[stream] = sub
            self._inputs[stream] = InputWatch(topic=sub.topic_name)
        self._state = "active"
        self._active_since = time.monotonic()
        self.get_logger().info(
            f"active: {', '.join(sub.topic_name for sub in self._subs.values())} ({describe(qos)}) -> "
            f"{self._pub_grasps.topic_name}, {self._pub_markers.topic_name}; planning for {self._selection_text()}, "
            f"at most {s.max_grasps} grasp(s) per instance scored >= {s.score_threshold:g}")

    def _selection_text(self) -> str:
        if self._settings.select == "all":
            return "every instance"
        return f"instances with {self._settings.select} in {list(self._ids)}"

    def close(self) -> None:
        """Unsubscribe and stop the worker (idempotent); the node can then be destroyed."""
        for sub in self._subs.values():
            self.destroy_subscription(sub)
        self._subs = {}
        self._stop_worker()
        self._state = "inactive"

    # ================================================================== callbacks (executor thread)
    def _on_input(self, stream: str, msg: Any) -> None:
        """Subscription callback: stamp-match the raw message, nothing else. Never raises."""
        try:
            self._take_input(stream, msg)
        except Exception as exc:
            self._callback_error("input callback", exc)

    def _on_drop(self, stream: str, stamp_ns: int, missing: tuple[str, ...]) -> None:
        self._stats.inc(f"unmatched.{stream}")  # depth and camera_info of frames without instances: normal
        for other in missing:
            self._reject(f"missing_{other}", (
                f"the instances stamped {stamp_ns / 1e9:.3f} s found no {other} message on '{self._topic(other)}' "
                f"within sync.slop = {self._settings.sync_slop:g} s (sync.max_age = {self._settings.sync_max_age:g} "
                f"s, sync.queue_size = {self._settings.sync_queue_size}); {_MISSING_HINTS[other]}."), what="Instances")

    def _on_time_reset(self, stream: str, previous_ns: int, stamp_ns: int, reason: str) -> None:
        self._stats.inc("time_resets")
        self._warn("time_reset", time_reset_warning(self._topic(stream), reason, previous_ns, stamp_ns))

    def _topic(self, stream: str) -> str:
        return self._inputs[stream].topic

    def _problem_text(self, problem: Any) -> str:
        """The warning of an input problem (:func:`check_inputs`'s, whose no-publisher advice is a camera's)."""
        stream = problem.key.removeprefix("no_publisher_")
        if stream == problem.key:
            return problem.warning  # silent publishers: the large-data advice holds here too
        topic, name = self._topic(stream), TOPICS[stream][1]
        if stream in ("instances", "labels"):
            return (f"No publisher on '{topic}' yet: run instance_seg_node in this node's namespace, or remap "
                    f"{name} to its output (-r {name}:=/ns/{name}).")
        return (f"No publisher on '{topic}' yet: remap {name} to the {name} topic instance_seg_node subscribes to "
                f"(e.g. -r {name}:=/camera/...).")

    # ================================================================== worker thread
    def _process(self, m: Matched, t_match: float) -> None:
        from ..grasp import GraspError  # imported with the planner already
        from ..grasp.planner import estimate_up

        planner, s, ids = self._planner, self._settings, self._ids
        if planner is None:
            return
        instances_msg = m.msgs[0]
        try:
            inputs = decode_grasp_inputs(*m.msgs, scale_16uc1=s.depth_scale)
        except FrameRejected as exc:
            return self._reject(exc.reason, str(exc))
        if inputs.without_pixels:
            self._stats.inc("instances_without_pixels", len(inputs.without_pixels))
        selected = select_indices(inputs, s.select, ids)
        t0 = time.perf_counter()
        up = estimate_up(inputs.depth, inputs.K)  # once per frame, not per instance
        grasps: dict[int, list[Any]] = {}
        for index in selected:  # one instance at a time: shutdown waits for one instance, not a whole frame
            if self._stop.is_set():
                return
            try:
                grasps.update(planner.plan(inputs.depth, inputs.K, inputs.labels, [index], max_grasps=s.max_grasps,
                                           score_threshold=s.score_threshold, up=up))
            except GraspError as exc:
                return self._reject("bad_input", str(exc))
        planning_ms = (time.perf_counter() - t0) * 1e3
        out = grasp_array_msg(grasps, selected, inputs.track_ids, instances_msg.header, planning_ms)
        self._pub_grasps.publish(out)
        self._pub_markers.publish(grasp_markers_msg(out))
        now = time.monotonic()
        self._stats.inc("frames_processed")
        self._stats.tick("frames_published", now)
        self._stats.inc("grasps_published", len(out.grasps))
        self._stats.latency((now - t_match) * 1e3, planning_ms, now)
        self._last_frame = {"stamp_ns": m.stamp_ns, "instances": len(inputs.indices), "planned": len(selected),
                            "grasps": len(out.grasps), "planning_ms": round(planning_ms, 1),
                            "size": f"{inputs.K.width}x{inputs.K.height}",
                            "frame_id": instances_msg.header.frame_id}

    # ================================================================== diagnostics
    def _diagnostics(self) -> None:
        now = time.monotonic()
        publishers, problems = self._input_problems(now)
        view = NodeView(
            state=self._state, streams=STREAMS, model_loaded=self._planner is not None,
            backlog=sum(self._sync.pending().values()) + int(self._slot.pending),
            topics={k: w.topic for k, w in self._inputs.items()}, publishers=publishers, last_frame=self._last_frame,
            input_problems=[p.summary for p in problems])
        self._publish_status(view, now, "grasp planning")

    def _extra_values(self) -> dict[str, Any]:
        return {"grasps_published": self._stats.count("grasps_published"),
                "instances_without_pixels": self._stats.count("instances_without_pixels"),
                "select": self._selection_text()}


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=NODE_NAME,
        description="Contact-GraspNet grasps for the instances of instance_seg_node (ROS 2 node). Parameters and "
                    "remappings go after --ros-args, e.g. --ros-args -r depth:=/camera/depth -p max_grasps:=3",
    )
    return parser.parse_args(remove_ros_args(argv)[1:])


def main(args: list[str] | None = None) -> int:
    """Console entry point ``grasp_node``; ``args`` is a full argv (program name first).

    Returns:
        0 after SIGINT / SIGTERM, 1 when the planner cannot be loaded (the extra is missing: ``make setup-grasp``),
        2 for invalid parameters.
    """
    argv = list(sys.argv if args is None else args)
    _parse_args(argv)
    return run_node(argv, NODE_NAME, GraspNode, GraspNodeError, _run)


def _run(node: GraspNode) -> int:
    """Load the planner, start ``node`` and spin it."""
    try:
        node.load_planner()
    except ImportError as exc:  # GraspExtraMissing (its message names make setup-grasp), or torch itself
        text = one_line(exc)
        if "make setup-grasp" not in text:
            text += " (grasp_node needs the Contact-GraspNet extra: run `make setup-grasp`)"
        node.get_logger().error(f"cannot plan grasps: {text}")
        return 1
    except Exception as exc:
        node.get_logger().error(f"cannot load Contact-GraspNet: {one_line(exc, with_type=True)}")
        return 1
    node.start()
    return spin(node)


if __name__ == "__main__":
    sys.exit(main())
