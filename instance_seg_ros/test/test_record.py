"""`isr record` bags read back with rosbags' AnyReader; tools/bagio builders and the InstanceArray parser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader

from instance_seg_ros.core.images import (
    color_from_compressed_msg,
    color_from_msg,
    depth_from_msg,
    intrinsics_from_camera_info,
)
from instance_seg_ros.sim.camera import d435_intrinsics
from instance_seg_ros.sim.randomization import GT_ID_STRIDE, SceneConfig
from instance_seg_ros.sim.scene import Scene
from instance_seg_ros.tools import bagio, cli
from instance_seg_ros.tools.record import (
    COLOR_TOPIC,
    COMPRESSED_TOPIC,
    DEPTH_TOPIC,
    GT_TOPIC,
    INFO_TOPIC,
    RecordError,
    record,
)

W, H, N = 64, 48, 4


@pytest.mark.parametrize(
    ("storage", "compressed", "depth_encoding"),
    [("mcap", False, "16UC1"), ("mcap", True, "32FC1"), ("sqlite3", False, "32FC1"), ("sqlite3", True, "16UC1")],
)
def test_recorded_bag_reads_back(tmp_path: Path, storage: str, compressed: bool, depth_encoding: str):
    out = tmp_path / "bag"
    args = ["record", "--out", str(out), "--frames", str(N), "--scenes", "2", "--storage", storage,
            "--depth-encoding", depth_encoding, "--width", str(W), "--height", str(H), "--max-objects", "4",
            "--rate", "20", "--quiet"]
    assert cli.main([*args, "--compressed"] if compressed else args) == 0
    meta = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9 and meta["storage_identifier"] == storage

    color_topic = COMPRESSED_TOPIC if compressed else COLOR_TOPIC
    expected = {
        color_topic: "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image",
        DEPTH_TOPIC: "sensor_msgs/msg/Image",
        INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
        GT_TOPIC: "instance_seg_msgs/msg/InstanceArray",
    }
    frames: dict[int, dict[str, object]] = {}
    with AnyReader([out], default_typestore=bagio.typestore()) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == expected
        assert {c.topic: c.msgcount for c in reader.connections} == dict.fromkeys(expected, N)
        for conn, t, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            assert bagio.stamp_ns(msg) == t and msg.header.frame_id == "camera_color_optical_frame"
            frames.setdefault(t, {})[conn.topic] = msg
    stamps = sorted(frames)
    assert len(stamps) == N and all(len(f) == 4 for f in frames.values())
    assert np.allclose(np.diff(stamps), 1e9 / 20)

    colors = []
    for t in stamps:
        f = frames[t]
        color = color_from_compressed_msg(f[color_topic]) if compressed else color_from_msg(f[color_topic])
        depth = depth_from_msg(f[DEPTH_TOPIC])
        assert f[DEPTH_TOPIC].encoding == depth_encoding and color.shape == (H, W, 3)
        assert depth.shape == (H, W) and depth.dtype == np.float32 and np.isfinite(depth).any()
        assert intrinsics_from_camera_info(f[INFO_TOPIC]) == d435_intrinsics(W, H)
        gt = bagio.frame_result_from_instance_array(f[GT_TOPIC])
        assert (gt.width, gt.height) == (W, H) and gt.instances
        for inst in gt.instances:
            assert inst.mask.shape == (inst.bbox[3], inst.bbox[2])
            full = inst.full_mask(H, W)
            assert np.all(inst.full_mask(H, W, amodal=True) >= full)
            assert np.array_equal(gt.label_image == inst.index, full)
            # the ground-truth points are the depth image lifted (same pixels, same z up to mm rounding)
            z = depth[full & np.isfinite(depth)]
            assert inst.points.shape == (z.size, 3)
            np.testing.assert_allclose(np.sort(inst.points[:, 2]), np.sort(z), atol=6e-4)
        colors.append(color.astype(np.int16))
    assert all(np.abs(a - b).mean() > 0.5 for a, b in zip(colors, colors[1:], strict=False))  # the camera moves


def test_read_messages_and_track_ids(tmp_path: Path):
    summary = record(tmp_path / "b", 3, width=W, height=H, max_objects=4, seed=2)
    assert summary["frames"] == 3 and summary["topics"][COLOR_TOPIC] == 3
    gts = [bagio.frame_result_from_instance_array(m) for _, _, m in bagio.read_messages(tmp_path / "b", [GT_TOPIC])]
    assert len(gts) == 3
    ids = [{i.track_id for i in gt.instances} for gt in gts]
    assert ids[0] and all(s <= set(range(1, 5)) for s in ids)  # object ids of the one scene
    with pytest.raises(bagio.BagError, match="No bag"):
        list(bagio.read_messages(tmp_path / "missing"))


def test_ground_truth_track_ids_follow_their_objects_and_are_unique_over_scenes(tmp_path: Path):
    """An object keeps its non-zero track id in every frame of its scene (its category and true size, which the
    orbiting camera does not change, identify it); the next scene's objects take ids of their own."""
    record(tmp_path / "b", 6, scenes=2, width=W, height=H, min_objects=3, max_objects=5, seed=4)
    gts = [bagio.frame_result_from_instance_array(m) for _, _, m in bagio.read_messages(tmp_path / "b", [GT_TOPIC])]
    scene_ids = []
    for scene in (gts[:3], gts[3:]):
        who: dict[int, tuple[str, tuple[float, ...]]] = {}
        for gt in scene:
            assert gt.instances and all(i.track_id for i in gt.instances)
            assert len({i.track_id for i in gt.instances}) == len(gt.instances)
            for inst in gt.instances:
                sig = (inst.class_name, tuple(np.round(inst.box_size, 4)))
                assert who.setdefault(inst.track_id, sig) == sig, f"track id {inst.track_id} changed objects"
        assert len(set(who.values())) == len(who)  # one id per object
        assert sum(len(gt.instances) for gt in scene) > len(who)  # ids recur across the scene's frames
        scene_ids.append(set(who))
    assert not scene_ids[0] & scene_ids[1]
    assert max(scene_ids[0]) < GT_ID_STRIDE < min(scene_ids[1]) <= 2 * GT_ID_STRIDE


