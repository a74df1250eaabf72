"""The classical RANSAC-plane + Euclidean-clusters baseline (tools.plane_baseline) on analytic renders and real
frames. The scenes come from ``test_support_plane.render_boxes_on_plane``."""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_support_plane import K640, load_real_frame, real_frames, render_boxes_on_plane

from instance_seg_ros.core.images import FrameError
from instance_seg_ros.tools.plane_baseline import PlaneBaselineConfig, PlaneBaselineError, PlaneClusterBaseline

H, W = K640.height, K640.width
BOXES = [
    (220.0, 300.0, 0.08, 0.06, 0.06),  # 6 cm box
    (420.0, 260.0, 0.06, 0.06, 0.10),  # 10 cm box
    (330.0, 390.0, 0.10, 0.10, 0.002),  # 2 mm sheet: not an object for the baseline
]
RGB = np.full((H, W, 3), 128, np.uint8)


@pytest.fixture(scope="module")
def baseline() -> PlaneClusterBaseline:
    return PlaneClusterBaseline()


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    return render_boxes_on_plane(K640, BOXES)  # 1 % depth noise, 2 % dropout


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1))


def test_two_boxes_found_sheet_ignored(baseline, scene):
    depth, ids = scene
    res = baseline.process(RGB, depth, K640)
    assert len(res.instances) == 2
    masks = [inst.full_mask(H, W) for inst in res.instances]
    ious = np.array([[_iou(m, ids == k) for k in (1, 2, 3)] for m in masks])
    # each box is matched by exactly one instance, the sheet by none
    assert sorted(ious[:, :2].argmax(axis=1).tolist()) == [0, 1]
    assert (ious[:, :2].max(axis=1) > 0.8).all(), ious
    assert (ious[:, 2] < 0.05).all()
    assert res.support_plane is not None and res.dropped == []


def test_result_fields(baseline, scene):
    depth, ids = scene
    res = baseline.process(RGB, depth, K640)
    assert (res.width, res.height) == (W, H)
    assert set(res.timings) == {"plane", "cluster", "masks", "total"}
    assert res.timings["total"] >= res.timings["plane"] + res.timings["cluster"] + res.timings["masks"] - 1e-6
    assert res.label_image.dtype == np.uint16 and res.label_image.shape == (H, W)
    scores = [inst.score for inst in res.instances]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    covered = np.zeros((H, W), bool)
    for i, inst in enumerate(res.instances):
        assert inst.index == i + 1
        assert (inst.class_id, inst.class_name, inst.occlusion, inst.is_occluded) == (1, "object", 0.0, False)
        x, y, bw, bh = inst.bbox
        assert inst.mask.shape == (bh, bw) and inst.mask.dtype == np.bool_
        assert inst.mask[0].any() and inst.mask[-1].any() and inst.mask[:, 0].any() and inst.mask[:, -1].any()
        assert inst.amodal_bbox == inst.bbox and np.array_equal(inst.amodal_mask, inst.mask)
        full = inst.full_mask(H, W)
        assert not (covered & full).any()  # masks are disjoint
        covered |= full
        assert np.array_equal(res.label_image == inst.index, full)
        assert inst.points.dtype == np.float32 and inst.points.shape[0] > 100
        assert inst.colors.shape == inst.points.shape and inst.colors.dtype == np.uint8
        assert 0.5 < inst.depth_coverage <= 1.0
        np.testing.assert_allclose(inst.centroid, inst.points.mean(axis=0), atol=1e-5)
        assert (inst.box_size > 0.02).sum() >= 2  # an oriented box was attached
    assert np.array_equal(res.label_image > 0, covered)


def test_box_geometry(baseline, scene):
    """The taller box's oriented 3D box: its height (as seen from above, within the noise) and footprint."""
    depth, ids = scene
    res = baseline.process(RGB, depth, K640)
    inst = max(res.instances, key=lambda i: _iou(i.full_mask(H, W), ids == 2))
    plane = res.support_plane
    top = np.quantile(plane.height(inst.points), 0.9)
    assert 0.08 < top < 0.12
    assert np.sort(inst.box_size)[-1] < 0.15


def test_deterministic(scene):
    depth, _ = scene
    a = PlaneClusterBaseline(seed=7).process(RGB, depth, K640)
    b = PlaneClusterBaseline(seed=7).process(RGB, depth, K640)
    assert np.array_equal(a.label_image, b.label_image)
    assert [(i.bbox, i.score) for i in a.instances] == [(i.bbox, i.score) for i in b.instances]
    for x, y in zip(a.instances, b.instances, strict=True):
        assert np.array_equal(x.points, y.points)


def test_empty_depth(baseline):
    depth = np.full((H, W), np.nan, np.float32)
    res = baseline.process(RGB, depth, K640)
    assert res.instances == [] and not res.label_image.any()
    assert res.support_plane is None


def test_no_plane_clusters_everything(baseline):
    """Without a support plane every valid pixel is clustered: a large sphere filling the view is one instance (plus,
    maybe, slivers of its rim, which is seen at grazing angles where the samples lie further apart than cluster_eps)."""
    u, v = np.meshgrid(np.arange(float(W)), np.arange(float(H)))
    r = np.stack([(u - K640.cx) / K640.fx, (v - K640.cy) / K640.fy, np.ones_like(u)], axis=-1)
    c, radius = np.array([0.0, 0.0, 2.0]), 1.0
    rc, rr = r @ c, (r * r).sum(-1)
    with np.errstate(invalid="ignore"):
        depth = ((rc - np.sqrt(rc**2 - rr * (c @ c - radius**2))) / rr).astype(np.float32)
    res = baseline.process(RGB, depth, K640)
    assert res.support_plane is None
    assert len(res.instances) >= 1
    assert _iou(res.instances[0].full_mask(H, W), np.isfinite(depth)) > 0.9


def test_bad_frame(baseline, scene):
    with pytest.raises(FrameError):
        baseline.process(RGB[:100], scene[0], K640)
    with pytest.raises(FrameError, match="float metres"):
        baseline.process(RGB, (np.nan_to_num(scene[0]) * 1000).astype(np.uint16), K640)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cluster_eps", 0.0),
        ("min_height", -0.01),
        ("min_height", 2.0),
        ("plane_min_support", 0.0),
        ("plane_stride", 0),
        ("cluster_stride", -1),
        ("min_pixels", 1.5),
        ("depth_max", float("nan")),
        ("depth_min", 9.0),
    ],
)
def test_bad_config(field, value):
    with pytest.raises(PlaneBaselineError, match=field):
        PlaneBaselineConfig(**{field: value})


def test_bad_config_type():
    with pytest.raises(PlaneBaselineError, match="PlaneBaselineConfig"):
        PlaneClusterBaseline({"cluster_eps": 0.02})


@pytest.mark.skipif(not real_frames(), reason="no real frames in shared/realdata")
def test_real_frames(baseline):
    for folder in real_frames():
        rgb, depth, K, _ = load_real_frame(folder)
        t0 = time.perf_counter()
        res = baseline.process(rgb, depth, K)
        elapsed = time.perf_counter() - t0
        assert res.support_plane is not None, folder.name
        assert 1 <= len(res.instances) <= 30, folder.name
        assert elapsed < 10.0, f"{folder.name}: {elapsed:.1f} s"  # bounded, not a speed test (shared CPUs)
