"""``grasp_node``: its message adapter (no middleware), and the node as a separate process over real DDS.

The adapter tests (:mod:`instance_seg_ros.ros.grasp_io`) run everywhere.

The process tests start ``python -m instance_seg_ros.ros.grasp_node --ros-args ...`` once for the module, in this
pytest process's own ROS_DOMAIN_ID (conftest.py), and talk to it from a private rclpy context; every wait is bounded
and the process is always stopped and reaped. The frame is a simulated 320x240 tabletop (a box and a cylinder,
:mod:`instance_seg_ros.sim`) with its ground truth as instance_seg_node would publish it: the InstanceArray, the
mono16 label image, 16UC1 depth and camera_info, all with one stamp. The node subscribes best effort (its default,
as for a camera), so a sample can be lost across processes (PLATFORM.md): the test publishes a new set every
0.4 s with a new stamp, as a camera streams, and waits for an answer to any of them. Planning one instance takes
2-8 s on these CPUs; the node plans only the newest set, so most sets are skipped. The process tests skip where the
Contact-GraspNet extra (cgn_pytorch) is not importable; the missing-extra test runs everywhere.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from typing import Any

import numpy as np
import pytest
from ros_helpers import ProcessGroup, RosTestContext

from instance_seg_ros.core.geometry import matrix_to_quaternion, pose_matrix, quaternion_to_matrix
from instance_seg_ros.core.images import decode_labels, encode_depth_16uc1
from instance_seg_ros.core.types import FrameError, Intrinsics
from instance_seg_ros.grasp import GRIPPER_DEPTH, Grasp
from instance_seg_ros.grasp.quality import PANDA, gripper_lines
from instance_seg_ros.ros.frame_inputs import FrameRejected
from instance_seg_ros.ros.grasp_io import (
    decode_grasp_inputs,
    grasp_array_msg,
    grasp_markers_msg,
    pose_msg,
    score_color,
    select_indices,
)

FRAME_ID = "camera_color_optical_frame"
S = 1_000_000_000
NO_EXTRA = "the Contact-GraspNet extra (cgn_pytorch) is not installed: make setup-grasp"


# ---------------------------------------------------------------------------------------- adapter (no middleware)
def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _grasp(rng: np.random.Generator, score: float, width: float = 0.03) -> Grasp:
    """A grasp following the planner's convention: base GRIPPER_DEPTH behind the finger tips' midpoint."""
    r = _random_rotation(rng)
    contact = rng.uniform([-0.2, -0.2, 0.5], [0.2, 0.2, 1.0])
    pose = np.eye(4)
    pose[:3, :3] = r
    pose[:3, 3] = contact + width / 2 * r[:, 0] - GRIPPER_DEPTH * r[:, 2]
    return Grasp(pose=pose, score=score, width=width, contact=contact)


def _set(labels: np.ndarray, instances: list[tuple[int, int]], *, depth: np.ndarray | None = None,
         K: Intrinsics | None = None, stamp_ns: int = 5 * S) -> tuple[Any, Any, Any, Any]:
    """(InstanceArray, mono16 label Image, 16UC1 depth Image, CameraInfo) with one header; ``instances`` as
    ``(index, track_id)``."""
    from instance_seg_msgs.msg import Instance, InstanceArray
    from instance_seg_ros.ros.conversions import camera_info_msg, header, image_msg, label_image_msg

    h, w = labels.shape
    hdr = header(FRAME_ID, stamp_ns)
    depth = np.full((h, w), 0.8, np.float32) if depth is None else depth
    K = K or Intrinsics(100.0, 100.0, (w - 1) / 2, (h - 1) / 2, w, h)
    msg = InstanceArray(header=hdr, height=h, width=w,
                        instances=[Instance(index=i, track_id=t) for i, t in instances])
    return (msg, label_image_msg(labels, hdr), image_msg(encode_depth_16uc1(depth), "16UC1", hdr),
            camera_info_msg(K, hdr))


def _labels() -> np.ndarray:
    labels = np.zeros((30, 40), np.uint16)
    labels[2:10, 3:12] = 5  # indices need not be contiguous or in score order
    labels[15:25, 20:35] = 2
    return labels


def test_label_values_are_instance_indices_and_track_ids_follow():
    labels = _labels()
    depth = np.full(labels.shape, 0.75, np.float32)
    depth[0, 0] = np.nan
    inputs = decode_grasp_inputs(*_set(labels, [(5, 17), (2, 0)], depth=depth))
    assert inputs.indices == (5, 2)  # the InstanceArray's order
    assert inputs.track_ids == {5: 17, 2: 0}
    assert inputs.labels.dtype == np.uint16 and np.array_equal(inputs.labels, labels)
    assert inputs.depth.dtype == np.float32 and np.isnan(inputs.depth[0, 0])
    assert np.allclose(inputs.depth[1:], 0.75)  # 16UC1 millimetres -> metres
    assert (inputs.K.width, inputs.K.height, inputs.K.fx) == (40, 30, 100.0)
    assert inputs.without_pixels == ()
    # an instance without a pixel of its own (covered by a higher-scored one) is fine: it is just not planned for
    inputs = decode_grasp_inputs(*_set(labels, [(5, 17), (2, 0), (9, 4)]))
    assert inputs.without_pixels == (9,)
    assert select_indices(inputs, "all", []) == [5, 2]


def test_select_by_index_or_track_id():
    inputs = decode_grasp_inputs(*_set(_labels(), [(5, 17), (2, 0)]))
    assert select_indices(inputs, "index", [2, 99]) == [2]
    assert select_indices(inputs, "index", []) == []
    assert select_indices(inputs, "track_id", [17]) == [5]
    assert select_indices(inputs, "track_id", [2]) == []  # track ids, not indices
    assert select_indices(inputs, "track_id", [0]) == []  # untracked instances have none
    with pytest.raises(ValueError, match="select must be one of all, index, track_id"):
        select_indices(inputs, "best", [])


def _nan_info(m):
    m[3].k[0] = float("nan")


def _rgb_depth(m):
    from instance_seg_ros.ros.conversions import image_msg

    m[2] = image_msg(np.zeros((30, 40, 3), np.uint8), "rgb8", m[2].header)


def _small_depth(m):
    from instance_seg_ros.ros.conversions import image_msg

    m[2] = image_msg(encode_depth_16uc1(np.full((15, 20), 0.8, np.float32)), "16UC1", m[2].header)


def _float_labels(m):
    from instance_seg_ros.ros.conversions import image_msg

    m[1] = image_msg(_labels().astype(np.float32), "32FC1", m[1].header)


def _empty_labels(m):
    m[1].height = m[1].width = m[1].step = 0
    m[1].data = []


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        (lambda m: m[0].instances.__setitem__(0, type(m[0].instances[0])(index=0)), "bad_instances", ">= 1"),
        (lambda m: m[0].instances.append(type(m[0].instances[0])(index=5)), "bad_instances", "distinct"),
        (_float_labels, "bad_label_image", "32FC1"),
        (_empty_labels, "bad_label_image", "positive"),
        (_rgb_depth, "bad_depth", "rgb8"),
        (_nan_info, "bad_camera_info", "fx"),
        (_small_depth, "size_mismatch", "depth 20x15"),
        (lambda m: setattr(m[0], "width", 80), "size_mismatch", "instances 80x30"),
        (lambda m: m[0].instances.__setitem__(1, type(m[0].instances[0])(index=7)), "label_mismatch", "2"),
    ],
)
def test_bad_sets_are_refused_with_a_reason(change, reason, words):
    msgs = list(_set(_labels(), [(5, 17), (2, 0)]))
    change(msgs)
    with pytest.raises(FrameRejected, match=words) as info:
        decode_grasp_inputs(*msgs)
    assert info.value.reason == reason


def test_empty_label_image_and_no_instances():
    labels = np.zeros((30, 40), np.uint16)
    with pytest.raises(FrameRejected) as info:  # instances whose indices are nowhere in the label image
        decode_grasp_inputs(*_set(labels, [(1, 0), (2, 0)]))
    assert info.value.reason == "empty_label_image"
    inputs = decode_grasp_inputs(*_set(labels, []))  # no instances, no labels: a valid (empty) frame
    assert inputs.indices == () and select_indices(inputs, "all", []) == []


def test_label_decoder_encodings():
    a = np.array([[0, 3], [70000 % 65536, 1]], np.uint16)
    assert np.array_equal(decode_labels("mono16", 2, 2, 4, a.tobytes()), a)
    assert np.array_equal(decode_labels("16UC1", 2, 2, 4, a.byteswap().tobytes(), True), a)
    b = np.array([[0, 1], [2, 100000]], np.int32)
    out = decode_labels("32SC1", 2, 2, 8, b.tobytes())
    assert out.dtype == np.int32 and np.array_equal(out, b)
    assert np.array_equal(decode_labels("mono8", 2, 2, 3, bytes([0, 1, 9, 2, 3, 9])), [[0, 1], [2, 3]])  # padded
    with pytest.raises(FrameError, match="negative"):
        decode_labels("32SC1", 1, 1, 4, np.array([-1], np.int32).tobytes())
    with pytest.raises(FrameError, match="not supported"):
        decode_labels("rgb8", 1, 1, 3, b"\0\0\0")


def test_grasps_to_messages_carry_instance_track_and_pose():
    from instance_seg_ros.ros.conversions import header

    rng = np.random.default_rng(3)
    grasps = {5: [_grasp(rng, 0.9), _grasp(rng, 0.6, 0.0)], 2: [_grasp(rng, 0.8)], 9: []}
    hdr = header(FRAME_ID, 7 * S + 5)
    msg = grasp_array_msg(grasps, [5, 2, 9], {5: 17, 2: 0, 9: 4}, hdr, planning_ms=1234.5)
    assert msg.header.frame_id == FRAME_ID and (msg.header.stamp.sec, msg.header.stamp.nanosec) == (7, 5)
    assert msg.planning_ms == pytest.approx(1234.5)
    assert [(g.instance_index, g.track_id) for g in msg.grasps] == [(5, 17), (5, 17), (2, 0)]
    for m, g in zip(msg.grasps, grasps[5] + grasps[2], strict=True):
        assert m.score == pytest.approx(g.score) and m.width == pytest.approx(g.width)
        assert np.allclose([m.contact.x, m.contact.y, m.contact.z], g.contact)
        o, p = m.pose.orientation, m.pose.position
        q = np.array([o.x, o.y, o.z, o.w])
        assert np.linalg.norm(q) == pytest.approx(1.0)
        assert np.allclose(pose_matrix([p.x, p.y, p.z], q), g.pose, atol=1e-9)  # the round trip
    assert grasp_array_msg(grasps, [9], {}, hdr).grasps == []
    assert grasp_array_msg(grasps, [2], {}, hdr).grasps[0].track_id == 0


def test_pose_quaternion_round_trip_near_180_degrees():
    for axis in np.eye(3):  # trace -1: the numerically awkward branch of the conversion
        r = 2 * np.outer(axis, axis) - np.eye(3)
        t = np.eye(4)
        t[:3, :3], t[:3, 3] = r, [0.1, -0.2, 0.7]
        o = pose_msg(t).orientation
        assert np.allclose(quaternion_to_matrix([o.x, o.y, o.z, o.w]), r, atol=1e-12)
    assert np.allclose(matrix_to_quaternion(np.eye(3)), [0, 0, 0, 1])


def test_gripper_drawing_follows_the_grasp_convention():
    seg = gripper_lines(np.eye(4), 0.04)  # the marker's points: the gripper frame
    assert seg.shape == (4, 2, 3)
    assert np.allclose(seg[0, 0], 0) and np.allclose(seg[0, 1, :2], 0)  # stem: base to palm along the approach
    assert np.allclose(seg[2, 1], [-0.02, 0, PANDA.tip_z]) and np.allclose(seg[3, 1], [0.02, 0, PANDA.tip_z])
    # through the grasp's pose, the finger at -width/2 ends on the contact point's line of approach, its tip 2 mm on
    g = _grasp(np.random.default_rng(1), 0.7, width=0.04)
    tip = g.pose @ np.append(seg[2, 1], 1.0)
    assert np.allclose(tip[:3], g.contact + (PANDA.tip_z - GRIPPER_DEPTH) * g.pose[:3, 2])
    assert 0 < PANDA.tip_z - GRIPPER_DEPTH < 0.003
    assert np.allclose(gripper_lines(np.eye(4), -1.0)[1, :, 0], 0)  # drawn closed
    assert score_color(1.0) == (0.0, 1.0, 0.0) and score_color(0.0) == (1.0, 0.0, 0.0)
    assert score_color(0.5) == (1.0, 1.0, 0.0) and score_color(float("nan")) == (1.0, 0.0, 0.0)


def test_markers_delete_all_then_one_gripper_per_grasp():
    from visualization_msgs.msg import Marker

    from instance_seg_ros.ros.conversions import header

    rng = np.random.default_rng(4)
    grasps = {3: [_grasp(rng, 0.95, 0.02), _grasp(rng, 0.4)]}
    msg = grasp_array_msg(grasps, [3], {3: 8}, header(FRAME_ID, 3 * S))
    markers = grasp_markers_msg(msg).markers
    assert markers[0].action == Marker.DELETEALL and len(markers) == 3
    for k, (m, g) in enumerate(zip(markers[1:], msg.grasps, strict=True)):
        assert m.type == Marker.LINE_LIST and m.action == Marker.ADD and m.id == k
        assert m.header.frame_id == FRAME_ID and m.header.stamp == msg.header.stamp
        assert m.pose == g.pose and len(m.points) == 8 and m.scale.x > 0
        pts = np.array([[p.x, p.y, p.z] for p in m.points])
        assert np.allclose(pts, gripper_lines(np.eye(4), g.width).reshape(-1, 3))
    assert markers[1].color.g > markers[1].color.r and markers[2].color.r > markers[2].color.g  # green best
    assert len(grasp_markers_msg(grasp_array_msg({}, [], {}, header(FRAME_ID, S))).markers) == 1


# ---------------------------------------------------------------------------------------- parameters (in process)
@pytest.fixture
def grasp_node_in_process():
    """A GraspNode in a private context with a stand-in planner (its parameters need no network and no traffic)."""
    from rclpy.parameter import Parameter

    from instance_seg_ros.ros.grasp_node import GraspNode

    ctx = RosTestContext("grasp_params_test")
    nodes = []

    def make(**overrides):
        node = GraspNode(planner=object(), context=ctx.context,
                         parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        for node in nodes:
            node.close()
            node.destroy_node()
        ctx.shutdown()


def test_parameters_read_only_dynamic_and_refused_with_reasons(grasp_node_in_process):
    from rcl_interfaces.msg import ParameterType
    from rclpy.parameter import Parameter

    from instance_seg_ros.ros.grasp_node import GraspNodeError

    node = grasp_node_in_process(ids=[4, 2], select="index")
    assert node.ids == (4, 2) and node.settings.select == "index" and node.settings.max_grasps == 5
    d = node.describe_parameters(["device", "seed", "sync.queue_size", "max_grasps", "score_threshold", "ids"])
    assert [x.read_only for x in d] == [True, True, True, False, False, False]
    assert d[0].additional_constraints.startswith("one of: auto, cpu, cuda")
    assert d[5].type == ParameterType.PARAMETER_INTEGER_ARRAY and d[4].floating_point_range[0].to_value == 1.0

    def refused(name, value) -> str:
        (r,) = node.set_parameters([Parameter(name, value=value)])
        assert not r.successful, (name, value)
        return r.reason

    assert "select must be one of all, index, track_id" in refused("select", "best")
    assert "max_grasps out of range" in refused("max_grasps", 0)  # rclpy checks the descriptor's range
    assert ">= 1" in refused("ids", [3, -1])
    assert "read-only" in refused("device", "cuda")
    changes = [Parameter("score_threshold", value=1),  # an int for a double: taken as 1.0
               Parameter("ids", value=[7]), Parameter("select", value="track_id"), Parameter("sync.slop", value=0.05)]
    assert all(r.successful for r in node.set_parameters(changes))
    assert node.settings.score_threshold == 1.0 and node.ids == (7,) and node.settings.select == "track_id"
    with pytest.raises(GraspNodeError, match="seed"):
        grasp_node_in_process(seed=-3)


# ---------------------------------------------------------------------------------------- the node process
def _node_command(*ros_args: str) -> list[str]:
    return [sys.executable, "-m", "instance_seg_ros.ros.grasp_node", "--ros-args", *ros_args]


@pytest.mark.ros
def test_missing_extra_exits_non_zero_naming_make_setup_grasp(tmp_path):
    """Without cgn_pytorch (shadowed here by a package that fails to import) the node logs one error naming
    ``make setup-grasp`` and exits 1, whether or not the real extra is installed."""
    import os

    fake = tmp_path / "cgn_pytorch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('simulated: cgn_pytorch is not installed')\n")
    group = ProcessGroup()
    try:
        env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        proc = group.start(_node_command(), env=env, log_name="grasp_node_missing_extra")
        try:
            rc = proc.wait(60)
        except Exception:
            pytest.fail(f"grasp_node did not exit within 60 s; log:\n{group.log(proc)}")
        log = group.log(proc)
        assert rc == 1, log
        assert "make setup-grasp" in log and "simulated: cgn_pytorch is not installed" in log
        assert log.count("make setup-grasp") == 1 and "Traceback" not in log
    finally:
        group.stop_all()


@pytest.fixture(scope="module")
def sim_set():
    """A 320x240 simulated frame: (InstanceArray field source, label image, depth 16UC1 source, K, cylinder)."""
    from instance_seg_ros.sim.camera import Camera, d435_intrinsics
    from instance_seg_ros.sim.objects import TABLE_TOP_Z, ObjectSpec
    from instance_seg_ros.sim.scene import Scene

    z = TABLE_TOP_Z
    cam = Camera.look_at(eye=(0.0, -0.55, z + 0.55), target=(0.0, 0.0, z + 0.05),
                         intrinsics=d435_intrinsics(320, 240))
    with Scene(support="table") as scene:
        scene.add_object(ObjectSpec("box", size=(0.06, 0.06, 0.10), position=(-0.08, 0.0, z + 0.05), mass=0))
        scene.add_object(ObjectSpec("cylinder", size=(0.03, 0.12), position=(0.09, 0.03, z + 0.06), mass=0))
        frame = scene.render(cam)
    result = frame.to_frame_result()
    cylinder = next(i for i in result.instances if i.class_name == "cylinder")
    assert cylinder.track_id != 0 and (result.label_image == cylinder.index).sum() > 200
    return frame, result, cylinder


class GraspHarness:
    """Publishers of the node's four inputs (reliable, as instance_seg_node and a camera driver publish) and
    subscribers of its outputs and /diagnostics."""

    def __init__(self, ctx: RosTestContext, sim_set) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from visualization_msgs.msg import MarkerArray

        from instance_seg_msgs.msg import GraspArray, InstanceArray

        self.ctx = ctx
        self.frame, self.result, self.cylinder = sim_set
        node = ctx.node
        rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = [node.create_publisher(InstanceArray, "instances", rel),
                     node.create_publisher(Image, "instance_labels", rel),
                     node.create_publisher(Image, "depth", rel),
                     node.create_publisher(CameraInfo, "camera_info", rel)]
        self.grasps: list = []
        self.markers: list = []
        self.diagnostics: list[dict[str, Any]] = []
        self.sub_grasps = node.create_subscription(GraspArray, "grasps", self.grasps.append, rel)
        node.create_subscription(MarkerArray, "grasp_markers", self.markers.append, rel)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, rel)
        self._stamp = 1_700_000_000 * S
        self.sent: list[int] = []

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            if "grasp planning" in st.name:
                self.diagnostics.append({kv.key: kv.value for kv in st.values} | {"_message": st.message})

    def diag_count(self, key: str) -> int:
        return int(self.diagnostics[-1].get(key, 0)) if self.diagnostics else 0

    def connected(self) -> bool:
        return all(p.get_subscription_count() >= 1 for p in self.pubs) and \
            self.sub_grasps.get_publisher_count() >= 1 and bool(self.diagnostics)

    def messages(self, stamp_ns: int) -> list:
        from instance_seg_ros.ros.conversions import (
            camera_info_msg,
            header,
            image_msg,
            instance_array_msg,
            label_image_msg,
        )

        hdr = header(FRAME_ID, stamp_ns)
        return [instance_array_msg(self.result, hdr), label_image_msg(self.result.label_image, hdr),
                image_msg(encode_depth_16uc1(self.frame.depth), "16UC1", hdr),
                camera_info_msg(self.frame.intrinsics, hdr)]

    def publish(self, msgs: list) -> None:
        for pub, m in zip(reversed(self.pubs), reversed(msgs), strict=True):  # instances last, as in real use
            pub.publish(m)

    def stream(self, until, timeout: float, *, change=None, period: float = 0.4) -> bool:
        """Publish a new set every ``period`` s (edited by ``change(msgs)``) until ``until()`` or ``timeout``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self._stamp += 100_000_000
            msgs = self.messages(self._stamp)
            if change is not None:
                change(msgs)
            self.publish(msgs)
            self.sent.append(self._stamp)
            if self.ctx.spin_until(until, min(period, max(0.0, end - time.monotonic()))):
                return True
        return bool(until())

    @property
    def last_stamp(self) -> int:
        return self._stamp


