"""Test isolation for ROS 2 tests.

Every pytest process gets its own ROS_DOMAIN_ID (and localhost-only discovery) before anything
imports rclpy, so concurrent or leftover processes never cross-talk; child processes inherit it.
Processes started through the ``procs`` fixture are always reaped, even when a test fails.
"""

from __future__ import annotations

import os

# Domain ids 1..100 are safe for Fast DDS port arithmetic; derive one from the pid unless the caller chose.
os.environ.setdefault("ISR_TEST_DOMAIN_ID", str(1 + os.getpid() % 100))
os.environ["ROS_DOMAIN_ID"] = os.environ["ISR_TEST_DOMAIN_ID"]
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")

import pytest
from ros_helpers import ProcessGroup, RosTestContext


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
