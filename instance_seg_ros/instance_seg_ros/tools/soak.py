"""``isr soak``: run ``instance_seg_node`` for a long time under more input than it can process, and watch it.

The simulated camera (``sim_camera_node``, reliable QoS) and the node run as two processes in a private
namespace; this process subscribes to the node's ``instances`` and ``/diagnostics``. Every ``--interval``
seconds it prints one row about the **node process**: resident memory (``VmRSS`` of ``/proc/<pid>/status``),
open file descriptors (entries of ``/proc/<pid>/fd``), threads, output rate, the latency from the camera's
stamp to receiving ``instances`` (p50 / p90 / p99 / max), and the node's own counters (frames skipped,
rejected, pipeline errors).

The first interval is the warm-up (allocator pools, caches); its last RSS is the baseline. The run fails
(exit 1) when, after it, the RSS grows more than ``--max-rss-growth`` percent (default 5) above the
baseline, when the node or the camera exits, or when an interval produces no output at all. Exit 0 otherwise.

Example (the 30-minute CPU soak of docs/reliability.md)::

    isr soak --minutes 30 --width 640 --height 480 --rate 15 --json soak.json

``--seconds`` (instead of ``--minutes``) with a short ``--interval`` makes a quick smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.msg_codec import stamp_ns
from .procs import share_dir, stop_process

__all__ = ["ProcSample", "add_arguments", "proc_sample", "rss_verdict", "run"]


# ---------------------------------------------------------------------------------------- /proc
class ProcSample(dict):
    """One reading of a process: ``rss_kb``, ``hwm_kb`` (peak RSS), ``threads`` (int) and ``fds`` (int)."""


def proc_sample(pid: int) -> ProcSample:
    """RSS, peak RSS and threads from ``/proc/<pid>/status`` and the number of open fds from ``/proc/<pid>/fd``.

    Raises:
        ProcessLookupError: the process is gone.
    """
    out = ProcSample()
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError as exc:
        raise ProcessLookupError(f"process {pid} is gone") from exc
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[{"VmRSS": "rss_kb", "VmHWM": "hwm_kb", "Threads": "threads"}[key]] = int(value.split()[0])
    out["fds"] = fds
    return out


def rss_verdict(rss_kb: list[int], warmup_samples: int, max_growth_pct: float) -> tuple[bool, float, int]:
    """Whether memory stayed flat after the warm-up.

    Args:
        rss_kb: RSS samples in order (kB).
        warmup_samples: how many leading samples are the warm-up; the last of them is the baseline.
        max_growth_pct: the largest allowed growth of any later sample over the baseline, in percent.

    Returns:
        ``(ok, growth_pct, baseline_kb)``: ``growth_pct`` is that of the largest later sample (0 if none).
    """
    if warmup_samples < 1:
        raise ValueError(f"warmup_samples must be at least 1, got {warmup_samples}.")
    if len(rss_kb) < warmup_samples:
        raise ValueError(f"{len(rss_kb)} RSS samples are fewer than the {warmup_samples} warm-up samples; run longer.")
    baseline = int(rss_kb[warmup_samples - 1])
    later = rss_kb[warmup_samples:]
    growth = (max(later) / baseline - 1.0) * 100.0 if later and baseline > 0 else 0.0
    return growth <= max_growth_pct, growth, baseline


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    dur = p.add_mutually_exclusive_group()
    dur.add_argument("--minutes", type=float, default=None, help="run time after the node's first output (default 30)")
    dur.add_argument("--seconds", type=float, default=None, help="run time in seconds (smoke runs)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between report rows (default 60); the first "
                   "interval is the warm-up and gives the RSS baseline")
    p.add_argument("--params", default=None, help="params file for instance_seg_node (default: config/default.yaml)")
    p.add_argument("--weights", default=None, help="override model.weights")
    p.add_argument("--threads", type=int, default=None, help="override model.threads (1-2 on a shared machine)")
    p.add_argument("--set", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra node parameter (repeatable), e.g. --set model.max_instances:=10")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--rate", type=float, default=15.0, help="camera rate, Hz (default 15: above the CPU throughput)")
    p.add_argument("--scene-change-every", type=int, default=45, help="camera frames per random scene (default 45)")
    p.add_argument("--max-rss-growth", type=float, default=5.0, help="allowed RSS growth after the warm-up, percent")
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for the first output")
    p.add_argument("--json", default=None, help="write the rows and the verdict to this JSON file")
    p.add_argument("--log-dir", default=None, help="where the two processes' logs go (default: a temporary dir)")


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


_HEADER = (f"{'min':>6} {'rss MB':>8} {'fds':>5} {'thr':>4} {'out Hz':>7} {'in Hz':>6} {'p50 ms':>7} {'p90 ms':>7} "
           f"{'p99 ms':>7} {'max ms':>7} {'skipped':>8} {'rejected':>8} {'errors':>6}")


def run(args: argparse.Namespace) -> int:
    import tempfile

    duration = (args.seconds if args.seconds is not None else 60.0 * (args.minutes if args.minutes is not None
                                                                         else 30.0))
    if duration <= 0 or args.interval <= 0:
        print("isr soak: the duration and --interval must be positive.", file=sys.stderr)
        return 2
    if duration < 2 * args.interval:
        print(f"isr soak: the run ({duration:g} s) must last at least two intervals ({args.interval:g} s each): "
              "the first is the warm-up. Lower --interval or run longer.", file=sys.stderr)
        return 2
    params = Path(args.params) if args.params else share_dir() / "config" / "default.yaml"
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="isr_soak_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    ns = f"/isr_soak_{os.getpid()}"
    node_cmd, cam_cmd = _commands(args, params, ns)
    client = _Client(ns)
    rows: list[dict[str, Any]] = []
    print(f"isr soak: {duration / 60:.1f} min of {args.width}x{args.height} at {args.rate:g} Hz into instance_seg_node "
          f"({params.name}), a row every {args.interval:g} s; logs in {log_dir}/", flush=True)
    procs = {"instance_seg_node": _start(node_cmd, log_dir / "instance_seg_node.log")}
    procs["sim_camera_node"] = _start(cam_cmd, log_dir / "sim_camera_node.log")
    try:
        startup_s, failure = _wait_for_output(client, procs, args.startup_timeout)
        if not failure:
            print(f"first output after {startup_s:.1f} s", flush=True)
            print(_HEADER, flush=True)
            failure = _intervals(client, procs, duration, args.interval, rows)
    finally:
        codes = {name: stop_process(p, 15.0) for name, p in procs.items()}
        client.close()
    verdict, failure = _verdict(rows, failure, args.max_rss_growth)
    all_lat = [r["latency_ms"]["p50"] for r in rows[1:] if r["latency_ms"]["p50"] is not None]
    report = {
        "args": {k: v for k, v in vars(args).items() if k != "func"}, "node_command": node_cmd,
        "camera_command": cam_cmd, "startup_s": startup_s if rows else None, "rows": rows, "verdict": verdict,
        "failure": failure, "exit_codes": codes, "log_dir": str(log_dir),
        "latency_p50_ms_median_over_intervals": float(np.median(all_lat)) if all_lat else None,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if failure:
        print(f"isr soak: FAILED: {failure}.", file=sys.stderr)
        tail = (log_dir / "instance_seg_node.log").read_text(errors="replace").strip().splitlines()[-6:]
        if tail:
            print("  last lines of instance_seg_node's log:\n    " + "\n    ".join(tail), file=sys.stderr)
        return 1
    print(f"isr soak: OK: RSS {verdict['rss_baseline_mb']:.1f} MB after the warm-up, at most "
          f"{verdict['rss_growth_pct']:+.1f}% later (allowed {args.max_rss_growth:g}%); open fds "
          f"{verdict['fds_min']}..{verdict['fds_max']}.", flush=True)
    return 0


def _commands(args: argparse.Namespace, params: Path, ns: str) -> tuple[list[str], list[str]]:
    """The node's and the simulated camera's command lines."""
    node_cmd = [sys.executable, "-m", "instance_seg_ros.ros.node", "--ros-args", "-r", f"__ns:={ns}",
                "--params-file", str(params), "-p", "qos.input_reliability:=reliable", "-p", "managed:=false"]
    if args.weights:
        node_cmd += ["-p", f"model.weights:={args.weights}"]
    if args.threads is not None:
        node_cmd += ["-p", f"model.threads:={args.threads}"]
    for item in args.set:
        node_cmd += ["-p", item]
    # reliable camera (its default): under localhost-only discovery, large best-effort images are lost (README)
    cam_cmd = [sys.executable, "-m", "instance_seg_ros.sim.camera_node", "--ros-args", "-r", f"__ns:={ns}",
               "-p", f"width:={args.width}", "-p", f"height:={args.height}", "-p", f"rate:={args.rate}",
               "-p", f"scene_change_every:={args.scene_change_every}", "-p", "wait_for_subscribers:=1"]
    return node_cmd, cam_cmd


def _start(cmd: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


class _Client:
    """This process's side, on a private rclpy context in namespace ``ns``: the latency of every ``instances``
    message (``lat_ms``, cleared per interval), their count (``n_out``) and the node's latest ``/diagnostics``."""

    def __init__(self, ns: str) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from instance_seg_msgs.msg import InstanceArray

        self.ns = ns
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("isr_soak_client", namespace=ns, context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.lat_ms: list[float] = []
        self.n_out = 0
        self.diag: dict[str, str] = {}
        rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(InstanceArray, "instances", self._on_instances, rel)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, rel)

    def _on_instances(self, msg: Any) -> None:
        self.n_out += 1
        self.lat_ms.append((time.time_ns() - stamp_ns(msg)) / 1e6)

    def _on_diag(self, msg: Any) -> None:  # /diagnostics is global: keep our node's status (its input topic is ours)
        for st in msg.status:
            values = {kv.key: kv.value for kv in st.values}
            if "instance segmentation" in st.name and values.get("input.image") == f"{self.ns}/image":
                self.diag.clear()
                self.diag.update(values)

    def count(self, key: str) -> int:
        """A counter of the node's diagnostics (0 when absent or not a number)."""
        try:
            return int(float(self.diag.get(key, 0)))
        except ValueError:
            return 0

    def spin_once(self, timeout: float) -> None:
        self.executor.spin_once(timeout_sec=timeout)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def _exited(procs: dict[str, subprocess.Popen]) -> str:
    """The failure of the first process that exited ("" while both run)."""
    for name, p in procs.items():
        if p.poll() is not None:
            return f"{name} exited with code {p.returncode}"
    return ""


