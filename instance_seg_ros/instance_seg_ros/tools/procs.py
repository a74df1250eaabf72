"""Helpers the tools that run ROS processes share (demo, soak): where our configs live, stopping a child."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def share_dir() -> Path:
    """The package's share directory (configs, launch files); the source tree when not installed by colcon."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("instance_seg_ros"))
    except Exception:  # not installed through colcon: the source tree
        return Path(__file__).resolve().parents[2]


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGINT the child's process group, SIGKILL it after ``timeout`` s; returns its exit code (None if it lives)."""
    if proc.poll() is not None:
        return proc.returncode
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGKILL, 3.0)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            break
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue
    return proc.poll()
