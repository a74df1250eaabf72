"""Measuring helpers of ``isr bench``: the stages it times (:data:`STAGES`), the summary of a list of timings
(:func:`stats`) and the peak resident memory of this process while a block runs (:class:`RssSampler`)."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import numpy as np

__all__ = ["OUTSIDE_NETWORK", "STAGES", "RssSampler", "stats"]

#: Stages timed per run, in pipeline order.
STAGES = ("decode", "proposals", "preprocess", "inference", "postprocess", "lift", "support_plane", "cloud_filter",
          "geometry", "tracking", "message")
#: Stages outside the network (the issue's "overhead"): everything but ``inference``.
OUTSIDE_NETWORK = tuple(s for s in STAGES if s != "inference")


def stats(samples: list[float] | np.ndarray) -> dict[str, float]:
    """``{"median", "p99", "mean", "min", "max"}`` of a list of milliseconds (p99: linear interpolation)."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return {"median": float("nan"), "p99": float("nan"), "mean": float("nan"), "min": float("nan"),
                "max": float("nan")}
    return {"median": float(np.median(a)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean()),
            "min": float(a.min()), "max": float(a.max())}


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the process peak so far
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


class RssSampler:
    """Peak resident set size of this process while a ``with`` block runs (a thread samples it every
    ``period`` s). ``peak`` and ``start`` are in bytes."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.start = self.peak = _rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
