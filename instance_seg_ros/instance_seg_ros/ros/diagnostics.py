"""Run-time statistics of the node and what its /diagnostics say about them.

:class:`NodeStats` is thread-safe (subscription callbacks, the worker thread and the diagnostics timer
all touch it). :func:`check_inputs` (inputs without a publisher, or silent ones) and :func:`node_status`
(level, message and values of the status) are plain functions of counters, rates and the node's state,
tested without a node. Only :func:`diagnostic_array` builds a ``diagnostic_msgs/DiagnosticArray``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from .qos import LARGE_DATA_HINT

__all__ = [
    "ERROR",
    "OK",
    "WARN",
    "InputProblem",
    "InputWatch",
    "NodeStats",
    "NodeStatus",
    "NodeView",
    "RateMeter",
    "Throttle",
    "check_inputs",
    "diagnostic_array",
    "frame_id_mismatch_text",
    "missing_input_text",
    "node_status",
    "problem_totals",
    "time_reset_warning",
]

#: diagnostic_msgs/DiagnosticStatus levels
OK, WARN, ERROR = 0, 1, 2


class RateMeter:
    """Events per second over a sliding window (monotonic seconds)."""

    def __init__(self, window: float = 5.0) -> None:
        if not window > 0:
            raise ValueError(f"window must be a positive number of seconds, got {window}.")
        self.window = float(window)
        self._t: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._t.append(now)
        self._trim(now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._t) < 2:
            return 0.0
        span = max(now - self._t[0], 1e-9)
        return (len(self._t) - 1) / span if now - self._t[-1] < self.window else 0.0

    def _trim(self, now: float) -> None:
        while self._t and self._t[0] < now - self.window:
            self._t.popleft()


class Throttle:
    """At most one ``True`` per key every ``period`` seconds; counts what was held back in between."""

    def __init__(self, period: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = float(period)
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def ready(self, key: str) -> tuple[bool, int]:
        """``(emit, held_back)``: whether to emit now, and how many were suppressed since the last emit."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is None or now - last >= self.period:
                self._last[key] = now
                return True, self._held.pop(key, 0)
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0


