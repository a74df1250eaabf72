"""Test isolation for ROS 2 tests.

Every pytest process gets its own ROS_DOMAIN_ID (and localhost-only discovery) before anything
imports rclpy, so concurrent or leftover processes never cross-talk; child processes inherit it.
Processes started through the ``procs`` fixture are always reaped, even when a test fails.
"""

from __future__ import annotations

import os


def _claim_domain_id() -> str:
    """A ROS domain id (1..100, safe for Fast DDS port arithmetic) that no other live pytest process holds:
    the id's lock file stays flock-ed for this process's lifetime and is released by the kernel when it exits."""
    import fcntl

    lock_dir = "/tmp/isr_test_domains"
    os.makedirs(lock_dir, exist_ok=True)
    start = os.getpid() % 100
    for k in range(100):
        domain = 1 + (start + k) % 100
        fh = open(os.path.join(lock_dir, f"{domain}.lock"), "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        _DOMAIN_LOCKS.append(fh)
        return str(domain)
    return str(1 + start)  # all taken: fall back to the pid-derived id


_DOMAIN_LOCKS: list = []
if "ISR_TEST_DOMAIN_ID" not in os.environ:
    os.environ["ISR_TEST_DOMAIN_ID"] = _claim_domain_id()
os.environ["ROS_DOMAIN_ID"] = os.environ["ISR_TEST_DOMAIN_ID"]
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")

import pytest  # noqa: E402 - after the environment is set
from ros_helpers import ProcessGroup, RosTestContext  # noqa: E402


@pytest.fixture
def procs():
    """Start helper processes with ``procs.start([...])``; all are stopped (SIGINT, then SIGKILL) at teardown."""
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def ros():
    """A private rclpy context with one node and an executor; shut down at teardown."""
    ctx = RosTestContext()
    try:
        yield ctx
    finally:
        ctx.shutdown()
