"""``sim_camera_node``: its frame source, its parameters, and the node as a real process on real DDS.

The process tests start ``sim_camera_node`` (the console script) at 160x120 and subscribe from this process
with reliable QoS: frames arrive on image, depth, camera_info and ground_truth with one stamp per frame,
the encodings, sizes, intrinsics and frame ids are a driver's, depth is plausible, ground-truth masks are
tight crops of their boxes; the 32FC1 / compressed / sim-time variant publishes /clock equal to the frame
stamps and exits 0 by itself after ``max_frames``; SIGINT exits 0.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from instance_seg_ros.sim.camera import d435_intrinsics
from instance_seg_ros.sim.camera_node import SPECS, SimCameraError, SimCameraSettings, ground_truth_msg
from instance_seg_ros.sim.camera_source import SimCameraSource, scene_seed

W, H = 160, 120
FRAME_ID = "sim_cam_optical"


# ---------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"width": 8}, "width"),
        ({"rate": 0.0}, "rate"),
        ({"rate": float("nan")}, "rate"),
        ({"camera_motion": "spin"}, "camera_motion"),
        ({"depth_encoding": "mono16"}, "depth_encoding"),
        ({"qos.reliability": "sometimes"}, "qos.reliability"),
        ({"min_objects": 5, "max_objects": 2}, "min_objects"),
        ({"frame_id": " "}, "frame_id"),
        ({"noise": 1}, "noise"),
        ({"seed": -1}, "seed"),
        ({"max_frames": 2.5}, "max_frames"),
        ({"colour": True}, "colour"),
    ],
)
def test_settings_refuse_bad_values_with_a_reason(values, words):
    with pytest.raises(SimCameraError, match=words.replace(".", r"\.")) as info:
        SimCameraSettings.from_flat(values)
    assert isinstance(info.value, ValueError)


def test_settings_round_trip_and_widen_ints():
    s = SimCameraSettings.from_flat({"rate": 5, "qos.depth": 3, "camera_motion": "orbit"})
    assert s.rate == 5.0 and isinstance(s.rate, float)
    assert s.qos_depth == 3 and s.camera_motion == "orbit"
    assert SimCameraSettings.from_flat(s.to_flat()) == s
    assert [spec.name for spec in SPECS] == list(SimCameraSettings().to_flat())
    assert s.intrinsics == d435_intrinsics(640, 480)


# ---------------------------------------------------------------------------------------- frame source (no ROS)
def _small(**kw) -> SimCameraSettings:
    return SimCameraSettings(width=W, height=H, min_objects=3, max_objects=5, **kw)


def test_static_source_renders_once_and_noise_changes_per_frame():
    with SimCameraSource(_small()) as src:
        f0, f1 = src.next(), src.next()
        assert (f0.index, f1.index, f0.scene_index, f1.scene_index) == (0, 1, 0, 0)
        assert f0.rendered and not f1.rendered  # a static camera re-publishes its render
        assert f0.color.shape == (H, W, 3) and f0.color.dtype == np.uint8
        assert f0.depth.shape == (H, W) and f0.depth.dtype == np.float32
        np.testing.assert_array_equal(f0.color, f1.color)
        assert f0.ground_truth is None
        z = f0.depth[np.isfinite(f0.depth)]
        assert z.size > 0.5 * W * H and 0.3 < np.median(z) < 1.5
        clean = f0.depth

    with SimCameraSource(_small(noise=True)) as src:
        n0, n1 = src.next(), src.next()
        assert not n1.rendered
        both = np.isfinite(n0.depth) & np.isfinite(n1.depth) & np.isfinite(clean)
        assert both.mean() > 0.4
        assert not np.array_equal(n0.depth[both], n1.depth[both])  # fresh noise every frame
        err = np.abs(n0.depth[both] - clean[both])
        assert np.median(err) < 0.01  # D435-like: millimetres at this range
        assert not np.array_equal(n0.color, n1.color)


def test_orbit_scene_change_determinism_and_ground_truth():
    settings = _small(camera_motion="orbit", orbit_speed=30.0, rate=10.0, scene_change_every=2)
    with SimCameraSource(settings, with_ground_truth=True) as a, SimCameraSource(settings) as b:
        fa = [a.next() for _ in range(3)]
        fb = [b.next() for _ in range(3)]
        assert [f.scene_index for f in fa] == [0, 0, 1]
        assert all(f.rendered for f in fa)
        # 30 deg/s at 10 Hz: 3 degrees of azimuth between frames, same distance to the target
        c0, c1 = fa[0].camera.position, fa[1].camera.position
        assert np.linalg.norm(c0 - c1) > 0.01 and c0[2] == pytest.approx(c1[2])  # same elevation, new azimuth
        assert fa[2].scene_index == 1 and a.scene is not None and a.scene.seed == scene_seed(0, 1)
        for x, y in zip(fa, fb, strict=True):  # same settings -> same frames
            np.testing.assert_array_equal(x.color, y.color)
            np.testing.assert_array_equal(x.depth, y.depth)
        gt = fa[0].ground_truth
        assert gt is not None and fb[0].ground_truth is None
        assert (gt.width, gt.height) == (W, H) and len(gt.instances) >= 1
        for inst in gt.instances:
            x, y, w, h = inst.bbox
            assert inst.mask.shape == (h, w) and inst.mask[0].any() and inst.mask[-1].any()
            assert inst.mask[:, 0].any() and inst.mask[:, -1].any()
            assert inst.amodal_mask.sum() >= inst.mask.sum()


def test_ground_truth_messages_keep_each_object_id_and_never_reuse_it_in_another_scene():
    """What the node publishes on ground_truth (:func:`ground_truth_msg`): per object a non-zero track id, the same in
    every frame of its scene (its category and true size identify it), and ids of their own in the next scene."""
    from instance_seg_ros.core.msg_codec import frame_result_from_instance_array
    from instance_seg_ros.ros.conversions import header

    settings = _small(camera_motion="orbit", orbit_speed=30.0, rate=10.0, scene_change_every=3)
    with SimCameraSource(settings, with_ground_truth=True) as src:
        frames = [src.next() for _ in range(6)]
    ids_by_scene: dict[int, dict[int, tuple]] = {}
    for k, f in enumerate(frames):
        gt = frame_result_from_instance_array(ground_truth_msg(f, header(FRAME_ID, (k + 1) * 10**8)))
        assert gt.instances and all(i.track_id for i in gt.instances)
        who = ids_by_scene.setdefault(f.scene_index, {})
        for inst in gt.instances:
            sig = (inst.class_name, tuple(np.round(inst.box_size, 4)))
            assert who.setdefault(inst.track_id, sig) == sig, f"track id {inst.track_id} changed objects"
    assert sorted(ids_by_scene) == [0, 1]
    assert not set(ids_by_scene[0]) & set(ids_by_scene[1])
    assert all(len(set(w.values())) == len(w) for w in ids_by_scene.values())  # one id per object
    # the source's own ground truth is left as it was (object ids), so a static camera's cached render stays right
    assert {i.track_id for i in frames[-1].ground_truth.instances} <= set(range(1, 6))


# ---------------------------------------------------------------------------------------- node in this process
@pytest.mark.ros
def test_node_parameters_refuse_fixed_and_bad_values(ros):
    from rclpy.parameter import Parameter

    from instance_seg_ros.sim.camera_node import SimCameraNode

    node = SimCameraNode(context=ros.context, parameter_overrides=[
        Parameter("width", Parameter.Type.INTEGER, W), Parameter("height", Parameter.Type.INTEGER, H),
        Parameter("rate", Parameter.Type.INTEGER, 50),  # an integer for a float parameter is taken as 50.0
    ])
    try:
        assert node.settings.rate == 50.0 and node.settings.width == W
        results = node.set_parameters([Parameter("width", Parameter.Type.INTEGER, 320)])
        assert not results[0].successful and "read-only" in results[0].reason.lower()
        results = node.set_parameters([Parameter("camera_motion", Parameter.Type.STRING, "spin")])
        assert not results[0].successful and "camera_motion must be one of" in results[0].reason
        results = node.set_parameters([Parameter("rate", Parameter.Type.DOUBLE, -1.0)])
        assert not results[0].successful
        results = node.set_parameters([Parameter("use_sim_time", Parameter.Type.BOOL, True)])
        assert not results[0].successful and "restart" in results[0].reason
        results = node.set_parameters([Parameter("camera_motion", Parameter.Type.STRING, "orbit"),
                                       Parameter("rate", Parameter.Type.DOUBLE, 1000.0)])
        assert all(r.successful for r in results), [r.reason for r in results]
        assert node.settings.camera_motion == "orbit" and node.settings.rate == 1000.0
        # 1000 Hz cannot be rendered: frames follow each other as fast as possible and count as late
        node.start()
        assert ros.spin_until(lambda: node.frames_published >= 4, timeout=30.0)
        assert node.late_frames >= 3
    finally:
        node.close()
        node.destroy_node()
    assert node.finished.is_set() and node.error is None


# ---------------------------------------------------------------------------------------- node as a process
def _command(*params: str) -> list[str]:
    exe = shutil.which("sim_camera_node")
    assert exe, "sim_camera_node is not on PATH; source env.sh"
    args = [exe, "--ros-args", "-p", f"width:={W}", "-p", f"height:={H}", "-p", f"frame_id:={FRAME_ID}",
            "-p", "min_objects:=3", "-p", "max_objects:=6"]
    for p in params:
        args += ["-p", p]
    return args


class _Collector:
    """Reliable subscriptions in the test process; messages stored by stamp (ns) per topic."""

    def __init__(self, ros, ns: str, topics: dict[str, type]) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from instance_seg_ros.ros.conversions import stamp_to_ns

        self.by_topic: dict[str, dict[int, object]] = {t: {} for t in topics if t != "/clock"}
        self.clocks: list[int] = []
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.subs = []
        for topic, msg_type in topics.items():
            name = "/clock" if topic == "/clock" else f"{ns}/{topic}"
            self.subs.append(ros.node.create_subscription(msg_type, name, self._callback(topic, stamp_to_ns), qos))

    def _callback(self, topic: str, stamp_to_ns):
        def store(msg) -> None:
            if topic == "/clock":
                self.clocks.append(stamp_to_ns(msg.clock))
            else:
                self.by_topic[topic][stamp_to_ns(msg.header.stamp)] = msg

        return store

    def common(self, topics: list[str]) -> list[int]:
        sets = [set(self.by_topic[t]) for t in topics]
        return sorted(set.intersection(*sets))


def _depth_m(msg) -> np.ndarray:
    """float32[H, W] meters (NaN invalid) of a 16UC1 or 32FC1 depth Image."""
    from instance_seg_ros.core.images import decode_depth

    return decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))


def _check_frame(c: _Collector, stamp: int, depth_encoding: str) -> None:

    img, dep, info = (c.by_topic[t][stamp] for t in ("image", "depth", "camera_info"))
    for m in (img, dep, info):
        assert m.header.frame_id == FRAME_ID
    assert (img.encoding, img.width, img.height, img.step, img.is_bigendian) == ("rgb8", W, H, 3 * W, 0)
    color = np.frombuffer(img.data, np.uint8).reshape(H, W, 3)
    assert color.std() > 5  # a scene, not a blank image
    bpp = 2 if depth_encoding == "16UC1" else 4
    assert (dep.encoding, dep.width, dep.height, dep.step) == (depth_encoding, W, H, bpp * W)
    depth = _depth_m(dep)
    valid = np.isfinite(depth)
    assert valid.mean() > 0.5
    assert 0.3 < np.median(depth[valid]) < 1.5 and depth[valid].min() > 0.05 and depth[valid].max() < 5.0
    k = d435_intrinsics(W, H)
    assert (info.width, info.height, info.distortion_model) == (W, H, "plumb_bob")
    np.testing.assert_allclose(info.k, [k.fx, 0, k.cx, 0, k.fy, k.cy, 0, 0, 1])
    np.testing.assert_allclose(info.p, [k.fx, 0, k.cx, 0, 0, k.fy, k.cy, 0, 0, 0, 1, 0])


@pytest.mark.ros
@pytest.mark.slow
def test_frames_arrive_with_matching_stamps_and_ground_truth(procs, ros):
    from sensor_msgs.msg import CameraInfo, Image

    from instance_seg_msgs.msg import InstanceArray
    from instance_seg_ros.core.msg_codec import frame_result_from_instance_array as frame_result_from_msg

    ns = "/sim_cam_a"
    c = _Collector(ros, ns, {"image": Image, "depth": Image, "camera_info": CameraInfo, "ground_truth": InstanceArray})
    topics = list(c.by_topic)
    t_start = time.time_ns()
    p = procs.start(_command("rate:=10.0", "publish_ground_truth:=true", "depth_encoding:=16UC1") +
                    ["-r", f"__ns:={ns}"], log_name="sim_camera_node")
    ok = ros.spin_until(lambda: len(c.common(topics)) >= 6 or p.poll() is not None, timeout=30.0)
    assert ok and p.poll() is None, f"frames did not arrive; log:\n{procs.log(p)}"
    stamps = c.common(topics)
    # one stamp per frame on all four topics, wall clock, about 1 / rate apart
    assert all(t_start - 1e9 < s < time.time_ns() + 1e9 for s in stamps)
    gaps = np.diff(stamps) / 1e9
    assert 0.07 < np.median(gaps) < 0.2, gaps
    for s in stamps:
        _check_frame(c, s, "16UC1")

    msg = c.by_topic["ground_truth"][stamps[-1]]
    assert msg.header.frame_id == FRAME_ID and (msg.width, msg.height) == (W, H)
    gt = frame_result_from_msg(msg)
    assert len(gt.instances) >= 1
    depth = _depth_m(c.by_topic["depth"][stamps[-1]])
    for m, inst in zip(msg.instances, gt.instances, strict=True):
        assert m.mask.header.frame_id == FRAME_ID and m.mask.encoding == "mono8"
        for box, mask in ((inst.bbox, inst.mask), (inst.amodal_bbox, inst.amodal_mask)):
            x, y, w, h = box
            assert w > 0 and h > 0 and mask.shape == (h, w)
            assert 0 <= x and 0 <= y and x + w <= W and y + h <= H
            # a tight crop: the mask touches all four sides of its box
            assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
        x, y, w, h = inst.bbox
        ax, ay, aw, ah = inst.amodal_bbox
        assert ax <= x and ay <= y and x + w <= ax + aw and y + h <= ay + ah  # amodal contains visible
        visible = np.zeros((H, W), bool)
        visible[y:y + h, x:x + w] = inst.mask
        assert np.isfinite(depth[visible]).mean() > 0.95  # the visible object is where the depth is
        assert 0.0 <= inst.occlusion < 1.0 and 0.3 < inst.centroid[2] < 1.5
    assert procs.stop(p) == 0, f"SIGINT should exit 0; log:\n{procs.log(p)}"
    assert "Traceback" not in procs.log(p)


@pytest.mark.ros
@pytest.mark.slow
def test_sim_time_clock_32fc1_compressed_and_max_frames(procs, ros):
    import cv2
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    ns = "/sim_cam_b"
    rate, n = 20.0, 40
    c = _Collector(ros, ns, {"image": Image, "depth": Image, "camera_info": CameraInfo,
                             "image/compressed": CompressedImage, "/clock": Clock})
    p = procs.start(_command(f"rate:={rate}", f"max_frames:={n}", "use_sim_time:=true", "depth_encoding:=32FC1",
                             "compressed:=true", "camera_motion:=orbit", "noise:=true",
                             "wait_for_subscribers:=2") + ["-r", f"__ns:={ns}"],
                    log_name="sim_camera_node_simtime")
    exited = ros.spin_until(lambda: p.poll() is not None, timeout=40.0)
    assert exited, f"max_frames:={n} did not end the process; log:\n{procs.log(p)}"
    ros.spin_for(0.3)
    assert p.returncode == 0, f"exit code {p.returncode}; log:\n{procs.log(p)}"
    assert "Traceback" not in procs.log(p)

    period = round(1e9 / rate)
    # wait_for_subscribers held the first frame until this process matched: nothing is lost on image, and the
    # other readers (matched in the same discovery round, almost always) lose at most a few first frames
    assert len(c.by_topic["image"]) == n, procs.log(p)
    assert len(c.clocks) >= n - 5 and all(len(v) >= n - 5 for v in c.by_topic.values()), procs.log(p)
    # /clock: simulated time advancing 1 / rate per frame, from 1 / rate to n / rate
    assert all(b > a for a, b in zip(c.clocks, c.clocks[1:], strict=False))
    assert all(t % period == 0 and period <= t <= n * period for t in c.clocks)
    assert c.clocks[-1] == n * period  # the last frame was acknowledged before the process exited
    stamps = c.common(["image", "depth", "camera_info"])
    assert len(stamps) >= n - 5 and stamps[-1] == n * period
    assert set(stamps) <= set(c.clocks)  # every frame is stamped with the /clock time published for it
    for s in stamps:
        _check_frame(c, s, "32FC1")
    compressed = c.by_topic["image/compressed"]
    assert compressed, "no image/compressed received"
    for s, m in compressed.items():
        assert m.header.frame_id == FRAME_ID and "jpeg" in m.format
        bgr = cv2.imdecode(np.frombuffer(m.data, np.uint8), cv2.IMREAD_COLOR)
        assert bgr.shape == (H, W, 3)
        if s in c.by_topic["image"]:
            raw = np.frombuffer(c.by_topic["image"][s].data, np.uint8).reshape(H, W, 3)
            assert np.abs(bgr[..., ::-1].astype(int) - raw).mean() < 8  # the same picture, JPEG-compressed
    # the orbiting camera sees a different picture every frame
    imgs = [np.frombuffer(c.by_topic["image"][s].data, np.uint8) for s in stamps[-2:]]
    assert not np.array_equal(*imgs)


@pytest.mark.ros
def test_sigterm_while_waiting_for_subscribers_exits_cleanly(procs, ros):
    import signal

    p = procs.start(_command("wait_for_subscribers:=3") + ["-r", "__ns:=/sim_cam_c"], log_name="sim_camera_node_term")
    up = ros.spin_until(lambda: "waiting for 3 subscriber(s)" in procs.log(p) or p.poll() is not None, timeout=30.0)
    assert up and p.poll() is None, f"node did not come up; log:\n{procs.log(p)}"
    p.send_signal(signal.SIGTERM)
    assert p.wait(10.0) == 0, f"SIGTERM should exit 0; log:\n{procs.log(p)}"
    assert "Traceback" not in procs.log(p) and "published" not in procs.log(p)