def test_bad_arguments(tmp_path: Path, capsys):
    (tmp_path / "exists").mkdir()
    assert cli.main(["record", "--out", str(tmp_path / "exists"), "--frames", "1", "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(RecordError, match="frames"):
        record(tmp_path / "a", 0)
    with pytest.raises(RecordError, match="scenes"):
        record(tmp_path / "a", 2, scenes=3)
    with pytest.raises(RecordError, match="rate"):
        record(tmp_path / "a", 2, rate=0.0)


def test_message_builders_round_trip():
    ts = bagio.typestore()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    depth = rng.uniform(0.2, 2.0, size=(5, 7)).astype(np.float32)
    depth[0, 0] = np.nan
    for msg, decode, ref in (
        (bagio.image_msg(rgb, "rgb8"), color_from_msg, rgb),
        (bagio.image_msg(depth, "32FC1"), depth_from_msg, depth),
        (bagio.compressed_image_msg(rgb, "png"), color_from_compressed_msg, rgb),
    ):
        back = ts.deserialize_cdr(ts.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)
        np.testing.assert_array_equal(decode(back), ref)
    msg = bagio.image_msg(rgb, "rgb8")
    assert np.shares_memory(msg.data, rgb)  # zero-copy until serialisation
    pts = rng.normal(size=(9, 3)).astype(np.float32)
    cols = rng.integers(0, 256, size=(9, 3), dtype=np.uint8)
    cloud = bagio.pointcloud2_msg(pts, cols)
    back = ts.deserialize_cdr(ts.serialize_cdr(cloud, cloud.__msgtype__), cloud.__msgtype__)
    p2, c2 = bagio.pointcloud2_arrays(back)
    np.testing.assert_array_equal(p2, pts)
    np.testing.assert_array_equal(c2, cols)
    assert bagio.pointcloud2_arrays(bagio.pointcloud2_msg(np.zeros((0, 3))))[0].shape == (0, 3)
    with pytest.raises(bagio.BagError, match="Encoding rgb8"):
        bagio.image_msg(depth, "rgb8")
    with pytest.raises(bagio.BagError, match="Unsupported encoding"):
        bagio.image_msg(rgb, "yuv422")
    with pytest.raises(bagio.BagError, match="rows"):
        bagio.pointcloud2_msg(pts, cols[:3])


def test_instance_array_round_trip_keeps_the_ground_truth():
    with Scene.random(5, SceneConfig(min_objects=3, max_objects=4, settle_steps=60)) as scene:
        frame = scene.render(scene.random_camera(seed=0, intrinsics=d435_intrinsics(W, H)))
    ref = frame.to_frame_result()
    ts = bagio.typestore()
    msg = bagio.instance_array_msg(ref, stamp_ns=1_700_000_000_500_000_000)
    back = bagio.frame_result_from_instance_array(ts.deserialize_cdr(ts.serialize_cdr(msg, bagio.INSTANCE_ARRAY),
                                                                     bagio.INSTANCE_ARRAY))
    assert bagio.stamp_ns(msg) == 1_700_000_000_500_000_000
    assert np.array_equal(back.label_image, ref.label_image) and len(back.instances) == len(ref.instances)
    for a, b in zip(ref.instances, back.instances, strict=True):
        assert (a.index, a.track_id, a.class_name, a.bbox, a.amodal_bbox) == (
            b.index, b.track_id, b.class_name, b.bbox, b.amodal_bbox)
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.amodal_mask, b.amodal_mask)
        assert np.array_equal(a.points, b.points) and np.array_equal(a.colors, b.colors)
        assert b.occlusion == pytest.approx(a.occlusion, abs=1e-6) and b.is_occluded == a.is_occluded
        np.testing.assert_allclose(b.centroid, a.centroid)
        np.testing.assert_allclose(b.box_center, a.box_center)
        np.testing.assert_allclose(b.box_quat, a.box_quat)
        np.testing.assert_allclose(b.box_size, a.box_size)
