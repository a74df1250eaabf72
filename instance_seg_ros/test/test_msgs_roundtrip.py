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
