"""A real cross-process round trip of the message contract over Fast DDS on loopback."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from ros_helpers import TEST_DIR
from sample_data import FRAME_ID, HEIGHT, STAMP_NS, WIDTH, sample_result

pytestmark = pytest.mark.ros


def test_instance_array_round_trip_between_processes(procs, ros):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from instance_seg_msgs.msg import InstanceArray
    from instance_seg_ros.core.msg_codec import frame_result_from_instance_array as frame_result_from_msg
    from instance_seg_ros.core.msg_codec import pointcloud2_arrays as pointcloud2_to_arrays
    from instance_seg_ros.ros.conversions import stamp_to_ns

    received: list[InstanceArray] = []
    ros.node.create_subscription(InstanceArray, "instances", received.append,
                                 QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    pub = procs.start([sys.executable, str(TEST_DIR / "roundtrip_publisher.py")], log_name="roundtrip_publisher")
    ok = ros.spin_until(lambda: bool(received), timeout=30.0)
    assert ok, f"no InstanceArray received; publisher log:\n{procs.log(pub)}"
    assert pub.poll() is None, "publisher died"

    msg = received[0]
    expected = sample_result()
    assert msg.header.frame_id == FRAME_ID
    assert stamp_to_ns(msg.header.stamp) == STAMP_NS
    assert (msg.height, msg.width) == (HEIGHT, WIDTH)
    assert len(msg.instances) == 2
    for m, e in zip(msg.instances, expected.instances, strict=True):
        assert m.index == e.index and m.track_id == e.track_id
        assert m.class_id == e.class_id and m.class_name == e.class_name
        assert m.score == pytest.approx(e.score, abs=1e-6)
        assert (m.bbox.x_offset, m.bbox.y_offset, m.bbox.width, m.bbox.height) == e.bbox
        assert (m.amodal_bbox.x_offset, m.amodal_bbox.y_offset, m.amodal_bbox.width, m.amodal_bbox.height) == \
            e.amodal_bbox
        for img, ref in ((m.mask, e.mask), (m.amodal_mask, e.amodal_mask)):
            assert img.encoding == "mono8" and (img.height, img.width) == ref.shape and img.step == ref.shape[1]
            assert img.header.frame_id == FRAME_ID
            data = np.frombuffer(img.data, np.uint8).reshape(ref.shape)
            assert set(np.unique(data)) <= {0, 255}
            np.testing.assert_array_equal(data == 255, ref)
        assert m.occlusion == pytest.approx(e.occlusion) and m.is_occluded == e.is_occluded
        assert m.points.header.frame_id == FRAME_ID
        names = [f.name for f in m.points.fields]
        assert names == (["x", "y", "z", "rgb"] if e.colors is not None else ["x", "y", "z"])
        pts, colors = pointcloud2_to_arrays(m.points)
        np.testing.assert_array_equal(pts, e.points)
        if e.colors is not None:
            np.testing.assert_array_equal(colors, e.colors)
        assert m.depth_coverage == pytest.approx(e.depth_coverage)
        np.testing.assert_allclose([m.centroid.x, m.centroid.y, m.centroid.z], e.centroid)
        p, q = m.box_pose.position, m.box_pose.orientation
        np.testing.assert_allclose([p.x, p.y, p.z], e.box_center)
        np.testing.assert_allclose([q.x, q.y, q.z, q.w], e.box_quat)
        np.testing.assert_allclose([m.box_size.x, m.box_size.y, m.box_size.z], e.box_size)

    parsed = frame_result_from_msg(msg)
    np.testing.assert_array_equal(parsed.label_image, expected.label_image)


# ---------------------------------------------------------------------------------------- the fast InstanceArray build
def _same_message(a, b, path="msg"):
    """a and b are the same message tree: same classes, same value types and values, same byte arrays, same
    ``_check_fields``."""
    import array

    assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if hasattr(type(a), "get_fields_and_field_types"):
        assert a._check_fields == b._check_fields, path
        for name in type(a).get_fields_and_field_types():
            _same_message(getattr(a, name), getattr(b, name), f"{path}.{name}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_message(x, y, f"{path}[{k}]")
    elif isinstance(a, array.array):
        assert a.typecode == b.typecode and a.tobytes() == b.tobytes(), path
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def _odd_result():
    """sample_result plus instances off the fast path's common case: uint8 and non-contiguous masks, an empty mask,
    float64 points, non-contiguous points and colors, float32 centroid, list quaternion."""
    import dataclasses

    base = sample_result()
    rng = np.random.default_rng(3)
    a, b = base.instances
    big = rng.random((20, 30)) > 0.5
    pts = rng.normal(size=(40, 6)).astype(np.float32)
    cols = rng.integers(0, 256, size=(40, 6), dtype=np.uint8)
    extra = [
        dataclasses.replace(a, index=3, mask=(rng.random((8, 10)) > 0.5).astype(np.uint8) * 7,
                            amodal_mask=big[::2, ::3][:10, :12], points=pts[:, ::2], colors=cols[:, 1::2],
                            centroid=np.float32([0.1, 0.2, 0.3]), box_quat=[0.0, 0.0, 0.0, 1.0]),
        dataclasses.replace(b, index=4, mask=np.zeros((0, 0), bool), points=pts[:, :3].astype(np.float64),
                            colors=None, track_id=0),
        dataclasses.replace(a, index=5, points=np.zeros((0, 3), np.float32), colors=np.zeros((0, 3), np.uint8)),
    ]
    return dataclasses.replace(base, instances=[*base.instances, *extra])


@pytest.mark.parametrize("make", [sample_result, _odd_result])
def test_fast_instance_array_is_the_plain_build(make):
    from rclpy.serialization import deserialize_message, serialize_message

    from instance_seg_msgs.msg import InstanceArray
    from instance_seg_ros.core import msg_codec as codec
    from instance_seg_ros.ros.conversions import _fast_build_ok, fill, header, instance_array_msg

    assert _fast_build_ok(), "the fast build is off: the generated message classes changed"
    res = make()
    hdr = header(FRAME_ID, STAMP_NS)
    fast = instance_array_msg(res, hdr)
    plain = fill(InstanceArray(), codec.instance_array_fields(res, hdr))
    _same_message(fast, plain)
    assert fast == plain
    assert fast.header is hdr and all(m.mask.header is hdr and m.points.header is hdr for m in fast.instances)
    # the same bytes on the wire (rclpy's serializer leaves padding bytes unset: compare what they carry)
    raw_fast, raw_plain = serialize_message(fast), serialize_message(plain)
    assert len(raw_fast) == len(raw_plain)
    assert deserialize_message(raw_fast, InstanceArray) == deserialize_message(raw_plain, InstanceArray)
    # without a header: the plain build
    _same_message(instance_array_msg(res, None), fill(InstanceArray(), codec.instance_array_fields(res, None)))


@pytest.mark.parametrize("n", [0, 1, 7, 5000])
def test_packed_cloud_bytes_are_x_y_z_and_0x00rrggbb(n, monkeypatch):
    import struct
    import sys

    from instance_seg_ros.core import msg_codec as codec

    rng = np.random.default_rng(n)
    pts = rng.normal(size=(n, 3)).astype(np.float32)
    pts[: n // 3, 0] = np.nan  # bit patterns, not values, are copied
    rgb = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    want = b"".join(p.tobytes() + struct.pack("<I", (int(r) << 16) | (int(g) << 8) | int(b))
                    for p, (r, g, b) in zip(pts, rgb, strict=True))
    assert codec._pack_xyzrgb(pts, rgb).tobytes() == want
    assert codec._pack_xyzrgb(pts, rgb).tobytes() == want  # the scratch buffer reused
    monkeypatch.setitem(sys.modules, "cv2", None)  # without OpenCV: numpy's copies
    assert codec._pack_xyzrgb(pts, rgb).tobytes() == want
