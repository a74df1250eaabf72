"""PyBullet scenes: pinhole-exact rendering, metric depth, amodal ground truth, determinism."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from instance_seg_ros.core.geometry import matrix_to_quaternion as matrix_to_quat
from instance_seg_ros.core.geometry import quaternion_to_matrix as quat_to_matrix
from instance_seg_ros.core.types import Intrinsics
from instance_seg_ros.sim.camera import Camera, d435_intrinsics
from instance_seg_ros.sim.errors import SceneError
from instance_seg_ros.sim.noise import SensorNoise
from instance_seg_ros.sim.objects import ObjectSpec
from instance_seg_ros.sim.randomization import SceneConfig
from instance_seg_ros.sim.scene import Scene

K = d435_intrinsics(160, 120)  # fx = fy = 153.75, cx = 79.5, cy = 59.5
# any camera works for from_spec scenes (poses are given in its optical frame); an oblique one on purpose
CAM = Camera.look_at(eye=(0.3, -0.8, 1.2), target=(0.0, 0.0, 0.6), intrinsics=K)
SMALL = SceneConfig(min_objects=4, max_objects=6, settle_steps=120)


def _silhouette(center, size, k=K) -> np.ndarray:
    """Analytic image silhouette (convex polygon, float32[N, 2]) of a camera-aligned box."""
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * np.asarray(size) / 2
    pts = corners + np.asarray(center)
    uv = np.stack([k.fx * pts[:, 0] / pts[:, 2] + k.cx, k.fy * pts[:, 1] / pts[:, 2] + k.cy], axis=1)
    return cv2.convexHull(uv.astype(np.float32)).reshape(-1, 2)


def test_box_face_depth_and_pinhole_projection():
    with Scene.from_spec([ObjectSpec("box", size=(0.1, 0.1, 0.1), position=(0.0, 0.0, 0.6))], camera=CAM) as scene:
        frame = scene.render(CAM)
    (obj,) = frame.objects
    assert obj.status == "ok" and obj.occlusion == 0.0 and obj.visible_area == obj.amodal_area
    # a camera-aligned box centred on the optical axis shows only its front face, at z = 0.55
    face = frame.depth[obj.visible_mask]
    assert np.all(np.abs(face - 0.55) < 1e-4)  # metric z along the optical axis, not the ray length
    assert abs(frame.depth[59, 79] - 0.55) < 1e-4 and abs(frame.depth[60, 80] - 0.55) < 1e-4
    assert np.isnan(frame.depth[0, 0]) and frame.visible_ids[0, 0] == 0  # no support: nothing behind
    # pinhole model: face spans u in cx +- fx * 0.05 / 0.55 -> pixel centres 66..93 (and rows 46..73)
    half = K.fx * 0.05 / 0.55
    x0, x1 = math.ceil(K.cx - half), math.floor(K.cx + half)
    y0, y1 = math.ceil(K.cy - half), math.floor(K.cy + half)
    assert obj.bbox == (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
    # the lifted face centroid is the face centre; the pose is the box centre in the camera frame
    np.testing.assert_allclose(obj.centroid, [0.0, 0.0, 0.55], atol=1e-4)
    np.testing.assert_allclose(obj.position, [0.0, 0.0, 0.6], atol=1e-6)
    assert abs(abs(obj.quat[3]) - 1.0) < 1e-6
    np.testing.assert_allclose(obj.extent, [0.1, 0.1, 0.1])


def test_off_axis_rotated_box_depth_matches_pose():
    quat = matrix_to_quat(cv2.Rodrigues(np.array([0.0, 0.0, 0.4]))[0])  # rotated about the optical axis only
    spec = ObjectSpec("box", size=(0.12, 0.06, 0.08), position=(0.08, -0.05, 0.8), orientation=tuple(quat))
    with Scene.from_spec([spec], camera=CAM) as scene:
        frame = scene.render(CAM)
    (obj,) = frame.objects
    np.testing.assert_allclose(obj.position, [0.08, -0.05, 0.8], atol=1e-6)
    np.testing.assert_allclose(quat_to_matrix(obj.quat), quat_to_matrix(quat), atol=1e-6)
    u, v = CAM.project(np.array([[0.08, -0.05, 0.76]]))[0]  # front-face centre
    assert obj.visible_mask[round(v), round(u)]
    assert abs(frame.depth[round(v), round(u)] - 0.76) < 1e-4
    # lifting the face pixels back gives points on the plane z = 0.76 around the face centre
    np.testing.assert_allclose(obj.centroid[2], 0.76, atol=0.004)


def test_box_partly_behind_another_matches_the_analytic_overlap():
    back = ObjectSpec("box", size=(0.1, 0.1, 0.1), position=(0.0, 0.0, 0.8), color=(0, 0, 1, 1))
    front = ObjectSpec("box", size=(0.1, 0.1, 0.1), position=(0.07, 0.01, 0.5), color=(1, 0, 0, 1))
    with Scene.from_spec([back, front], camera=CAM) as scene:
        frame = scene.render(CAM)
        assert scene.amodal_fixup_pixels == 0  # the raw per-object renders already contain the visible masks
    b, f = frame.objects
    assert f.occlusion == 0.0 and f.status == "ok"
    poly_b, poly_f = _silhouette((0, 0, 0.8), (0.1,) * 3), _silhouette((0.07, 0.01, 0.5), (0.1,) * 3)
    inter, _ = cv2.intersectConvexConvex(poly_b, poly_f)
    expected = inter / cv2.contourArea(poly_b)
    assert 0.2 < expected < 0.8
    assert abs(b.occlusion - expected) < 0.03
    assert abs(b.amodal_area - cv2.contourArea(poly_b)) / cv2.contourArea(poly_b) < 0.05
    assert b.occlusion == pytest.approx(1 - b.visible_area / b.amodal_area)
    assert np.all(b.amodal_mask >= b.visible_mask)


def test_fully_hidden_object_is_flagged_and_excluded():
    back = ObjectSpec("sphere", size=(0.03,), position=(0.0, 0.0, 0.9))
    front = ObjectSpec("box", size=(0.2, 0.2, 0.05), position=(0.0, 0.0, 0.5))
    gone = ObjectSpec("box", size=(0.05, 0.05, 0.05), position=(2.0, 0.0, 0.5))  # far outside the view
    behind = ObjectSpec("box", size=(0.05, 0.05, 0.05), position=(0.0, 0.0, -0.5))
    with Scene.from_spec([back, front, gone, behind], camera=CAM) as scene:
        frame = scene.render(CAM)
    status = [o.status for o in frame.objects]
    assert status == ["hidden", "ok", "outside", "outside"]
    assert frame.objects[0].amodal_area > 0 and frame.objects[0].occlusion == 1.0
    assert [o.id for o in frame.ground_truth] == [2]
    result = frame.to_frame_result()
    assert [i.track_id for i in result.instances] == [2]


def test_random_scene_ground_truth_is_consistent():
    with Scene.random(11, SMALL) as scene:
        assert scene.support in ("table", "tray") and 1 <= len(scene.objects) <= 6
        frame = scene.render(scene.random_camera(seed=0, intrinsics=K))
        assert scene.amodal_fixup_pixels == 0
    assert frame.color.shape == (120, 160, 3) and frame.color.dtype == np.uint8
    assert frame.depth.dtype == np.float32 and frame.visible_ids.dtype == np.int32
    ids = set(np.unique(frame.visible_ids).tolist())
    assert ids <= {0} | {o.id for o in frame.objects}
    for o in frame.objects:
        assert np.array_equal(o.visible_mask, frame.visible_ids == o.id)
        assert np.all(o.amodal_mask >= o.visible_mask)
        assert o.visible_area == int(o.visible_mask.sum()) and o.amodal_area == int(o.amodal_mask.sum())
        if o.amodal_area:
            assert o.occlusion == pytest.approx(1 - o.visible_area / o.amodal_area)
        if o.visible_area:
            x, y, w, h = o.bbox
            assert o.visible_mask[y:y + h, x:x + w].sum() == o.visible_area
            assert np.all(np.isfinite(frame.depth[o.visible_mask]))
            # every visible object pixel lies on the object: depth within its bounding sphere
            assert np.all(np.abs(frame.depth[o.visible_mask] - o.position[2]) <= np.linalg.norm(o.extent) / 2 + 1e-3)
    assert sum(o.valid for o in frame.objects) >= 1


def test_random_camera_respects_the_ranges():
    with Scene.random(3, SMALL) as scene:
        for s in range(5):
            cam = scene.random_camera(seed=s)
            axis = cam.camera_to_world[:3, 2]  # optical axis in the world
            elevation = math.degrees(math.asin(-axis[2]))
            assert 30 - 1e-6 <= elevation <= 80 + 1e-6
            assert cam.intrinsics == d435_intrinsics()


def test_same_seed_same_arrays_and_noise():
    def run(seed):
        with Scene.random(seed, SMALL) as scene:
            cam = scene.random_camera(seed=1, intrinsics=K)
            return scene.render(cam), scene.render(cam, noise=SensorNoise(), seed=5)

    (a, an), (b, bn), (c, _) = run(4), run(4), run(5)
    for x, y in ((a, b), (an, bn)):
        assert np.array_equal(x.color, y.color) and np.array_equal(x.visible_ids, y.visible_ids)
        assert np.array_equal(x.depth, y.depth, equal_nan=True)
        for ox, oy in zip(x.objects, y.objects, strict=True):
            assert np.array_equal(ox.amodal_mask, oy.amodal_mask)
            np.testing.assert_array_equal(ox.position, oy.position)
    assert not np.array_equal(a.color, c.color)
    # noise: the clean depth is kept, the noisy one loses some pixels and stays within a few mm elsewhere
    assert np.array_equal(an.depth_true, a.depth, equal_nan=True)
    both = np.isfinite(an.depth) & np.isfinite(an.depth_true)
    assert np.isnan(an.depth).sum() > np.isnan(an.depth_true).sum()
    err = np.abs(an.depth[both] - an.depth_true[both])
    assert np.median(err) < 0.004 and err.max() > 0


def test_to_frame_result_matches_the_frame():
    with Scene.random(2, SMALL) as scene:
        frame = scene.render(scene.random_camera(seed=0, intrinsics=K))
    result = frame.to_frame_result()
    gt = frame.ground_truth
    assert (result.width, result.height) == (160, 120) and len(result.instances) == len(gt)
    for i, (inst, o) in enumerate(zip(result.instances, gt, strict=True), start=1):
        assert inst.index == i and inst.track_id == o.id and inst.class_name == o.name
        assert np.array_equal(inst.full_mask(120, 160), o.visible_mask)
        assert np.array_equal(inst.full_mask(120, 160, amodal=True), o.amodal_mask)
        assert np.array_equal(result.label_image == i, o.visible_mask)
        assert inst.points.dtype == np.float32 and inst.points.shape == (int(o.visible_mask.sum()), 3)
        assert inst.colors.shape == inst.points.shape and inst.depth_coverage == 1.0
        np.testing.assert_allclose(inst.centroid, inst.points.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(inst.box_center, o.position)
        assert inst.is_occluded == (o.occlusion > 0.1)


def test_bad_inputs_raise_value_errors():
    with pytest.raises(SceneError, match="shape"):
        ObjectSpec("cone")
    with pytest.raises(ValueError, match="size"):
        ObjectSpec("box", size=(0.1, 0.1))
    with pytest.raises(SceneError, match="min_objects"):
        SceneConfig(min_objects=5, max_objects=2)
    with pytest.raises(SceneError, match="support"):
        Scene(support="shelf")
    with pytest.raises(SceneError, match="rotation"):
        Camera(K, np.diag([1.0, 1.0, -1.0, 1.0]))
    scene = Scene()
    scene.close()
    with pytest.raises(SceneError, match="closed"):
        scene.render(CAM)


def test_rendered_silhouette_is_the_exact_pinhole_projection():
    # fx != fy and an off-centre principal point: every pixel centre inside the projected hull is object, none outside
    k = Intrinsics(150.3, 141.7, 47.9, 40.6, 101, 77)
    cam = Camera.look_at(eye=(0.3, -0.8, 1.2), target=(0.0, 0.0, 0.6), intrinsics=k)
    rng = np.random.default_rng(0)
    for _ in range(3):
        quat, size = rng.normal(size=4), rng.uniform(0.04, 0.12, size=3)
        pos = (rng.uniform(-0.08, 0.08), rng.uniform(-0.06, 0.06), rng.uniform(0.5, 0.9))
        spec = ObjectSpec("box", size=tuple(size), position=pos, orientation=tuple(quat / np.linalg.norm(quat)))
        with Scene.from_spec([spec], camera=cam) as scene:
            obj = scene.render(cam).objects[0]
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * size / 2
        pts = corners @ quat_to_matrix(quat).T + np.asarray(pos)
        hull = cv2.convexHull(cam.project(pts).astype(np.float32))
        dist = np.array([[cv2.pointPolygonTest(hull, (float(u), float(v)), True) for u in range(k.width)]
                         for v in range(k.height)])
        wrong = (dist > 0) != obj.amodal_mask
        assert not np.any(wrong & (np.abs(dist) > 0.05)), f"{wrong.sum()} pixels differ from the pinhole projection"
        assert np.array_equal(obj.amodal_mask, obj.visible_mask)
