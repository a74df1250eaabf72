"""``instance_seg_node``: the ROS 2 adapter around :class:`~instance_seg_ros.core.pipeline.Segmenter`.

Topics (relative names, remapped at launch):

- in: ``image`` (sensor_msgs/Image; or ``image/compressed``, sensor_msgs/CompressedImage, with
  ``input.compressed``), ``depth`` (sensor_msgs/Image 16UC1 mm or 32FC1 m, registered to color),
  ``camera_info`` (sensor_msgs/CameraInfo of the color camera).
- out: ``instances`` (instance_seg_msgs/InstanceArray, header of the color image), ``instance_labels``
  (mono16), ``instance_markers`` (visualization_msgs/MarkerArray), ``debug_image`` (rgb8) and
  ``/diagnostics``.

Threads: subscription callbacks only stamp-match the raw messages (:class:`StampSynchronizer`) and put
the newest complete set into a :class:`LatestSlot`; one worker thread decodes and runs the pipeline and
publishes. A set that is replaced before the worker takes it is counted as skipped, so latency stays
bounded when frames come faster than inference. Bad input never stops the node: the frame is
refused with a throttled warning naming the problem and counted by reason in /diagnostics.

Lifecycle: the node is an rclpy LifecycleNode. With ``managed:=true`` (or ``--managed``) it waits
for a lifecycle manager: configure loads and warms the model, activate subscribes and starts the
worker, deactivate stops them and frees the model (GPU memory), cleanup drops the publishers. Without
it the node configures and activates itself, and exits non-zero with one error line when the model
cannot be loaded.

Usage::

    instance_seg_node --ros-args --params-file config/realsense.yaml \\
        -r image:=/camera/camera/color/image_raw -r depth:=/camera/camera/aligned_depth_to_color/image_raw \\
        -r camera_info:=/camera/camera/color/camera_info
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
import traceback
from functools import partial
from typing import Any

from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks, UnsupportedEventTypeError
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..core.config import Config, ConfigError
from ..core.sync import LatestSlot, Matched, StampSynchronizer
from ..core.text import one_line
from ..core.tracking import Tracker
from ..core.types import FrameError
from .diagnostics import (
    InputWatch,
    NodeStats,
    NodeView,
    Throttle,
    missing_input_text,
    time_reset_warning,
)
from .frame_inputs import FrameRejected, count_processed, decode_frame, frame_summary, publisher_id
from .node_common import WorkerNodeMixin, run_node, spin
from .outputs import create_publishers, publish_result
from .params import NodeSettings, all_specs, coerced, declare_specs, merged, refusal, split_flat
from .qos import describe, input_qos, transport_warning

__all__ = ["STREAMS", "InstanceSegNode", "main"]

NODE_NAME = "instance_seg_node"
STREAMS = ("image", "depth", "camera_info")


class InstanceSegNode(WorkerNodeMixin, LifecycleNode):
    """Amodal instance segmentation node (see the module docstring for topics and behaviour).

    Args:
        node_name: the node's name (parameters files address it by this name).
        managed: overrides the ``managed`` parameter when not None.
        **kwargs: passed to ``rclpy.lifecycle.LifecycleNode`` (``parameter_overrides``, ``context`` ...).

    Raises:
        ConfigError: a parameter from the params file or the command line is invalid (the message names it).
    """

    def __init__(self, node_name: str = NODE_NAME, *, managed: bool | None = None, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._specs = {s.name: s for s in all_specs()}
        self._config, self._settings = self._declare_parameters()
        if managed is not None:
            self._settings = dataclasses.replace(self._settings, managed=bool(managed))
        self._stats = NodeStats()
        self._throttle = Throttle(self._settings.warn_throttle)
        self._state = "unconfigured"
        self._configure_error = ""
        self._seg = None
        self._tracker: Tracker | None = None
        self._track_reset = ""  # set by the synchronizer's time-reset callback, consumed by the worker
        self._sync: StampSynchronizer | None = None
        self._slot: LatestSlot[tuple[Matched, float]] = LatestSlot()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._subs: dict[str, Any] = {}
        self._inputs: dict[str, InputWatch] = {}
        self._pubs: dict[str, Any] = {}
        self._active_since = 0.0
        self._last_frame: dict[str, Any] = {}
        self._diag_last: dict[str, int] = {}

        self._add_parameter_callbacks_and_diagnostics(self._settings.diagnostics_period)

    # ================================================================== parameters
    @property
    def managed(self) -> bool:
        return self._settings.managed

    @property
    def config(self) -> Config:
        return self._config

    @property
    def settings(self) -> NodeSettings:
        return self._settings

    @property
    def state(self) -> str:
        """``unconfigured``, ``inactive``, ``active`` or ``finalized``."""
        return self._state

    @property
    def stats(self) -> NodeStats:
        return self._stats

    def _declare_parameters(self) -> tuple[Config, NodeSettings]:
        values = declare_specs(self, self._specs.values(), known_hint=(
            "Known parameters: see config/default.yaml or `ros2 param list "
            f"{self.get_fully_qualified_name()}`."))
        cfg_flat, node_flat = split_flat(values)
        return Config.from_flat(cfg_flat), NodeSettings.from_flat(node_flat)

    def _coerce_parameters(self, params: list[Parameter]) -> list[Parameter]:
        """Pre-set: an integer given for a float parameter (``ros2 param set ... depth.max 2``) becomes a double, and
        a boolean for a string parameter with an ``off`` / ``on`` choice (YAML's bare ``off``) the word."""
        return [coerced(self._specs.get(p.name), p) for p in params]

    def _validate_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """On-set: refuse invalid values, and fixed ones while configured, with a reason."""
        reason = refusal(self._config, self._settings, params, self._state)
        return SetParametersResult(successful=not reason, reason=reason)

    def _apply_parameters(self, params: list[Parameter]) -> None:
        """Post-set: take the new values; the worker hands a new config to the pipeline before its next frame."""
        try:
            cfg, settings = merged(self._config, self._settings, params)
        except ConfigError as exc:  # validated in the on-set callback; cannot happen
            self._callback_error("parameters", exc)
            return
        self._config, self._settings = cfg, settings
        self._throttle.period = settings.warn_throttle
        if self._sync is not None:
            self._sync.configure(slop=cfg.sync.slop, max_age=cfg.sync.max_age)
        changed = ", ".join(f"{p.name}={p.value!r}" for p in params if p.name in self._specs)
        if changed:
            self.get_logger().info(f"parameters updated: {changed}")

    # ================================================================== lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            from ..core.pipeline import Segmenter

            self._configure_error = ""
            seg = Segmenter(self._config, log=self.get_logger().info)
            seg.load()
            self._seg = seg
            self._tracker = Tracker(self._config.tracking)
            self._pubs = create_publishers(self, self._settings, self._on_incompatible_qos)
            cfg = self._config
            self._sync = StampSynchronizer(
                STREAMS, slop=cfg.sync.slop, queue_size=cfg.sync.queue_size, max_age=cfg.sync.max_age,
                on_match=self._on_match, on_drop=self._on_drop, on_reset=self._on_time_reset,
            )
        except Exception as exc:  # a model that cannot load must not kill a managed node
            self._configure_error = f"cannot configure: {one_line(exc, with_type=True)}"
            self._stats.error(self._configure_error)
            self.get_logger().error(self._configure_error)
            self.get_logger().debug(traceback.format_exc())
            self._teardown()
            return TransitionCallbackReturn.FAILURE
        self._state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            if self._seg is not None and not self._seg.loaded:  # deactivate freed it
                self._seg.update_config(self._config)
                self._seg.load()
            self._sync.reset()
            self._slot.clear()
            self._start_worker("instance_seg_worker")
            self._create_subscriptions()
        except Exception as exc:
            text = f"cannot activate: {one_line(exc, with_type=True)}"
            self._stats.error(text)
            self.get_logger().error(text)
            self._stop_worker()
            self._destroy_subscriptions()
            return TransitionCallbackReturn.FAILURE
        self._state = "active"
        self._active_since = time.monotonic()
        s = self._settings
        warning = transport_warning(dict(os.environ), s.input_reliability)
        if warning:
            self.get_logger().warning(warning)
        topics = ", ".join(sub.topic_name for sub in self._subs.values())
        self.get_logger().info(
            f"active: {topics} ({describe(input_qos(s.input_reliability, s.input_depth))}) -> "
            f"{', '.join(p.topic_name for p in self._pubs.values())}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_subscriptions()
        self._stop_worker()
        if self._seg is not None:
            self._seg.release()
        self._state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    @property
    def configure_error(self) -> str:
        """Why the last configure failed ('' when it did not)."""
        return self._configure_error

    def close(self) -> None:
        """Stop the worker and free everything (idempotent); the node can then be destroyed."""
        self._teardown()

    def _teardown(self) -> None:
        self._destroy_subscriptions()
        self._stop_worker()
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs = {}
        if self._seg is not None:
            self._seg.release()
        self._seg = None
        self._sync = None

    # ================================================================== entities
    def _create_subscriptions(self) -> None:
        s = self._settings
        qos = input_qos(s.input_reliability, s.input_depth)
        color = (CompressedImage, "image/compressed") if s.compressed else (Image, "image")
        for stream, (mtype, topic) in zip(STREAMS, (color, (Image, "depth"), (CameraInfo, "camera_info")),
                                          strict=True):
            callback = partial(self._on_input, stream)
            events = {"incompatible_qos": partial(self._on_incompatible_qos, topic, "publisher"),
                      "message_lost": partial(self._on_message_lost, stream)}
            try:
                sub = self.create_subscription(mtype, topic, callback, qos,
                                               event_callbacks=SubscriptionEventCallbacks(**events))
            except UnsupportedEventTypeError:  # middleware without message-lost events
                del events["message_lost"]
                sub = self.create_subscription(mtype, topic, callback, qos,
                                               event_callbacks=SubscriptionEventCallbacks(**events))
            self._subs[stream] = sub
            self._inputs[stream] = InputWatch(topic=sub.topic_name)

    def _destroy_subscriptions(self) -> None:
        for sub in self._subs.values():
            self.destroy_subscription(sub)
        self._subs = {}

    # ================================================================== callbacks (executor thread)
    def _on_input(self, stream: str, msg: Any, info: Any) -> None:
        """Subscription callback (with message info: the publisher's GID tells a restarted camera from
        reordered messages): stamp-match the raw message; no decoding here. Never raises (an exception would
        stop the executor)."""
        try:
            self._take_input(stream, msg, publisher_id(info))
        except Exception as exc:
            self._callback_error("input callback", exc)

    def _on_time_reset(self, stream: str, previous_ns: int, stamp_ns: int, reason: str) -> None:
        self._stats.inc("time_resets")
        self._stats.inc(f"time_resets.{reason}")
        self._warn("time_reset", time_reset_warning(self._topic(stream), reason, previous_ns, stamp_ns))
        self._track_reset = f"input time reset on {self._topic(stream)} ({reason})"

    def _on_drop(self, stream: str, stamp_ns: int, missing: tuple[str, ...]) -> None:
        self._stats.inc(f"unmatched.{stream}")
        sync = self._config.sync
        for other in missing:
            self._reject(f"missing_{other}",
                         missing_input_text(other, self._topic(other), stamp_ns, sync.slop, sync.max_age))

    def _topic(self, stream: str) -> str:
        return self._inputs[stream].topic if stream in self._inputs else stream

    def _on_message_lost(self, stream: str, event: Any) -> None:
        self._stats.inc(f"messages_lost.{stream}", int(getattr(event, "total_count_change", 1)) or 1)

    # ================================================================== worker thread
    def _process(self, m: Matched, t_match: float) -> None:
        from ..core.pipeline import FrameSkipped  # imported (with torch) by on_configure already

        seg, cfg, s = self._seg, self._config, self._settings
        if seg is None:
            return
        if seg.config is not cfg:
            seg.update_config(cfg)
        color_msg = m.msgs[0]
        t0 = time.perf_counter()
        try:
            color, depth, K = decode_frame(*m.msgs, cfg, frame_id_check=s.frame_id_check)
        except FrameRejected as exc:
            return self._reject(exc.reason, str(exc))
        decode_ms = (time.perf_counter() - t0) * 1e3
        try:
            result = seg.process(color, depth, K)
        except FrameError as exc:
            return self._reject("frame_mismatch", f"{exc}")
        except FrameSkipped as exc:  # out of accelerator memory even at a reduced size: skip it, keep running
            self._stats.inc(f"skipped.{exc.reason}")
            self._stats.error(f"{exc.reason}: {exc}")
            return self._warn(exc.reason, f"Frame stamped {m.stamp_ns / 1e9:.3f} s skipped ({exc.reason}): {exc}")
        result.timings["decode"] = decode_ms
        self._track(m.stamp_ns, result, cfg)
        count_processed(self._stats, result, support_plane=cfg.filter.support_plane != "off")
        publish_result(self._pubs, self._settings, result, color, color_msg.header)
        now = time.monotonic()
        self._stats.tick("frames_published", now)
        self._stats.latency((now - t_match) * 1e3, sum(v for k, v in result.timings.items() if k != "total"), now)
        self._last_frame = frame_summary(m.stamp_ns, result, color_msg.header.frame_id)

    def _track(self, stamp_ns: int, result: Any, cfg: Config) -> None:
        """Give ``result``'s instances their track ids (``tracking.*``); a time reset of the inputs restarts it."""
        tracker = self._tracker
        if tracker is None:
            return
        if tracker.config is not cfg.tracking:
            tracker.reconfigure(cfg.tracking)
        reason, self._track_reset = self._track_reset, ""
        if reason:
            tracker.reset(reason, stamp_ns / 1e9)
        t0 = time.perf_counter()
        tracker.update(stamp_ns / 1e9, result.instances)
        result.timings["tracking"] = (time.perf_counter() - t0) * 1e3
        for event in tracker.drain_events():  # counted in the tracker's stats (diagnostics: tracking.resets)
            self._warn("tracking_reset", event.message)

    # ================================================================== diagnostics
    def _diagnostics(self) -> None:
        now = time.monotonic()
        publishers, problems = self._input_problems(now)
        seg, sync = self._seg, self._sync
        view = NodeView(
            state=self._state, streams=STREAMS, model_loaded=bool(seg is not None and seg.loaded),
            configure_error=self._configure_error, oom_retries=int(getattr(seg, "oom_retries", 0)),
            backlog=sum((sync.pending() if sync is not None else {}).values()) + int(self._slot.pending),
            topics={k: w.topic for k, w in self._inputs.items()}, publishers=publishers, last_frame=self._last_frame,
            input_problems=[p.summary for p in problems],
            tracking=dataclasses.asdict(self._tracker.stats) if self._tracker is not None else {})
        self._publish_status(view, now, "instance segmentation")


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=NODE_NAME,
        description="Amodal instance segmentation of RGB-D frames (ROS 2 node). Parameters and remappings go after "
                    "--ros-args, e.g. --ros-args --params-file config/default.yaml -r image:=/camera/color/image_raw",
    )
    parser.add_argument("--managed", action="store_true",
                        help="run as a managed lifecycle node (same as -p managed:=true)")
    return parser.parse_args(remove_ros_args(argv)[1:])


def main(args: list[str] | None = None) -> int:
    """Console entry point ``instance_seg_node``; ``args`` is a full argv (program name first)."""
    argv = list(sys.argv if args is None else args)
    ns = _parse_args(argv)
    return run_node(argv, NODE_NAME, lambda: InstanceSegNode(managed=True if ns.managed else None), ConfigError,
                    _run)


def _run(node: InstanceSegNode) -> int:
    """Configure and activate ``node`` unless it is managed, then spin it."""
    if node.managed:
        node.get_logger().info("managed node: waiting for the configure and activate transitions")
    else:
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return 1  # on_configure logged the one-line reason
        if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            return 1
    return spin(node)


if __name__ == "__main__":
    sys.exit(main())
