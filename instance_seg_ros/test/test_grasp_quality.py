"""The geometric grasp check (grasp.quality), the simulator's true surfaces (sim.surface_points), the upright input
frame (grasp.planner.upright_transform), grasp drawing, and one short ``isr grasps --sim`` run (skipped without the
grasp extra)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from instance_seg_ros.core.types import Intrinsics
from instance_seg_ros.grasp import GRIPPER_DEPTH, Grasp
from instance_seg_ros.grasp.quality import (
    PANDA,
    check_grasp,
    check_grasps,
    gripper_boxes,
    opened,
    summarize_checks,
    width_needed,
)
from instance_seg_ros.sim.surface_points import box_surface, cylinder_surface, sphere_surface

BOX = 0.05  # edge of the test boxes, m
TOP = 0.475  # optical z of box 1's top face (the camera looks down +z onto it)


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Box 1 (label 1) centred at (0, 0, 0.5), box 2 (label 2) beside it at x = +0.08, a table (label 0) under
    both at z = 0.525; optical frame, metres, surfaces sampled every 2 mm."""
    b1 = box_surface(np.full(3, BOX / 2), 0.002) + [0.0, 0.0, 0.5]
    b2 = box_surface(np.full(3, BOX / 2), 0.002) + [0.08, 0.0, 0.5]
    g = np.arange(-0.2, 0.2, 0.003)
    gx, gy = np.meshgrid(g, g)
    table = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, 0.5 + BOX / 2)], axis=1)
    points = np.concatenate([b1, b2, table])
    labels = np.concatenate([np.full(len(b1), 1), np.full(len(b2), 2), np.zeros(len(table), int)])
    return points, labels


def _top_down(x: float, y: float, tip_z: float) -> np.ndarray:
    """A grasp pose approaching along optical +z (from the camera side), closing along optical x, finger tips at
    ``tip_z``."""
    pose = np.eye(4)
    pose[:3, 3] = [x, y, tip_z - PANDA.tip_z]
    return pose


def _grasp(pose: np.ndarray, width: float, score: float = 0.9) -> Grasp:
    contact = pose[:3, 3] + GRIPPER_DEPTH * pose[:3, 2] - width / 2 * pose[:3, 0]
    return Grasp(pose=pose, score=score, width=width, contact=contact)


def test_gripper_boxes_follow_the_panda_and_the_width():
    boxes = gripper_boxes(0.06)
    (cl, hl), (cr, hr), (cc, hc) = boxes["finger_left"], boxes["finger_right"], boxes["closing"]
    assert math.isclose(cl[0] - hl[0], 0.03) and math.isclose(cr[0] + hr[0], -0.03)  # inner faces at +-width/2
    assert math.isclose(cl[2] + hl[2], PANDA.tip_z) and PANDA.tip_z > GRIPPER_DEPTH  # tips just beyond the contact
    assert math.isclose(hc[0], 0.03) and math.isclose(cc[2] + hc[2], PANDA.tip_z) and math.isclose(2 * hc[2], 0.04)
    assert {"palm_0", "palm_1"} <= set(boxes)


def test_grasp_straddling_a_box_holds_it_without_collision():
    points, labels = _scene()
    c = check_grasp(_top_down(0.0, 0.0, TOP + 0.02), 0.07, points, labels, 1)
    assert c.contains and not c.collides and not c.hits_target and c.success
    assert c.closing_points > 20 and c.obstacle_points == 0


def test_same_grasp_shifted_into_the_neighbour_collides():
    points, labels = _scene()
    c = check_grasp(_top_down(0.03, 0.0, TOP + 0.02), 0.07, points, labels, 1)
    assert c.contains  # box 1 is still between the fingers
    assert c.collides and not c.success and c.obstacle_points > 0  # the +x finger comes down on box 2
    # lowered onto the table: the finger tips go through it
    c = check_grasp(_top_down(0.0, 0.0, 0.5 + BOX / 2 + 0.01), 0.07, points, labels, 1)
    assert c.collides and not c.success


def test_grasp_in_empty_air_holds_nothing():
    points, labels = _scene()
    c = check_grasp(_top_down(0.5, 0.5, 0.3), 0.07, points, labels, 1)
    assert not c.contains and not c.collides and not c.hits_target and c.closing_points == 0


def test_too_narrow_an_opening_runs_into_the_target():
    points, labels = _scene()
    c = check_grasp(_top_down(0.0, 0.0, TOP + 0.02), 0.01, points, labels, 1)
    assert c.hits_target and not c.success
    assert not check_grasp(_top_down(0.0, 0.0, TOP + 0.02), 0.0, points, labels, 1).contains  # closed: no region