def _wait_for_output(client: _Client, procs: dict[str, subprocess.Popen], timeout: float) -> tuple[float, str]:
    """Spin until the node's first output; ``(seconds since launch, failure or "")``."""
    t_launch = time.monotonic()
    failure = ""
    node, cam = procs["instance_seg_node"], procs["sim_camera_node"]
    while client.n_out == 0:
        client.spin_once(0.1)
        if node.poll() is not None or cam.poll() is not None:
            failure = f"a process exited during start-up (node {node.poll()}, camera {cam.poll()})"
            break
        if time.monotonic() - t_launch > timeout:
            failure = f"no output within --startup-timeout {timeout:g} s"
            break
    return time.monotonic() - t_launch, failure


def _intervals(client: _Client, procs: dict[str, subprocess.Popen], duration: float, interval: float,
               rows: list[dict[str, Any]]) -> str:
    """Report rows every ``interval`` s for ``duration`` s (appended to ``rows`` and printed); the failure or ""."""
    t0 = time.monotonic()
    k = 0
    while time.monotonic() - t0 < duration - 1e-6:
        k += 1
        t_end = t0 + min(k * interval, duration)
        client.lat_ms.clear()
        n0, t_start, img0 = client.n_out, time.monotonic(), client.count("received.image")
        while time.monotonic() < t_end:
            client.spin_once(0.05)
            failure = _exited(procs)
            if failure:
                return failure
        row = _row(client, procs["instance_seg_node"].pid, t0, time.monotonic() - t_start, n0, img0)
        rows.append(row)
        _print_row(row)
        if client.n_out == n0:
            return f"no output in the interval ending at minute {row['minute']:.2f}"
    return ""


