"""Helpers for tests that talk to real ROS 2 processes over DDS on loopback (bounded waits, always reaped)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

TEST_DIR = Path(__file__).resolve().parent
PKG_DIR = TEST_DIR.parent
REPO_DIR = PKG_DIR.parent


class ProcessGroup:
    """Child processes in their own sessions, so a whole tree can be signalled and reaped."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[int, Path] = {}

    def start(self, args: list[str], *, env: dict[str, str] | None = None, log_name: str | None = None,
              cwd: str | Path | None = None) -> subprocess.Popen:
        log_dir = Path(os.environ.get("ISR_TEST_LOG_DIR", "/tmp/isr_test_logs"))
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{log_name or Path(args[0]).name}-{os.getpid()}-{len(self.procs)}.log"
        log = open(log_path, "wb")
        full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                             start_new_session=True)
        log.close()
        self.procs.append(p)
        self.logs[p.pid] = log_path
        return p

    def start_python(self, code_or_module: str, *args: str, module: bool = False, **kw) -> subprocess.Popen:
        cmd = [sys.executable, "-m", code_or_module] if module else [sys.executable, "-c", code_or_module]
        return self.start([*cmd, *args], **kw)

    def log(self, p: subprocess.Popen) -> str:
        try:
            return self.logs[p.pid].read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, p: subprocess.Popen, timeout: float = 5.0) -> int | None:
        if p.poll() is None:
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        return p.poll()

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            self.stop(p)
            try:  # children that outlived their leader
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class RosTestContext:
    """A private rclpy context + node + single-threaded executor for the test process."""

    def __init__(self, node_name: str = "isr_test") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(node_name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.05, max(0.0, end - time.monotonic())))

    def spin_until(self, predicate: Callable[[], bool], timeout: float, *, on_spin: Callable[[], None] | None = None
                   ) -> bool:
        """Spin until ``predicate()`` is true or ``timeout`` seconds pass; returns the predicate's last value."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            if on_spin is not None:
                on_spin()
            self.executor.spin_once(timeout_sec=0.05)
        return bool(predicate())

    def wait_for_subscribers(self, publisher, count: int = 1, timeout: float = 15.0) -> bool:
        return self.spin_until(lambda: publisher.get_subscription_count() >= count, timeout)

    def wait_for_publishers(self, subscription, count: int = 1, timeout: float = 15.0) -> bool:
        return self.spin_until(lambda: subscription.get_publisher_count() >= count, timeout)

    def shutdown(self) -> None:
        try:
            self.executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
        finally:
            if self.context.ok():
                self.rclpy.shutdown(context=self.context)