def test_obstacle_mask_and_tolerance():
    points, labels = _scene()
    pose = _top_down(0.03, 0.0, TOP + 0.02)
    assert not check_grasp(pose, 0.07, points, labels, 1, obstacle=labels == 0).collides  # box 2 ignored
    # a finger resting on a surface (within the tolerance) does not collide
    face = np.array([[0.035 + 0.001, 0.0, TOP + 0.01]])
    assert not check_grasp(_top_down(0.0, 0.0, TOP + 0.02), 0.07, face, np.array([2]), 1).collides
    assert check_grasp(_top_down(0.0, 0.0, TOP + 0.02), 0.07, face, np.array([2]), 1, tolerance=0.0).collides
    with pytest.raises(ValueError, match="4x4"):
        check_grasp(np.eye(3), 0.07, points, labels, 1)


def test_opened_and_width_needed():
    pose = _top_down(0.0, 0.0, TOP + 0.02)
    pose[:3, 3] += [-0.02, 0.0, 0.0]  # a narrow grasp whose contact is box 1's -x face
    g = _grasp(pose, 0.01)
    assert np.allclose(g.contact, [-0.025, 0.0, TOP + 0.02 - (PANDA.tip_z - GRIPPER_DEPTH)])
    p, w = opened(g, 0.08)
    assert w == 0.08 and np.array_equal(p, g.pose)
    p, w = opened(g, 0.08, keep="contact")
    assert np.allclose(p[:3, 3], g.contact + 0.04 * p[:3, 0] - GRIPPER_DEPTH * p[:3, 2])
    with pytest.raises(ValueError, match="keep"):
        opened(g, 0.08, keep="middle")
    points, labels = _scene()
    t_min, t_max = width_needed(g, points[labels == 1])
    assert abs(t_min) < 0.003 and abs(t_max - BOX) < 0.003  # the box lies on the closing side, 5 cm across
    points, labels = _scene()
    assert not check_grasp(g.pose, g.width, points, labels, 1).success
    assert check_grasp(*opened(g, 0.06, keep="contact"), points, labels, 1).success  # clear of box 2


def test_check_grasps_and_summary():
    points, labels = _scene()
    good = _grasp(_top_down(0.0, 0.0, TOP + 0.02), 0.07, 0.9)
    bad = _grasp(_top_down(0.03, 0.0, TOP + 0.02), 0.07, 0.8)
    checks = check_grasps({1: [good, bad], 2: []}, points, labels)
    assert [c.success for c in checks[1]] == [True, False] and checks[2] == []
    assert checks[1][0].score == 0.9
    s = summarize_checks(checks, top_k=(1, 5))
    assert s["instances"] == 2 and s["instances_with_grasps"] == 1
    assert s["top1"]["grasps"] == 1 and s["top1"]["success"] == 1.0
    assert s["top5"]["grasps"] == 2 and s["top5"]["success"] == 0.5 and s["top5"]["collides"] == 0.5
    assert s["per_instance"][1] == {"grasps": 2, "best_success": True, "any_success": True}
    wide = check_grasps({1: [_grasp(_top_down(0.0, 0.0, TOP + 0.02), 0.01)]}, points, labels, width=0.08)
    assert wide[1][0].success and wide[1][0].width == 0.08


# ------------------------------------------------------------------ the simulator's true surfaces
def test_primitive_surfaces_lie_on_the_shapes():
    b = box_surface(np.array([0.01, 0.02, 0.03]), 0.003)
    assert np.all(np.isclose(np.abs(b), [0.01, 0.02, 0.03]).any(axis=1)) and np.all(np.abs(b) <= [0.01, 0.02, 0.03])
    c = cylinder_surface(0.02, 0.1, 0.003)
    r = np.hypot(c[:, 0], c[:, 1])
    assert np.all(np.isclose(r, 0.02) | np.isclose(np.abs(c[:, 2]), 0.05)) and r.max() <= 0.02 + 1e-9
    s = sphere_surface(0.03, 0.003)
    assert np.allclose(np.linalg.norm(s, axis=1), 0.03) and len(s) >= 4 * math.pi * 0.03**2 / 0.003**2