def _row(client: _Client, pid: int, t0: float, span: float, n0: int, img0: int) -> dict[str, Any]:
    """One report row: the node process's memory, fds and threads, rates, latency and diagnostics counters."""
    span = max(span, 1e-6)
    sample = proc_sample(pid)
    lat = client.lat_ms
    return {
        "minute": round((time.monotonic() - t0) / 60.0, 2),
        "rss_mb": sample["rss_kb"] / 1024, "hwm_mb": sample.get("hwm_kb", 0) / 1024,
        "fds": sample["fds"], "threads": sample.get("threads", 0),
        "out_hz": (client.n_out - n0) / span, "in_hz": (client.count("received.image") - img0) / span,
        "latency_ms": {"p50": _pct(lat, 50), "p90": _pct(lat, 90), "p99": _pct(lat, 99),
                       "max": max(lat) if lat else None},
        "frames_published": client.count("frames_published"), "frames_skipped": client.count("frames_skipped"),
        "frames_rejected": client.count("frames_rejected"), "pipeline_errors": client.count("pipeline_errors"),
        "callback_errors": client.count("callback_errors"),
    }


def _print_row(row: dict[str, Any]) -> None:
    lat = row["latency_ms"]
    print(f"{row['minute']:6.2f} {row['rss_mb']:8.1f} {row['fds']:5d} {row['threads']:4d} "
          f"{row['out_hz']:7.2f} {row['in_hz']:6.2f} {_fmt(lat['p50']):>7} {_fmt(lat['p90']):>7} "
          f"{_fmt(lat['p99']):>7} {_fmt(lat['max']):>7} {row['frames_skipped']:8d} "
          f"{row['frames_rejected']:8d} {row['pipeline_errors'] + row['callback_errors']:6d}", flush=True)


def _verdict(rows: list[dict[str, Any]], failure: str, max_growth: float) -> tuple[dict[str, Any], str]:
    """The memory verdict over the rows (the first is the warm-up), and the run's failure ("" when it passed)."""
    verdict: dict[str, Any] = {"ok": False}
    if not failure and len(rows) >= 2:
        ok, growth, baseline = rss_verdict([int(r["rss_mb"] * 1024) for r in rows], 1, max_growth)
        fds = [r["fds"] for r in rows[1:]]
        verdict = {"ok": ok, "rss_baseline_mb": baseline / 1024, "rss_growth_pct": growth,
                   "fds_min": min(fds), "fds_max": max(fds), "max_rss_growth_pct": max_growth}
        if not ok:
            failure = (f"RSS grew {growth:.1f}% over its {baseline / 1024:.1f} MB baseline after the warm-up "
                       f"(allowed {max_growth:g}%)")
    elif not failure:
        failure = "fewer than two intervals completed"
    return verdict, failure
