"""Run-time statistics of the node and their /diagnostics message.

:class:`NodeStats` is thread-safe (subscription callbacks, the worker thread and the diagnostics timer
all touch it) and plain Python apart from :func:`diagnostic_array`, which builds the
``diagnostic_msgs/DiagnosticArray``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

__all__ = ["NodeStats", "RateMeter", "Throttle", "diagnostic_array"]


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