def test_scene_surfaces_match_the_rendered_depth():
    from scipy.spatial import cKDTree

    from instance_seg_ros.sim.camera import Camera, d435_intrinsics
    from instance_seg_ros.sim.frame import lift_mask
    from instance_seg_ros.sim.objects import TABLE_TOP_Z, ObjectSpec
    from instance_seg_ros.sim.scene import Scene
    from instance_seg_ros.sim.surface_points import scene_surfaces

    z = TABLE_TOP_Z
    specs = [ObjectSpec("box", size=(0.06, 0.04, 0.1), position=(-0.08, 0.0, z + 0.05), orientation=(0, 0, 0.38, 0.92),
                        mass=0),
             ObjectSpec("cylinder", size=(0.03, 0.12), position=(0.09, 0.03, z + 0.06), mass=0),
             ObjectSpec("urdf", urdf_index=12, scale=1.1, position=(0.0, 0.12, z + 0.05), mass=0)]
    cam = Camera.look_at(eye=(0.0, -0.55, z + 0.5), target=(0.0, 0.0, z + 0.05), intrinsics=d435_intrinsics(320, 240))
    with Scene(support="table") as scene:
        for s in specs:
            scene.add_object(s)
        frame = scene.render(cam)
        surfaces, support = scene_surfaces(scene, frame)
    for gt in frame.objects:
        seen, _, _ = lift_mask(frame.depth_true, gt.visible_mask, frame.intrinsics)
        dist, _ = cKDTree(surfaces[gt.id]).query(seen)
        assert len(seen) > 50 and np.percentile(dist, 99) < 0.006, gt.name  # within the sampling spacing
    table = (frame.visible_ids == 0) & np.isfinite(frame.depth_true)
    seen, _, _ = lift_mask(frame.depth_true, table, frame.intrinsics)
    dist, _ = cKDTree(support).query(seen)
    assert np.median(dist) < 0.004


# ------------------------------------------------------------------ upright input frame and drawing
def test_upright_transform():
    from instance_seg_ros.grasp import GraspError
    from instance_seg_ros.grasp.planner import upright_transform

    up = np.array([0.1, -0.8, -0.5])
    t = upright_transform(up, [0.1, 0.2, 0.9])
    r = t[:3, :3]
    assert np.allclose(r @ r.T, np.eye(3)) and np.isclose(np.linalg.det(r), 1.0)
    assert np.allclose(r @ (up / np.linalg.norm(up)), [0, 0, 1])
    assert np.allclose(t @ [0.1, 0.2, 0.9, 1.0], [0, 0, 0, 1])
    assert np.allclose(upright_transform([1.0, 0, 0], [0, 0, 0])[:3, :3] @ [1.0, 0, 0], [0, 0, 1])
    with pytest.raises(GraspError, match="up"):
        upright_transform([0.0, 0.0, 0.0], [0, 0, 0])


def test_draw_grasps():
    from instance_seg_ros.grasp.draw import draw_grasps, score_color

    K = Intrinsics(300.0, 300.0, 159.5, 119.5, 320, 240)
    img = np.zeros((240, 320, 3), np.uint8)
    front = _grasp(_top_down(0.0, 0.0, 0.5), 0.06, 1.0)
    behind = _grasp(_top_down(0.0, 0.0, 0.05), 0.06, 1.0)  # the base is behind the camera: skipped
    out = draw_grasps(img, [front], K)
    assert out.any() and not img.any()  # drawn on a copy
    assert not draw_grasps(img, [behind], K).any()
    assert score_color(1.0) == (0, 255, 0) and score_color(0.5) == (255, 0, 0) and score_color(0.2) == (255, 0, 0)


# ------------------------------------------------------------------ isr grasps on one small simulated scene
@pytest.mark.slow
def test_isr_grasps_sim_run(tmp_path):
    pytest.importorskip("cgn_pytorch", reason="the Contact-GraspNet extra is not installed (make setup-grasp)")
    from instance_seg_ros.tools.cli import main

    out = tmp_path / "g"
    assert main(["grasps", "--sim", "1", "--size", "320x240", "--max-instances", "1", "--seed", "1",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "report.md").read_text().startswith("# isr grasps") and (out / "grasps_sim.png").is_file()
    assert metrics["kind"] == "sim" and metrics["frames"] == 1 and metrics["input_frames"] == ["camera", "upright"]
    assert set(metrics["results"]) == {"ground_truth/camera", "ground_truth/upright"}
    for res in metrics["results"].values():
        assert res["objects"] == 1 and 0 <= res["objects_with_grasps"] <= 1
        assert set(res["checks"]) == {"as_predicted", "max_width", "max_width_contact"}
        for tops in res["checks"].values():
            for top in ("top1", "top5"):
                r = tops[top]
                assert 0 <= r["grasps"] <= (1 if top == "top1" else 5)
                for key in ("contains", "collides", "hits_target", "contains_no_collision", "success"):
                    assert r[key] is None or 0.0 <= r[key] <= 1.0
        assert res["cost_ms"]["frame"]["median"] is None or res["cost_ms"]["frame"]["median"] > 0
        w = res["width"]["predicted_m"]["median"]
        assert w is None or 0.0 <= w <= 0.08
    assert len(metrics["per_instance"]) == 2
