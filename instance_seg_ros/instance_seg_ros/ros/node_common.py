"""What ``instance_seg_node`` and ``grasp_node`` share: the worker thread, throttled warnings, refusals, the
stamp-matching input path, /diagnostics, and the ``main()`` frame (init, invalid parameters, spin, shutdown).

:class:`WorkerNodeMixin` goes first among a node's bases (``class GraspNode(WorkerNodeMixin, Node)``); the node sets
the attributes and methods its docstring lists. :func:`run_node` is the body of a console entry point.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from ..core.sync import Matched, StampError
from ..core.text import one_line
from .conversions import stamp_to_ns
from .diagnostics import InputProblem, NodeView, check_inputs, diagnostic_array, node_status
from .qos import incompatible_qos_warning, policy_name

__all__ = ["WorkerNodeMixin", "run_node", "spin"]


class WorkerNodeMixin:
    """Worker thread, warnings and diagnostics of a node that stamp-matches its inputs into a ``LatestSlot`` and
    processes the newest set on one worker thread.

    The node sets ``_stats`` (NodeStats), ``_throttle`` (Throttle), ``_slot`` (LatestSlot of ``(Matched,
    t_match)``), ``_stop`` (threading.Event), ``_worker``, ``_sync`` (StampSynchronizer or None), ``_subs``,
    ``_inputs`` (stream -> InputWatch), ``_settings`` (with ``stale_timeout``), ``_state``, ``_active_since``,
    ``_last_frame`` and ``_diag_last``, and defines ``_process(matched, t_match)``, ``_diagnostics()`` and the
    three parameter callbacks (``_coerce_parameters``, ``_validate_parameters``, ``_apply_parameters``).
    """

    #: start of the error text when ``_process`` raises ("<this> on the frame stamped ...")
    _failure_text = "pipeline failed"

    def _add_parameter_callbacks_and_diagnostics(self, period: float) -> None:
        """Register the parameter callbacks; create the /diagnostics publisher and its timer (every ``period`` s)."""
        self.add_pre_set_parameters_callback(self._coerce_parameters)
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # steady clock: diagnostics and stale-input checks keep running when /clock stalls under use_sim_time
        self._diag_timer = self.create_timer(period, self._publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))

    # ================================================================== worker thread
    def _start_worker(self, name: str) -> None:
        """Reopen the slot and start the worker thread (named ``name``)."""
        self._slot.reopen()
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name=name, daemon=True)
        self._worker.start()

    def _stop_worker(self) -> None:
        self._stop.set()
        self._slot.close()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=30.0)
            if self._worker.is_alive():
                self.get_logger().warning("the worker thread did not stop within 30 s; leaving it behind")
        self._worker = None

    def _work(self) -> None:
        while not self._stop.is_set():
            item = self._slot.take(timeout=0.5)
            if item is None:
                continue
            matched, t_match = item
            try:
                self._process(matched, t_match)
            except Exception as exc:  # an exception in the pipeline (or planner) never kills the node
                if self._stop.is_set() or not rclpy.ok(context=self.context):
                    return
                self._stats.inc("pipeline_errors")
                text = (f"{self._failure_text} on the frame stamped {matched.stamp_ns / 1e9:.3f} s: "
                        f"{one_line(exc, with_type=True)}")
                self._stats.error(text)
                self._warn("pipeline_error", text, error=True)
                self.get_logger().debug(traceback.format_exc())

    # ================================================================== callbacks (executor thread)
    def _take_input(self, stream: str, msg: Any, source: Any = None) -> None:
        now = time.monotonic()
        self._inputs[stream].last_rx = now
        self._stats.tick(f"received.{stream}", now)
        sync = self._sync
        if sync is None:
            return
        try:
            sync.add(stream, stamp_to_ns(msg.header.stamp), msg, source)
        except StampError as exc:
            self._reject(exc.reason, f"{exc} (on '{self._inputs[stream].topic}')", what="Message")

    def _on_match(self, m: Matched) -> None:
        self._stats.tick("frames_matched")
        if self._slot.put((m, time.monotonic())):
            self._stats.inc("frames_skipped")

    def _on_incompatible_qos(self, topic: str, other: str, event: Any) -> None:
        self._stats.inc("qos_incompatible")
        self._stats.inc(f"qos_incompatible.{topic}")
        self._warn(f"qos_{topic}", incompatible_qos_warning(topic, other, policy_name(event.last_policy_kind)))

    def _callback_error(self, where: str, exc: Exception) -> None:
        self._stats.inc("callback_errors")
        text = f"{where} failed: {one_line(exc, with_type=True)}"
        self._stats.error(text)
        self._warn(f"callback_error_{where}", text, error=True)
        self.get_logger().debug(traceback.format_exc())

    # ================================================================== problems
    def _warn(self, key: str, text: str, *, error: bool = False) -> None:
        emit, held = self._throttle.ready(key)
        if emit:
            more = f" ({held} more since the last such warning)" if held else ""
            # separate call sites: rclpy refuses a second severity at one logging call site
            if error:
                self.get_logger().error(text + more)
            else:
                self.get_logger().warning(text + more)

    def _reject(self, reason: str, text: str, what: str = "Frame") -> None:
        """Count a refused frame, set or message under ``reason`` and warn, throttled per reason."""
        self._stats.inc(f"rejected.{reason}")
        self._stats.error(f"{reason}: {text}")
        self._warn(reason, f"{what} dropped ({reason}): {text}")

    # ================================================================== diagnostics
    def _publish_diagnostics(self) -> None:
        try:
            self._diagnostics()
        except Exception as exc:  # a timer callback must not stop the executor
            self._callback_error("diagnostics", exc)

    def _problem_text(self, problem: InputProblem) -> str:
        """The warning of an input problem (:func:`check_inputs`'s own; a node may say more)."""
        return problem.warning

    def _input_problems(self, now: float) -> tuple[dict[str, int], list[InputProblem]]:
        """The publisher count per input, and (while active) the input problems, each warned about (throttled)."""
        publishers = {k: sub.get_publisher_count() for k, sub in list(self._subs.items())}
        problems = check_inputs(self._inputs, publishers, now, active_since=self._active_since,
                                stale_timeout=self._settings.stale_timeout) if self._state == "active" else []
        for problem in problems:
            self._warn(problem.key, self._problem_text(problem))
        return publishers, problems

    def _extra_values(self) -> dict[str, Any]:
        """Values a node adds to its status after the common ones (none here)."""
        return {}

    def _publish_status(self, view: NodeView, now: float, what: str) -> None:
        """Publish the status of ``view`` on /diagnostics, named ``"<node name>: <what>"``."""
        status = node_status(self._stats, view, now, since=self._diag_last)
        self._diag_last = status.totals
        values = dict(status.values)
        values.update(self._extra_values())
        try:
            self._diag_pub.publish(diagnostic_array(
                self.get_clock().now().to_msg(), f"{self.get_name()}: {what}", status.level, status.message,
                values, hardware_id=str(self._last_frame.get("frame_id", ""))))
        except Exception:  # the context is going down
            pass


def spin(node: Any) -> int:
    """Spin ``node`` on a single-threaded executor until shutdown; 0."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.spin()
    return 0


def run_node(argv: list[str], node_name: str, create: Callable[[], Any],
             invalid: type[Exception] | tuple[type[Exception], ...], body: Callable[[Any], int]) -> int:
    """The frame of a node's ``main()``: init rclpy with ``argv``, ``create()`` the node, run ``body(node)`` and
    return its exit code; always close and destroy the node and shut rclpy down.

    Returns:
        ``body``'s code; 2 when ``create`` raised ``invalid`` (logged as one "invalid parameters" line under
        ``node_name``); 0 after SIGINT / SIGTERM.
    """
    rclpy.init(args=argv)
    node: Any = None
    try:
        try:
            node = create()
        except invalid as exc:
            rclpy.logging.get_logger(node_name).error(f"invalid parameters: {one_line(exc)}")
            return 2
        return body(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
