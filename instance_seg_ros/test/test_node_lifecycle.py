"""The managed (lifecycle) node with compressed color input, start-up failures, and pipeline exceptions.

One managed node process serves the lifecycle tests, which run in file order (unconfigured -> configured ->
active -> inactive -> active -> unconfigured).
"""

from __future__ import annotations

import time

import pytest
from node_harness import (
    FRAME_ID,
    HEIGHT,
    UNTRAINED,
    WIDTH,
    NodeHarness,
    assert_alive,
    node_command,
    running_node,
)

pytestmark = [pytest.mark.ros, pytest.mark.slow]


@pytest.fixture(scope="module")
def managed():
    with running_node("isr_lifecycle_test", "-p", "input.compressed:=true", cli=("--managed",),
                      log_name="instance_seg_node_managed", ready="unconfigured", timeout=60.0, markers=False,
                      debug=False) as n:
        yield n


_alive = assert_alive


def test_managed_node_waits_unconfigured(managed):
    h, proc, group = managed
    assert h.get_state() == "unconfigured"
    assert h.diag_value("model_loaded") == "False"
    assert h.pub_compressed.get_subscription_count() == 0
    # fixed parameters may change before configure
    (res,) = h.set_params({"model.nms_threshold": 0.6})
    assert res.successful, res.reason
    _alive(proc, group)


def test_configure_loads_model_and_activate_subscribes_compressed(managed):
    h, proc, group = managed
    assert h.change_state("configure"), group.log(proc)
    assert h.get_state() == "inactive"
    assert h.wait_diag(lambda d: d.get("model_loaded") == "True" and d.get("state") == "inactive")
    assert h.change_state("activate"), group.log(proc)
    assert h.wait_connected(30.0, compressed=True), group.log(proc)
    assert h.pub_image.get_subscription_count() == 0  # raw color is not subscribed with input.compressed
    f = h.frame(compressed=True)
    msg = h.send_and_wait(f)
    assert msg is not None, group.log(proc)
    assert msg.header.frame_id == FRAME_ID and (msg.width, msg.height) == (WIDTH, HEIGHT)
    assert len(msg.instances) >= 1
    (res,) = h.set_params({"model.nms_threshold": 0.7})
    assert not res.successful and "cannot change while the node is active" in res.reason
    _alive(proc, group)


def test_deactivate_frees_the_model_and_stops_output(managed):
    h, proc, group = managed
    assert h.change_state("deactivate"), group.log(proc)
    assert h.get_state() == "inactive"
    assert h.wait_diag(lambda d: d.get("model_loaded") == "False" and d.get("state") == "inactive")
    assert h.ctx.spin_until(lambda: h.pub_compressed.get_subscription_count() == 0, 10.0)
    f = h.frame(compressed=True)
    h.send(f)
    h.spin(1.0)
    assert f.stamp_ns not in h.out.instances
    _alive(proc, group)


def test_reactivate_reloads_and_cleanup(managed):
    h, proc, group = managed
    assert h.change_state("activate"), group.log(proc)
    assert h.wait_connected(30.0, compressed=True)
    assert h.send_and_wait(h.frame(compressed=True)) is not None, group.log(proc)
    assert h.change_state("deactivate") and h.change_state("cleanup")
    assert h.get_state() == "unconfigured"
    assert h.wait_diag(lambda d: d.get("state") == "unconfigured")
    _alive(proc, group)


def test_sigint_stops_the_node_cleanly(managed):
    h, proc, group = managed
    t0 = time.monotonic()
    code = group.stop(proc, timeout=10.0)
    assert code == 0, f"exit code {code}; log:\n{group.log(proc)}"
    assert time.monotonic() - t0 < 10.0
    assert "Traceback" not in group.log(proc)


# ---------------------------------------------------------------------------------------- start-up failures
def _wait_exit(proc, timeout: float = 60.0) -> int | None:
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        time.sleep(0.1)
    return proc.poll()


def test_model_that_cannot_load_exits_with_one_error_line(procs, tmp_path):
    bad = tmp_path / "missing.pt"
    p = procs.start(node_command("-p", f"model.weights:={bad}"), log_name="instance_seg_node_badweights")
    code = _wait_exit(p)
    log = procs.log(p)
    assert code not in (None, 0), log
    errors = [line for line in log.splitlines() if "ERROR" in line]
    assert len(errors) == 1, log
    assert "missing.pt" in errors[0] and "cannot configure" in errors[0]
    assert "Traceback" not in log


def test_invalid_parameter_at_start_exits_with_reason(procs):
    p = procs.start(node_command("-p", "depth.min:=9.0"), log_name="instance_seg_node_badparam")
    code = _wait_exit(p)
    log = procs.log(p)
    assert code == 2, log
    assert "invalid parameters" in log and "depth.min" in log and "Traceback" not in log


# ---------------------------------------------------------------------------------------- in-process
def test_pipeline_exception_never_kills_the_node(ros):
    """A failure inside the pipeline is counted and logged; the worker goes on with the next frame."""
    import torch
    from rclpy.parameter import Parameter

    from instance_seg_ros.core.config import Config
    from instance_seg_ros.ros.node import InstanceSegNode

    torch.set_num_threads(2)
    file_cfg = Config.from_yaml(UNTRAINED)
    overrides = [Parameter(k, value=v) for k, v in file_cfg.to_flat().items()]
    overrides.append(Parameter("depth.max", value=4))  # an integer for a float parameter is accepted
    node = InstanceSegNode(context=ros.context, parameter_overrides=overrides, managed=True)
    try:
        assert node.config.depth.max == 4.0 and node.config.model.weights == "none"
        ros.executor.add_node(node)
        assert node.trigger_configure().name == "SUCCESS", node.configure_error
        assert node.trigger_activate().name == "SUCCESS"
        h = NodeHarness(ros, markers=False, debug=False)
        assert h.wait_connected(30.0)

        calls = []

        def boom(*args, **kwargs):
            calls.append(1)
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

        node._seg.process = boom  # the next frame fails inside the pipeline
        f = h.frame()
        h.send(f)
        assert ros.spin_until(lambda: node.stats.count("pipeline_errors") >= 1, 10.0)
        del node._seg.process
        assert "illegal memory access" in node.stats.last_error
        h.send(f)  # then a warning (duplicate stamps) right after the error: logging must cope with both
        assert ros.spin_until(lambda: node.stats.count("rejected.duplicate_stamp") >= 1, 10.0)
        assert node.stats.count("callback_errors") == 0
        assert h.send_and_wait(h.frame()) is not None
        assert f.stamp_ns not in h.out.instances
        assert node._worker is not None and node._worker.is_alive()
        assert h.wait_diag(lambda d: int(d.get("pipeline_errors", 0)) >= 1, 5.0)
    finally:
        ros.executor.remove_node(node)
        node.close()
        node.destroy_node()