@pytest.fixture(scope="module")
def grasp_node(sim_set):
    """grasp_node planning for the cylinder only (select:=index), at most 3 grasps, on the CPU; with a harness."""
    if importlib.util.find_spec("cgn_pytorch") is None:
        pytest.skip(NO_EXTRA)
    _, _, cylinder = sim_set
    group = ProcessGroup()
    ctx = RosTestContext("grasp_node_test")
    try:
        proc = group.start(_node_command("-p", "select:=index", "-p", f"ids:=[{cylinder.index}]", "-p",
                                         "max_grasps:=3", "-p", "device:=cpu", "-p", "diagnostics.period:=0.5"),
                           log_name="grasp_node")
        h = GraspHarness(ctx, sim_set)
        if not ctx.spin_until(lambda: h.connected() or proc.poll() is not None, 90.0) or proc.poll() is not None:
            pytest.fail(f"grasp_node did not come up; alive={proc.poll() is None}; log:\n{group.log(proc)}")
        yield h, proc, group
    finally:
        ctx.shutdown()
        group.stop_all()


def _pixel_label(contact, K: Intrinsics, labels: np.ndarray) -> int:
    u = round(K.fx * contact.x / contact.z + K.cx)
    v = round(K.fy * contact.y / contact.z + K.cy)
    return int(labels[v, u])


