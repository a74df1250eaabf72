"""``isr bench --node``: ``instance_seg_node`` in another process, timed from publishing the color image to
receiving ``instances``; its difference to the in-process end-to-end time is what DDS transport, executor and
publishing add."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .bench_frame import frame_messages
from .bench_stats import stats

__all__ = ["node_bench"]

_FIRST_STAMP = 1_800_000_000_000_000_000
_PERIOD_NS = 33_000_000
_MAX_LOST = 3


def _ros_params_args(cfg: Any, params: str | Path | None) -> list[str]:
    args = ["--ros-args"]
    if params is not None:
        args += ["--params-file", str(params)]
    for name, value in cfg.to_flat().items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(float(value))
        else:
            text = str(value)
        args += ["-p", f"{name}:={text}"]
    return args


def _missing_ros() -> str | None:
    """Why the node mode cannot run here (None: it can)."""
    import importlib.util

    if importlib.util.find_spec("instance_seg_ros.ros.node") is None:
        return "instance_seg_ros.ros.node is not available in this installation"
    try:
        import rclpy  # noqa: F401
        from sensor_msgs.msg import CameraInfo, Image  # noqa: F401

        from instance_seg_msgs.msg import InstanceArray  # noqa: F401
    except ImportError as exc:
        return f"ROS 2 Python packages are not importable ({exc}); source the ROS setup first"
    return None


class _Client:
    """This process's side: publishers of image, depth and camera_info and a subscriber of ``instances`` (all
    reliable), on a private rclpy context in namespace ``ns``; ``received`` maps stamps to receive times."""

    def __init__(self, ns: str, proc: subprocess.Popen) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        from instance_seg_msgs.msg import InstanceArray

        from ..ros.conversions import stamp_to_ns

        self.ns, self.proc = ns, proc
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("isr_bench_client", namespace=ns, context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.received: dict[int, float] = {}
        rel = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {
            "image": self.node.create_publisher(Image, "image", rel),
            "depth": self.node.create_publisher(Image, "depth", rel),
            "camera_info": self.node.create_publisher(CameraInfo, "camera_info", rel),
        }
        self.node.create_subscription(
            InstanceArray, "instances",
            lambda m: self.received.setdefault(stamp_to_ns(m.header.stamp), time.perf_counter()), rel)

    def spin_until(self, cond: Callable[[], bool], limit: float) -> bool:
        """Spin until ``cond()`` holds (True), ``limit`` seconds pass or the node process exits (False)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if cond():
                return True
            if self.proc.poll() is not None:
                return False
            self.executor.spin_once(timeout_sec=0.01)
        return cond()

    def wait_ready(self, timeout: float) -> bool:
        """The node subscribes to all three inputs and publishes ``instances``."""
        return self.spin_until(lambda: all(p.get_subscription_count() > 0 for p in self.pubs.values())
                               and self.node.count_publishers(f"{self.ns}/instances") > 0, timeout)

    def send(self, image: Any, depth: Any, info: Any, stamp: int) -> float:
        """Publish one frame stamped ``stamp`` (color last); returns the time the color image went out."""
        from ..ros.conversions import stamp_from_ns

        hdr_stamp = stamp_from_ns(stamp)
        for msg in (info, depth, image):
            msg.header.stamp = hdr_stamp
        self.pubs["camera_info"].publish(info)
        self.pubs["depth"].publish(depth)
        t0 = time.perf_counter()
        self.pubs["image"].publish(image)
        return t0

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        import signal

        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _measure(client: _Client, frame: Any, runs: int, warmup: int, frame_timeout: float) -> tuple[list[float], int, int]:
    """``(latencies ms of the timed frames, frames lost, frames sent)``. A frame not answered within
    ``frame_timeout`` s is lost (and retried, within bounds); the measurement stops after 3 lost frames."""
    image, depth, info, _ = frame_messages(frame)
    latencies: list[float] = []
    lost = 0
    stamp = _FIRST_STAMP
    i = 0
    while len(latencies) < runs and i < warmup + 2 * runs and lost < _MAX_LOST:
        stamp += _PERIOD_NS
        t0 = client.send(image, depth, info, stamp)
        ok = client.spin_until(lambda s=stamp: s in client.received, frame_timeout)
        if ok and i >= warmup:
            latencies.append((client.received[stamp] - t0) * 1e3)
        elif not ok:
            lost += 1
            if client.proc.poll() is not None:
                break
        i += 1
    return latencies, lost, i


def node_bench(
    cfg: Any,
    params: str | Path | None,
    frame: Any,
    *,
    runs: int,
    warmup: int,
    timeout: float = 120.0,
    frame_timeout: float = 10.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Latency from publishing the color image to receiving ``instances`` from ``instance_seg_node`` running in
    another process with ``cfg`` (and reliable input QoS). A frame not answered within ``frame_timeout`` s counts
    as lost; the measurement stops after 3 lost frames. Returns ``{"latency": stats, ...}`` or
    ``{"skipped": reason}``."""
    reason = _missing_ros()
    if reason is not None:
        return {"skipped": reason}
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    ns = f"/isr_bench_{os.getpid()}"
    # reliable input QoS: large best-effort samples need Fast DDS's LARGE_DATA transport, which a localhost-only
    # discovery range disables; with a reliable publisher and subscriber every frame arrives either way
    cmd = [sys.executable, "-m", "instance_seg_ros.ros.node", *_ros_params_args(cfg, params), "-r", f"__ns:={ns}",
           "-p", "managed:=false", "-p", "qos.input_reliability:=reliable"]
    log_file = tempfile.NamedTemporaryFile(prefix="isr_bench_node_", suffix=".log", delete=False)

    def log_tail() -> str:
        log_file.flush()
        return Path(log_file.name).read_text(errors="replace")[-2000:]

    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ))
    client = _Client(ns, proc)
    try:
        t_start = time.monotonic()
        if not client.wait_ready(timeout):
            return {"skipped": f"instance_seg_node did not come up within {timeout:.0f} s "
                               f"(exit code {proc.poll()}); its log:\n{log_tail()}"}
        startup_s = time.monotonic() - t_start
        latencies, lost, sent = _measure(client, frame, runs, warmup, frame_timeout)
        if not latencies:
            return {"skipped": f"instance_seg_node answered none of {sent} frames ({lost} lost); its log:\n"
                               f"{log_tail()}"}
        return {"latency": stats(latencies), "frames": len(latencies), "lost": lost, "startup_s": startup_s,
                "command": " ".join(cmd)}
    finally:
        client.close()
        _stop(proc)
        log_file.close()
        os.unlink(log_file.name)
