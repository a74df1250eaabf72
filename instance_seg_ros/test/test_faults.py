"""Fault injection (issue 9): bad model files, missing camera_info, a publisher that dies and comes back, a
burst of 1000 frames, CUDA out of memory, and a smoke run of ``isr soak``.

Real processes where it matters (the node, the simulated camera), bounded waits everywhere. One node process
(plain mode, untrained small model, reliable inputs) serves the camera_info / burst / restart tests.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from node_harness import UNTRAINED, NodeHarness, assert_alive, node_command, running_node
from ros_helpers import PKG_DIR

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def _wait_exit(proc, timeout: float = 90.0) -> int | None:
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        time.sleep(0.1)
    return proc.poll()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# ---------------------------------------------------------------------------------------- model file faults
class _RunsCode:
    """Unpickling this would run a shell command (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_weights(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path given as model.weights, a fragment the error line must contain). Missing files: see
    test_node_lifecycle.py; random bytes, plain pickles and more kinds in-process: test_weights.py."""
    import torch

    from instance_seg_ros.core.model import BUNDLED_WEIGHTS

    d = tmp_path / "weights_dir"
    d.mkdir()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(BUNDLED_WEIGHTS.read_bytes()[:100_000])
    evil = tmp_path / "evil.pt"
    torch.save({"format": "instance_seg_ros/amodal_maskrcnn", "payload": _RunsCode(tmp_path / "PWNED")}, evil)
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)  # not a regular file: opening it would block forever
    link = tmp_path / "link_to_dir.pt"
    link.symlink_to(d)
    return {
        "directory": (d, "not a regular file"),
        "symlink_to_directory": (link, "not a regular file"),
        "fifo": (fifo, "not a regular file"),
        "truncated": (truncated, "not a loadable weights file"),
        "pickle_that_runs_code": (evil, "not a loadable weights file"),
    }


def test_bad_model_files_end_the_node_with_one_error_line(procs, tmp_path):
    """Every plain-mode node exits non-zero with exactly one ERROR line naming the file and the reason, no
    traceback, and nothing in the file is executed (weights_only loading)."""
    cases = _bad_weights(tmp_path)
    started = {name: procs.start(node_command("-p", f"model.weights:={path}", "-p", "model.warmup:=false"),
                                 log_name=f"isr_node_weights_{name}") for name, (path, _) in cases.items()}
    for name, p in started.items():
        path, reason = cases[name]
        code = _wait_exit(p)
        log = procs.log(p)
        assert code not in (None, 0), f"{name}: exit code {code}; log:\n{log}"
        errors = [line for line in log.splitlines() if "ERROR" in line]
        assert len(errors) == 1, f"{name}: {log}"
        assert "cannot configure" in errors[0] and path.name in errors[0] and reason in errors[0], f"{name}: {errors}"
        assert "Traceback" not in log, f"{name}: {log}"
    assert not (tmp_path / "PWNED").exists(), "a weights file ran code while being loaded"


# ---------------------------------------------------------------------------------------- CUDA out of memory
def _segmenter():
    import torch

    from instance_seg_ros.core.config import Config
    from instance_seg_ros.core.pipeline import Segmenter

    torch.set_num_threads(2)
    cfg = Config.from_yaml(UNTRAINED).replace(**{"model.warmup": False})
    seg = Segmenter(cfg)
    seg.load()
    return seg


def _frame(w: int = 160, h: int = 120):
    from node_harness import scene

    from instance_seg_ros.core.types import Intrinsics

    color, depth = scene(w, h)
    return color, depth, Intrinsics(fx=150.0, fy=150.0, cx=(w - 1) / 2, cy=(h - 1) / 2, width=w, height=h)


class _OomPredictor:
    """Wraps the real predictor: the first ``fail`` calls of ``predict`` raise CUDA out-of-memory, after recording
    the network input size they were asked for."""

    def __init__(self, predictor, fail: int) -> None:
        self._p, self.fail, self.sizes = predictor, fail, []

    def __getattr__(self, name):
        return getattr(self._p, name)

    def __setattr__(self, name, value):
        if name in ("min_size", "max_size"):
            setattr(self._p, name, value)
        else:
            super().__setattr__(name, value)

    def predict(self, color, depth=None, **kwargs):
        import torch

        self.sizes.append(self._p.input_size(*color.shape[:2]))
        if len(self.sizes) <= self.fail:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self._p.predict(color, depth, **kwargs)


def test_cuda_oom_retries_once_at_reduced_size_then_skips():
    from instance_seg_ros.core.pipeline import FrameSkipped

    seg = _segmenter()
    real = seg.predictor
    color, depth, K = _frame()
    seg.predictor = _OomPredictor(real, fail=1)
    res = seg.process(color, depth, K)
    assert (res.width, res.height) == (160, 120) and len(res.instances) >= 1  # full-frame results after the retry
    assert seg.predictor.sizes == [(120, 160), (60, 80)]
    assert seg.oom_retries == 1 and seg.oom_skipped == 0
    assert (real.min_size, real.max_size) == (0, 0), "the reduced size is for the retry only"

    seg.predictor = _OomPredictor(real, fail=2)
    with pytest.raises(FrameSkipped) as err:
        seg.process(color, depth, K)
    assert err.value.reason == "out_of_memory" and "model.max_size" in str(err.value)
    assert seg.oom_retries == 2 and seg.oom_skipped == 1
    assert (real.min_size, real.max_size) == (0, 0)
    seg.predictor = real
    assert len(seg.process(color, depth, K).instances) >= 1


def test_cuda_oom_in_the_node_skips_the_frame_and_keeps_running(ros):
    """In-process node: a frame that runs out of memory twice is skipped with a warning and a diagnostic count;
    the next frame is processed. (Runs before the module's node process starts: both would answer on /instances.)"""
    import torch
    from rclpy.parameter import Parameter

    from instance_seg_ros.core.config import Config
    from instance_seg_ros.ros.node import InstanceSegNode

    torch.set_num_threads(2)
    overrides = [Parameter(k, value=v) for k, v in Config.from_yaml(UNTRAINED).to_flat().items()]
    overrides.append(Parameter("model.warmup", value=False))
    node = InstanceSegNode(context=ros.context, parameter_overrides=overrides, managed=True)
    try:
        ros.executor.add_node(node)
        assert node.trigger_configure().name == "SUCCESS", node.configure_error
        assert node.trigger_activate().name == "SUCCESS"
        h = NodeHarness(ros, markers=False, debug=False)
        assert h.wait_connected(30.0)
        real = node._seg.predictor
        node._seg.predictor = _OomPredictor(real, fail=2)
        f = h.frame()
        h.send(f)
        assert ros.spin_until(lambda: node.stats.count("skipped.out_of_memory") >= 1, 15.0)
        assert "out_of_memory" in node.stats.last_error
        assert h.wait_diag(lambda d: int(d.get("skipped.out_of_memory", 0)) >= 1 and int(d["oom_retries"]) >= 1,
                           10.0)
        assert any(d["_level"] == 1 and "skipped (out of memory)" in d["_message"] for d in h.out.diagnostics), \
            [d["_message"] for d in h.out.diagnostics]
        assert f.stamp_ns not in h.out.instances
        assert node.stats.count("pipeline_errors") == 0
        node._seg.predictor = _OomPredictor(real, fail=1)  # the next one recovers at the reduced size
        assert h.send_and_wait(h.frame()) is not None
        node._seg.predictor = real
        assert h.send_and_wait(h.frame()) is not None
        assert node._worker is not None and node._worker.is_alive()
    finally:
        ros.executor.remove_node(node)
        node.close()
        node.destroy_node()


# ---------------------------------------------------------------------------------------- one node for the rest
@pytest.fixture(scope="module")
def node():
    """``(harness, process, group)``: the node with reliable inputs, so 320x240 frames cross processes."""
    with running_node("isr_faults_test", "-p", "qos.input_reliability:=reliable", "-p", "sync.max_age:=0.5",
                      "-p", "diagnostics.warn_throttle:=2.0", "-p", "diagnostics.stale_timeout:=2.0",
                      log_name="isr_node_faults", timeout=120.0, markers=False, debug=False) as n:
        yield n


_alive = assert_alive


def test_camera_info_that_never_arrives(node):
    """Images and depth without camera_info: throttled warnings naming the topic, bounded queues and memory,
    and the next complete frame is processed."""
    h, proc, group = node
    assert h.send_and_wait(h.frame(width=320, height=240), timeout=30.0) is not None
    rss0 = _rss_kb(proc.pid)
    before = h.diag_count("rejected.missing_camera_info")
    log0 = len(group.log(proc).splitlines())
    t0 = time.monotonic()
    n = 150
    for _ in range(n):  # ~384 kB per frame: 58 MB if the node kept them
        h.send(h.frame(width=320, height=240), camera_info=False)
        h.spin(0.01)
    assert h.wait_diag(lambda d: int(d.get("rejected.missing_camera_info", 0)) - before >= n // 2, 20.0), \
        h.out.diagnostics[-1]
    elapsed = time.monotonic() - t0
    backlogs = [int(d["backlog"]) for d in h.out.diagnostics[-5:]]
    assert max(backlogs) <= 3 * 10 + 1, backlogs  # sync queues (sync.queue_size 10 each) + the slot
    growth_mb = (_rss_kb(proc.pid) - rss0) / 1024
    assert growth_mb < 40, f"RSS grew {growth_mb:.0f} MB while {n} frames waited for camera_info"
    new_lines = group.log(proc).splitlines()[log0:]
    warnings = [ln for ln in new_lines if "(missing_camera_info)" in ln]
    assert warnings and "'/camera_info'" in warnings[0], new_lines[-5:]
    assert len(warnings) <= elapsed / 2.0 + 2, f"{len(warnings)} warnings in {elapsed:.1f} s: not throttled"
    assert h.send_and_wait(h.frame(width=320, height=240), timeout=30.0) is not None
    _alive(proc, group)


def test_camera_info_publisher_gone_and_back(node):
    """No camera_info publisher at all: a warning names the topic; when it comes back, frames are processed."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo

    h, proc, group = node
    h.ctx.node.destroy_publisher(h.pub_info)
    try:
        assert h.ctx.spin_until(lambda: "No publisher on '/camera_info'" in group.log(proc), 20.0,
                                on_spin=lambda: h.send(h.frame(), camera_info=False)), group.log(proc)[-2000:]
        assert h.wait_diag(lambda d: "no publisher on /camera_info" in d["_message"], 10.0)
    finally:
        h.pub_info = h.ctx.node.create_publisher(CameraInfo, "camera_info",
                                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    assert h.ctx.spin_until(lambda: h.pub_info.get_subscription_count() >= 1, 15.0)
    assert h.send_and_wait(h.frame(), timeout=30.0) is not None
    _alive(proc, group)


def test_burst_of_1000_frames_keeps_latency_bounded(node):
    """1000 frames as fast as the publisher can: the processed ones come out within about one inference time
    plus slop (the worker always takes the newest frame; nothing queues up behind it)."""
    h, proc, group = node
    single = []
    for _ in range(3):
        f = h.frame()
        t = time.perf_counter()
        assert h.send_and_wait(f, timeout=30.0) is not None
        single.append(time.perf_counter() - t)
    t_frame = float(np.median(single))

    f = h.frame()
    received: dict[int, float] = {}
    published: dict[int, float] = {}
    from instance_seg_ros.ros.conversions import stamp_from_ns, stamp_to_ns

    sub = h.ctx.node.create_subscription(_instance_array_type(), "instances",  # records receive times
                                         lambda m: received.setdefault(stamp_to_ns(m.header.stamp),
                                                                       time.perf_counter()), 50)
    stamps = [h.next_stamp(step_ms=10) for _ in range(1000)]  # 10 ms apart: unambiguous at sync.slop 1 ms

    def publish_all():
        for s in stamps:
            st = stamp_from_ns(s)
            for msg in (f.camera_info, f.depth, f.image):
                msg.header.stamp = st
            h.pub_info.publish(f.camera_info)
            h.pub_depth.publish(f.depth)
            published[s] = time.perf_counter()
            h.pub_image.publish(f.image)

    t0 = time.perf_counter()
    th = threading.Thread(target=publish_all, daemon=True)
    th.start()
    h.ctx.spin_until(lambda: not th.is_alive(), 120.0)
    publish_s = time.perf_counter() - t0
    newest = h.ctx.spin_until(lambda: stamps[-1] in received, 20.0)
    if not newest:  # under heavy load DDS may still lose the last set (keep-last histories): the node must go on
        assert h.send_and_wait(h.frame(), timeout=30.0) is not None, \
            f"no output after the burst; log:\n{group.log(proc)[-3000:]}"
    h.ctx.node.destroy_subscription(sub)
    lat = np.array([received[s] - published[s] for s in stamps if s in received])
    assert 0 < len(lat) < 500, f"processed {len(lat)} of 1000: not skipping"
    # in the node (matched -> published, from /diagnostics): the frame in progress + the frame's own inference
    n_diag = len(h.out.diagnostics)
    assert h.wait_diag(lambda d: "latency_ms_max" in d, 10.0)
    node_max_ms = max(float(d["latency_ms_max"]) for d in h.out.diagnostics[n_diag:] if "latency_ms_max" in d)
    node_bound_ms = 2.0 * t_frame * 1e3 + 500.0
    # end to end (published -> received): plus DDS; a reliable reader whose keep-last history overflows gets the
    # newest samples again only after the writer's next heartbeat (Fast DDS: up to 3 s)
    bound = 2.0 * t_frame + 4.0
    print(f"burst: 1000 frames in {publish_s:.2f} s, {len(lat)} processed; single frame {t_frame * 1e3:.0f} ms; "
          f"in the node: max {node_max_ms:.0f} ms (bound {node_bound_ms:.0f} ms); end to end: p50 "
          f"{np.median(lat) * 1e3:.0f} ms, max {lat.max() * 1e3:.0f} ms (bound {bound * 1e3:.0f} ms); newest "
          f"processed: {newest}")
    assert node_max_ms < node_bound_ms, (node_max_ms, node_bound_ms)
    assert lat.max() < bound, (lat.max(), bound)
    _alive(proc, group)


def _instance_array_type():
    from instance_seg_msgs.msg import InstanceArray

    return InstanceArray


def test_publisher_dies_and_comes_back(node, procs):
    """The camera process is killed (no goodbye) and restarted with its simulated clock starting over, only
    about 1.5 s back: less than the synchronizer's 3 s jump-back threshold, as when discovery of the new camera
    takes a while (this failed in CI before the synchronizer learnt to recognise a new publisher and a run of
    older stamps). The node resumes without a restart and says why it reset."""
    h, proc, group = node
    cam_cmd = [sys.executable, "-m", "instance_seg_ros.sim.camera_node", "--ros-args", "-p", "width:=160",
               "-p", "height:=120", "-p", "rate:=10.0", "-p", "use_sim_time:=true", "-p", "max_objects:=4"]

    def sim_outputs() -> int:  # outputs for simulated stamps (both runs' stamps start at 0.1 s)
        return sum(len(v) for s, v in h.out.instances.items() if 0 < s < 1e12)

    cam = procs.start(cam_cmd, log_name="sim_camera_faults_1")
    assert h.ctx.spin_until(lambda: any(1.5e9 < s < 1e12 for s in h.out.instances), 90.0), \
        f"no output from the camera; {procs.log(cam)}"
    os.killpg(cam.pid, signal.SIGKILL)
    cam.wait(10)
    h.spin(1.0)
    n_first = sim_outputs()
    cam2 = procs.start(cam_cmd, log_name="sim_camera_faults_2")
    assert h.ctx.spin_until(lambda: sim_outputs() > n_first, 90.0), \
        f"processing did not resume; node log:\n{group.log(proc)[-3000:]}\ncamera log:\n{procs.log(cam2)}"
    procs.stop(cam2)
    _alive(proc, group)
    assert "Input time base restarted" in group.log(proc), group.log(proc)[-3000:]


# ---------------------------------------------------------------------------------------- soak smoke run
def test_soak_smoke(procs, tmp_path):
    """``isr soak`` for 15 s (rows every 5 s) against the untrained small model: rows, a verdict, exit 0."""
    out = tmp_path / "soak.json"
    p = procs.start([sys.executable, "-m", "instance_seg_ros.tools.cli", "soak", "--seconds", "15", "--interval",
                     "5", "--params", str(PKG_DIR / "config" / "test_untrained.yaml"), "--width", "160", "--height",
                     "120", "--rate", "20", "--max-rss-growth", "10", "--json", str(out),
                     "--log-dir", str(tmp_path / "logs")], log_name="isr_soak_smoke")
    code = _wait_exit(p, 120.0)
    log = procs.log(p)
    assert code == 0, log
    report = json.loads(out.read_text())
    assert len(report["rows"]) == 3 and report["verdict"]["ok"], report
    for row in report["rows"]:
        assert row["rss_mb"] > 50 and row["fds"] > 3 and row["out_hz"] > 0 and row["in_hz"] > 0
        assert row["latency_ms"]["p50"] is not None
    assert "rss MB" in log and "isr soak: OK" in log


# ---------------------------------------------------------------------------------------- security (static)
def _calls(tree):
    import ast

    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            f = n.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield n, (None if isinstance(f, ast.Name) else owner), name


def test_no_code_from_parameters_or_files_is_ever_run():
    """Static check of the package and launch files: no eval / exec / compile / __import__, no pickle or unsafe
    YAML loading, every torch.load has weights_only=True (no fallback), and the only dynamic import is the isr
    dispatcher's fixed module table."""
    import ast

    roots = [PKG_DIR / "instance_seg_ros", PKG_DIR / "launch"]
    files = sorted(p for r in roots for p in r.rglob("*.py"))
    assert len(files) > 20
    problems, torch_loads, dynamic_imports = [], [], []
    for path in files:
        rel = path.relative_to(PKG_DIR)
        for call, owner, name in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{rel}:{call.lineno}"
            if owner is None and name in ("eval", "exec", "compile", "__import__"):
                problems.append(f"{where}: {name}()")
            elif owner in ("pickle", "cPickle", "dill", "marshal", "shelve") and name in ("load", "loads", "open"):
                problems.append(f"{where}: {owner}.{name}()")
            elif owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all"):
                problems.append(f"{where}: yaml.{name}() (use yaml.safe_load)")
            elif owner == "torch" and name == "load":
                torch_loads.append(where)
                kw = {k.arg: k.value for k in call.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            elif name in ("import_module", "run_path", "run_module", "load_source", "exec_module"):
                dynamic_imports.append(where)
    assert not problems, problems
    assert any("core/model/weights.py" in w for w in torch_loads)
    assert all("tools/cli.py" in w for w in dynamic_imports), dynamic_imports
    cli = (PKG_DIR / "instance_seg_ros" / "tools" / "cli.py").read_text()
    assert "module, _ = SUBCOMMANDS[name]" in cli, "the dispatcher imports only modules of its fixed table"


def test_soak_rss_verdict():
    from instance_seg_ros.tools.soak import proc_sample, rss_verdict

    assert rss_verdict([900, 1000, 1030, 1049], 2, 5.0)[:2] == (True, pytest.approx(4.9))
    ok, growth, baseline = rss_verdict([900, 1000, 1030, 1051], 2, 5.0)
    assert not ok and baseline == 1000 and growth == pytest.approx(5.1)
    assert rss_verdict([1000], 1, 5.0) == (True, 0.0, 1000)
    with pytest.raises(ValueError, match="run longer"):
        rss_verdict([1000], 2, 5.0)
    me = proc_sample(os.getpid())
    assert me["rss_kb"] > 1000 and me["fds"] >= 3 and me["threads"] >= 1
    with pytest.raises(ProcessLookupError):
        proc_sample(2**22 + 12345)