def _check_grasps(h: GraspHarness, msg) -> None:
    frame, result, cyl = h.frame, h.result, h.cylinder
    assert msg.header.frame_id == FRAME_ID
    assert msg.header.stamp.sec * S + msg.header.stamp.nanosec in h.sent  # the input frame's stamp
    assert 1 <= len(msg.grasps) <= 3 and msg.planning_ms > 0
    scores = [g.score for g in msg.grasps]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.3
    for g in msg.grasps:
        assert g.instance_index == cyl.index and g.track_id == cyl.track_id  # only the requested instance
        assert _pixel_label(g.contact, frame.intrinsics, result.label_image) == cyl.index
        o = g.pose.orientation
        assert np.linalg.norm([o.x, o.y, o.z, o.w]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.ros
@pytest.mark.slow
def test_node_publishes_grasps_on_the_requested_instance(grasp_node):
    h, proc, group = grasp_node
    got = h.stream(lambda: any(m.grasps for m in h.grasps) and len(h.markers) >= len(h.grasps), 60.0)
    assert got, f"no grasps within 60 s; grasps={len(h.grasps)}; diag={h.diagnostics[-1:]}; log:\n{group.log(proc)}"
    msg = next(m for m in h.grasps if m.grasps)
    _check_grasps(h, msg)
    markers = next(m.markers for m in h.markers if m.markers[0].header.stamp == msg.header.stamp)
    assert markers[0].action == 3 and len(markers) == 1 + len(msg.grasps)  # DELETEALL, then one per grasp
    assert all(m.type == 5 and len(m.points) == 8 for m in markers[1:])  # LINE_LIST grippers
    assert h.ctx.spin_until(lambda: h.diag_count("grasps_published") >= len(msg.grasps), 5.0)
    assert proc.poll() is None


def _wrong_size_depth(msgs: list) -> None:
    from instance_seg_ros.ros.conversions import image_msg

    msgs[2] = image_msg(encode_depth_16uc1(np.full((120, 160), 0.8, np.float32)), "16UC1", msgs[2].header)


def _nan_intrinsics(msgs: list) -> None:
    msgs[3].k[0] = float("nan")


def _unknown_index(msgs: list) -> None:
    for inst in msgs[0].instances:
        inst.index += 10  # the label image holds the real indices


@pytest.mark.ros
@pytest.mark.slow
def test_node_survives_bad_sets_and_plans_the_next_good_one(grasp_node):
    h, proc, group = grasp_node
    for change, reason in ((_wrong_size_depth, "size_mismatch"), (_nan_intrinsics, "bad_camera_info"),
                           (_unknown_index, "label_mismatch")):
        before = h.diag_count(f"rejected.{reason}")
        # the worker may still be planning an earlier set (seconds): keep sending until this one is refused
        ok = h.stream(lambda r=reason, b=before: h.diag_count(f"rejected.{r}") > b, 40.0, change=change)
        assert ok, f"rejected.{reason} did not rise; diag={h.diagnostics[-1:]}; log:\n{group.log(proc)}"
        assert proc.poll() is None, f"grasp_node died on a bad set ({reason}); log:\n{group.log(proc)}"
    last_bad = h.last_stamp
    n0 = len(h.grasps)

    def good_answer() -> bool:
        return any(m.grasps and m.header.stamp.sec * S + m.header.stamp.nanosec > last_bad for m in h.grasps[n0:])

    assert h.stream(good_answer, 60.0), f"no grasps after the bad sets; log:\n{group.log(proc)}"
    _check_grasps(h, next(m for m in h.grasps[n0:] if m.grasps))
    assert h.diag_count("frames_rejected") >= 3 and h.diagnostics[-1]["pipeline_errors"] == "0"
    assert proc.poll() is None