class NodeStats:
    """Counters, rates and latencies of the node (thread-safe).

    Counter keys used by the node: ``received.<stream>``, ``frames_matched``, ``frames_processed``,
    ``frames_published``, ``frames_skipped``, ``rejected.<reason>``, ``unmatched.<stream>``,
    ``pipeline_errors``, ``qos_incompatible.<topic>``, ``messages_lost.<stream>``.
    """

    def __init__(self, window: float = 5.0) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._rates: dict[str, RateMeter] = {}
        self._window = window
        self._latency: deque[tuple[float, float, float]] = deque()  # (monotonic, latency ms, pipeline ms)
        self.last_error = ""
        self.last_error_time = 0.0

    def inc(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def tick(self, key: str, now: float | None = None) -> None:
        """Count one event and feed the ``key`` rate meter."""
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            meter = self._rates.get(key)
            if meter is None:
                meter = self._rates[key] = RateMeter(self._window)
            meter.tick(now)

    def set(self, key: str, value: int) -> None:
        with self._lock:
            self._counts[key] = int(value)

    def error(self, text: str) -> None:
        with self._lock:
            self.last_error, self.last_error_time = text, time.monotonic()

    def latency(self, latency_ms: float, pipeline_ms: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._latency.append((now, float(latency_ms), float(pipeline_ms)))
            while self._latency and self._latency[0][0] < now - self._window:
                self._latency.popleft()

    def count(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, 0)

    def counts(self, prefix: str = "") -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self._counts.items() if k.startswith(prefix)}

    def rate(self, key: str, now: float | None = None) -> float:
        with self._lock:
            meter = self._rates.get(key)
            return meter.rate(now) if meter is not None else 0.0

    def latency_summary(self, now: float | None = None) -> dict[str, float]:
        """Mean and max of the match-to-publish latency and of the pipeline time (ms) over the window."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [(lat, pipe) for t, lat, pipe in self._latency if t >= now - self._window]
        if not recent:
            return {}
        lat = [r[0] for r in recent]
        pipe = [r[1] for r in recent]
        return {"latency_ms_mean": sum(lat) / len(lat), "latency_ms_max": max(lat),
                "pipeline_ms_mean": sum(pipe) / len(pipe)}


# ---------------------------------------------------------------------------------------- stale inputs
@dataclass
class InputWatch:
    """Book-keeping of one input subscription (monotonic seconds)."""

    topic: str
    last_rx: float | None = None  # time of the last message
    publisher_since: float | None = None  # time a publisher was first seen (None: none now)


@dataclass(frozen=True)
class InputProblem:
    """An input that has no publisher, or publishers that deliver nothing."""

    key: str  # throttle key of its warning
    summary: str  # its part of the diagnostics message
    warning: str  # the log line


def check_inputs(watches: Mapping[str, InputWatch], publishers: Mapping[str, int], now: float, *,
                 active_since: float, stale_timeout: float) -> list[InputProblem]:
    """The problems of the subscribed inputs (``publishers``: stream -> publisher count, in order).

    An input without a publisher is a problem once the node has been active for ``stale_timeout`` s; one with
    publishers, once nothing arrived for ``stale_timeout`` s since the later of its last message and the time its
    publishers appeared (recorded in ``watches[stream].publisher_since``, which this updates). A ``stale_timeout``
    of 0 disables the checks.
    """
    problems: list[InputProblem] = []
    if stale_timeout <= 0:
        return problems
    for stream, npub in publishers.items():
        w = watches[stream]
        if npub == 0:
            w.publisher_since = None
            if now - active_since > stale_timeout:
                problems.append(InputProblem(
                    f"no_publisher_{stream}", f"no publisher on {w.topic}",
                    f"No publisher on '{w.topic}' yet; remap the node's '{stream}' input to the camera's topic (e.g. "
                    f"-r {stream}:=/camera/...) or use a launch file camera preset."))
            continue
        if w.publisher_since is None:
            w.publisher_since = now
        quiet = now - max(w.last_rx or 0.0, w.publisher_since)
        if quiet > stale_timeout:
            problems.append(InputProblem(
                f"stale_{stream}", f"{w.topic} silent for {quiet:.0f} s",
                f"'{w.topic}' has {npub} publisher(s) but delivered nothing for {quiet:.0f} s. " + LARGE_DATA_HINT))
    return problems


# ---------------------------------------------------------------------------------------- input problems
_TIME_RESET_CAUSES = {
    "jump_back": "time jumped back (a looping bag or a restarted simulation)",
    "new_source": "a new publisher started with older stamps (the camera was restarted)",
    "restarted_clock": "stamps kept arriving older than before (a clock that started over)",
}


def time_reset_warning(topic: str, reason: str, previous_ns: int, stamp_ns: int) -> str:
    """The warning when the synchronizer restarts because the input time base on ``topic`` restarted
    (``reason``: ``jump_back``, ``new_source`` or ``restarted_clock``)."""
    return (f"Input time base restarted on '{topic}': {_TIME_RESET_CAUSES[reason]}; stamp {stamp_ns / 1e9:.3f} s "
            f"after {previous_ns / 1e9:.3f} s. Queued messages were dropped and matching starts over.")


def missing_input_text(stream: str, topic: str, stamp_ns: int, slop: float, max_age: float) -> str:
    """Why the image stamped ``stamp_ns`` was dropped unmatched: no ``stream`` message on ``topic`` matched it."""
    hint = ("publish camera_info with the same stamps as the image and check that it is remapped"
            if stream == "camera_info" else
            "depth must be registered to color and stamped like it (e.g. aligned_depth_to_color)")
    return (f"the image stamped {stamp_ns / 1e9:.3f} s found no {stream} message on '{topic}' within sync.slop = "
            f"{slop:g} s before a newer frame was complete or it aged out (sync.max_age = {max_age:g} s); {hint}.")


def frame_id_mismatch_text(image: str, depth: str, camera_info: str) -> str:
    """Why a frame whose messages name different ``header.frame_id`` s is refused ('' when they agree)."""
    if len({image, depth, camera_info}) == 1:
        return ""
    return (f"frame_id differs between image ('{image}'), depth ('{depth}') and camera_info ('{camera_info}'); "
            "depth must be registered to the color camera (e.g. aligned_depth_to_color), or set "
            "input.frame_id_check:=false if the frames are the same under different names.")


# ---------------------------------------------------------------------------------------- status
@dataclass(frozen=True)
class NodeView:
    """The node's state as its diagnostics report it (besides :class:`NodeStats`)."""

    state: str  # unconfigured, inactive, active or finalized
    streams: tuple[str, ...]  # input streams (a rate_hz.<stream> value each)
    model_loaded: bool = False
    configure_error: str = ""  # why the last configure failed
    oom_retries: int = 0
    backlog: int = 0  # messages waiting in the synchronizer and the worker's slot
    topics: Mapping[str, str] = field(default_factory=dict)  # stream -> resolved input topic
    publishers: Mapping[str, int] = field(default_factory=dict)  # stream -> publisher count (while subscribed)
    last_frame: Mapping[str, Any] = field(default_factory=dict)  # what the last published frame held
    input_problems: Sequence[str] = ()  # summaries of :func:`check_inputs`
    tracking: Mapping[str, Any] = field(default_factory=dict)  # the tracker's stats (core.tracking.TrackerStats)


@dataclass(frozen=True)
class NodeStatus:
    """One /diagnostics status: ``level`` (:data:`OK`, :data:`WARN`, :data:`ERROR`), ``message``, ``values``, and
    the problem ``totals`` to hand to the next :func:`node_status` as ``since``."""

    level: int
    message: str
    values: dict[str, Any]
    totals: dict[str, int]


def problem_totals(stats: NodeStats) -> dict[str, int]:
    """Counts of everything that makes the status WARN or ERROR when it grows."""
    return {
        "rejected": sum(stats.counts("rejected.").values()),
        "pipeline_errors": stats.count("pipeline_errors"),
        "callback_errors": stats.count("callback_errors"),
        "qos_incompatible": stats.count("qos_incompatible"),
        "skipped": sum(stats.counts("skipped.").values()),
    }


def _status_values(st: NodeStats, view: NodeView, now: float) -> dict[str, Any]:
    rejected = st.counts("rejected.")
    values: dict[str, Any] = {
        "state": view.state,
        "model_loaded": bool(view.model_loaded),
        "input_rate_hz": st.rate("frames_matched", now),
        "output_rate_hz": st.rate("frames_published", now),
        **{f"rate_hz.{k}": st.rate(f"received.{k}", now) for k in view.streams},
        **st.latency_summary(now),
        "frames_matched": st.count("frames_matched"),
        "frames_processed": st.count("frames_processed"),
        "frames_published": st.count("frames_published"),
        "frames_skipped": st.count("frames_skipped"),
        "frames_rejected": sum(rejected.values()),
        **dict(sorted(rejected.items())),
        **dict(sorted(st.counts("unmatched.").items())),
        **dict(sorted(st.counts("received.").items())),
        "pipeline_errors": st.count("pipeline_errors"),
        "oom_retries": int(view.oom_retries),
        **{k: st.count(k) for k in ("support_plane.frames_with_plane", "support_plane.frames_without_plane",
                                    "support_plane.instances_dropped")},
        **dict(sorted(st.counts("skipped.").items())),
        "callback_errors": st.count("callback_errors"),
        "qos_incompatible": st.count("qos_incompatible"),
        **dict(sorted(st.counts("messages_lost.").items())),
        "backlog": view.backlog,
        **{f"input.{k}": topic for k, topic in view.topics.items()},
        **{f"publishers.{k}": n for k, n in view.publishers.items()},
        **{f"tracking.{k}": v for k, v in view.tracking.items()},
    }
    values.update({f"last_frame.{k}": v for k, v in view.last_frame.items()})
    if st.last_error:
        values["last_problem"] = st.last_error
    return values


def _status_level(view: NodeView, new: Mapping[str, int], values: Mapping[str, Any],
                  last_error: str) -> tuple[int, str]:
    if view.configure_error:
        return ERROR, view.configure_error
    if new["pipeline_errors"] > 0 or new["callback_errors"] > 0:
        return ERROR, f"{new['pipeline_errors'] + new['callback_errors']} error(s): {last_error}"
    if view.state != "active":
        return WARN, f"{view.state} (not processing)"
    if new["rejected"] > 0 or view.input_problems or new["qos_incompatible"] > 0 or new["skipped"] > 0:
        parts = [f"{new['rejected']} frame(s) rejected"] if new["rejected"] else []
        if new["skipped"]:
            parts.append(f"{new['skipped']} frame(s) skipped (out of memory)")
        parts += view.input_problems
        if new["qos_incompatible"]:
            parts.append("incompatible QoS")
        return WARN, "; ".join(parts)
    lat = values.get("latency_ms_mean")
    return OK, (f"{values['input_rate_hz']:.1f} Hz in, {values['output_rate_hz']:.1f} Hz out"
                + (f", latency {lat:.0f} ms" if lat is not None else ""))


def node_status(stats: NodeStats, view: NodeView, now: float, since: Mapping[str, int]) -> NodeStatus:
    """The node's status from its counters and rates at ``now`` and its state.

    ERROR while the model cannot be configured or when pipeline / callback errors happened since the last status
    (``since``: the previous status's ``totals``); WARN while not active, or when frames were rejected or skipped,
    inputs are missing or silent, or a QoS mismatch happened since then; else OK with the rates and latency.
    """
    totals = problem_totals(stats)
    new = {k: v - since.get(k, 0) for k, v in totals.items()}
    values = _status_values(stats, view, now)
    level, message = _status_level(view, new, values, stats.last_error)
    return NodeStatus(level, message, values, totals)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def diagnostic_array(stamp, name: str, level: bytes | int, message: str, values: Mapping[str, Any],
                     hardware_id: str = "") -> DiagnosticArray:
    """One-status DiagnosticArray; ``level`` is DiagnosticStatus.OK / WARN / ERROR / STALE (or 0..3)."""
    lvl = level if isinstance(level, bytes) else bytes([int(level)])
    status = DiagnosticStatus(level=lvl, name=name, message=message, hardware_id=hardware_id)
    status.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()]
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = [status]
    return msg
