"""The Segmenter end to end on CPU with an untrained model: invariants of its FrameResult."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instance_seg_ros.core.config import Config
from instance_seg_ros.core.images import FrameError
from instance_seg_ros.core.pipeline import Segmenter
from instance_seg_ros.core.types import Intrinsics

W, H = 160, 120
K = Intrinsics(fx=150.0, fy=150.0, cx=79.5, cy=59.5, width=W, height=H)


def _frame(seed: int = 0):
    rng = np.random.default_rng(seed)
    color = np.full((H, W, 3), 200, np.uint8)
    depth = np.full((H, W), 0.8, np.float32)
    for _ in range(4):  # a few boxes closer than the table
        x, y = rng.integers(0, W - 40), rng.integers(0, H - 30)
        color[y:y + 30, x:x + 40] = rng.integers(0, 255, 3)
        depth[y:y + 30, x:x + 40] = rng.uniform(0.5, 0.7)
    depth[:5, :5] = np.nan
    return color, depth


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg = Config.from_flat({
        "model.weights": "none", "model.backbone": "resnet18_fpn", "model.device": "cpu",
        "model.score_threshold": 0.0, "model.mask_threshold": 0.0, "model.max_instances": 8,
        "model.warmup": False,
    })
    seg = Segmenter(cfg)
    seg.load()
    return seg


def test_process_returns_consistent_instances(segmenter):
    color, depth = _frame()
    res = segmenter.process(color, depth, K)
    assert (res.width, res.height) == (W, H)
    assert res.label_image.shape == (H, W) and res.label_image.dtype == np.uint16
    assert 0 < len(res.instances) <= 8, "an untrained net with threshold 0 still emits detections"
    for stage in ("preprocess", "inference", "postprocess", "lift", "geometry", "total"):
        assert stage in res.timings and res.timings[stage] >= 0
    scores = [i.score for i in res.instances]
    assert scores == sorted(scores, reverse=True)
    for n, inst in enumerate(res.instances, start=1):
        assert inst.index == n
        x, y, w, h = inst.bbox
        assert inst.mask.shape == (h, w) and inst.mask.any()
        assert inst.amodal_mask.shape == (inst.amodal_bbox[3], inst.amodal_bbox[2])
        vis, amo = inst.full_mask(H, W), inst.full_mask(H, W, amodal=True)
        assert not (vis & ~amo).any(), "amodal mask must contain the visible mask"
        assert 0.0 <= inst.occlusion <= 1.0
        assert inst.occlusion == pytest.approx(1 - vis.sum() / amo.sum(), abs=1e-5)
        # the label image shows this instance exactly where its mask is not covered by a higher-scoring one
        assert set(np.unique(res.label_image[vis])) <= set(range(1, n + 1))
        assert (res.label_image == n).sum() <= vis.sum()
        # points are finite, inside the depth range, and never from NaN pixels
        assert inst.points.dtype == np.float32 and np.isfinite(inst.points).all()
        if inst.num_points:
            assert inst.points[:, 2].min() >= 0.1 and inst.points[:, 2].max() <= 5.0
            np.testing.assert_allclose(inst.centroid, inst.points.mean(axis=0), atol=1e-5)
            assert inst.colors is not None and inst.colors.shape == inst.points.shape
        assert 0.0 <= inst.depth_coverage <= 1.0
    assert set(np.unique(res.label_image)) <= set(range(len(res.instances) + 1))


def test_thresholds_update_without_reload(segmenter):
    color, depth = _frame(1)
    many = segmenter.process(color, depth, K)
    segmenter.update_config(segmenter.config.replace(**{"model.max_instances": 2}))
    try:
        few = segmenter.process(color, depth, K)
    finally:
        segmenter.update_config(segmenter.config.replace(**{"model.max_instances": 8}))
    assert len(few.instances) <= 2 <= len(many.instances)


def test_malformed_frames_raise_frame_error(segmenter):
    color, depth = _frame()
    with pytest.raises(FrameError):
        segmenter.process(color, depth[:-1], K)
    with pytest.raises(FrameError):
        segmenter.process(color, depth, Intrinsics(150, 150, 79.5, 59.5, W * 2, H))
    # and the next good frame still works
    assert segmenter.process(color, depth, K).width == W


def test_process_before_load_is_an_error():
    with pytest.raises(RuntimeError, match="load"):
        Segmenter(Config()).process(*_frame(), K)


def test_support_plane_check_drops_detections_on_the_table_and_renumbers(segmenter):
    """The same detections with the check off and on: the dropped ones are those whose points stay within
    ``filter.min_height`` of the 0.8 m table; the kept ones are renumbered 1..N in the label image."""
    color, depth = _frame(3)
    off = segmenter.config.replace(**{"filter.support_plane": "off"})
    segmenter.update_config(off)
    before = segmenter.process(color, depth, K)
    segmenter.update_config(off.replace(**{"filter.support_plane": "auto"}))
    try:
        after = segmenter.process(color, depth, K)
    finally:
        segmenter.update_config(off)
    assert before.support_plane is None and not before.dropped
    plane = after.support_plane
    assert plane is not None and abs(plane.offset - 0.8) < 0.01 and abs(abs(plane.normal[2]) - 1) < 1e-3
    assert len(after.instances) + len(after.dropped) == len(before.instances) and after.dropped
    assert [i.index for i in after.instances] == list(range(1, len(after.instances) + 1))
    assert set(np.unique(after.label_image)) <= set(range(len(after.instances) + 1))
    for inst in after.instances:
        assert (after.label_image[inst.full_mask(H, W)] <= inst.index).all()
        if inst.num_points >= 10:
            assert np.quantile(plane.height(inst.points), 0.9) >= 0.015
    for inst in after.dropped:
        assert inst.num_points >= 10 and np.quantile(plane.height(inst.points), 0.9) < 0.015
        assert not (after.label_image[inst.full_mask(H, W)] > 0).all() or inst.mask.sum() == 0
    assert "support_plane" in after.timings


def test_an_object_filling_the_view_is_not_its_own_support_plane():
    """A box face covering 90 % of the frame is the dominant plane. Detected as one instance, it is kept (without
    its pixels the plane holds almost nothing); a small print on it is still dropped (the rest of the face stays)."""
    from instance_seg_ros.core.lifting import lift_instances
    from instance_seg_ros.core.support_plane import support_plane_check

    depth = np.full((H, W), 0.45, np.float32)
    depth[:, :16] = 0.9  # a sliver of table behind it
    label = np.zeros((H, W), np.uint16)
    label[:, 16:] = 1  # the face
    label[40:60, 60:90] = 2  # a logo printed on it (the better-scored detection owns its pixels)
    masks = np.stack([label == 1, label == 2])
    points = [c.points for c in lift_instances(depth, masks, K, depth_min=0.1, depth_max=5.0)]
    plane, flagged = support_plane_check(Config(), depth, K, points, label)
    assert plane is not None and abs(plane.offset - 0.45) < 0.01 and plane.support > 0.8
    assert flagged.tolist() == [False, True]
    _, flagged = support_plane_check(Config(), depth, K, points)  # without the label image: no guard
    assert flagged.tolist() == [True, True]


def test_network_depth_off_feeds_the_rgbd_network_color_only_and_still_lifts():
    torch.manual_seed(0)
    cfg = Config.from_flat({
        "model.weights": "none", "model.backbone": "resnet18_fpn", "model.input_mode": "rgbd", "model.device": "cpu",
        "model.score_threshold": 0.0, "model.mask_threshold": 0.0, "model.max_instances": 8, "model.warmup": False,
        "filter.support_plane": "off", "model.geometric_proposals": "off",
    })
    seg = Segmenter(cfg)
    seg.load()
    color, depth = _frame()
    with_depth = seg.process(color, depth, K)
    seg.update_config(cfg.replace(**{"model.network_depth": False}))
    color_only = seg.process(color, depth, K)
    again = seg.process(color, depth, K)
    assert [i.score for i in color_only.instances] == [i.score for i in again.instances]
    assert [i.score for i in color_only.instances] != [i.score for i in with_depth.instances]  # depth was an input
    assert color_only.instances and all(i.num_points > 0 for i in color_only.instances)  # and still lifts
