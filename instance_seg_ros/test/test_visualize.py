"""The debug overlay: solid visible contours, dashed amodal contours, labels, and its input checks."""

from __future__ import annotations

import numpy as np
import pytest

from instance_seg_ros.core.types import FrameResult, InstanceResult
from instance_seg_ros.core.visualize import display_color, draw_overlay, instance_color, instance_label

H, W = 120, 160


def _result() -> FrameResult:
    # instance 1: visible 30x20 rectangle at (20, 40); amodal extends it 30 px to the right (occluded part)
    vis = np.ones((20, 30), bool)
    amodal = np.ones((20, 60), bool)
    inst = InstanceResult(index=1, class_id=1, class_name="object", score=0.87, bbox=(20, 40, 30, 20), mask=vis,
                          amodal_bbox=(20, 40, 60, 20), amodal_mask=amodal, occlusion=0.5, is_occluded=True)
    label = np.zeros((H, W), np.uint16)
    label[40:60, 20:50] = 1
    return FrameResult(width=W, height=H, instances=[inst], label_image=label)


def test_overlay_draws_solid_visible_and_dashed_amodal_contours():
    rgb = np.full((H, W, 3), 40, np.uint8)
    rgb.setflags(write=False)  # a read-only view of a message buffer is fine
    out = draw_overlay(rgb, _result(), alpha=0.0, labels=False)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert (rgb == 40).all()  # input untouched
    changed = (out != 40).any(axis=2)
    # visible contour: the left edge x=20 is solid along its whole height
    assert changed[41:59, 20].all()
    # amodal-only edge: the right edge x=79 of the amodal box is part dashed (some on, some off)
    right = changed[40:60, 78:80].any(axis=1)
    top_amodal_only = changed[40, 52:79]
    assert right.any()
    assert 0.2 < top_amodal_only.mean() < 0.95, top_amodal_only
    # far from any contour nothing changes
    assert not changed[100:, 100:].any()


def test_overlay_tint_and_label():
    rgb = np.full((H, W, 3), 40, np.uint8)
    out = draw_overlay(rgb, _result(), alpha=0.5, labels=True)
    color = np.array(instance_color(1))
    inside = out[50, 35].astype(int)
    np.testing.assert_allclose(inside, (40 + color) / 2, atol=2)
    assert (out[20:40, 20:100] != 40).any()  # the label sits above the box
    assert instance_label(_result().instances[0]) == "#1 0.87 occ 50%"


def test_a_tracked_instance_is_drawn_in_its_tracks_color_and_labelled_with_its_id():
    rgb = np.full((H, W, 3), 40, np.uint8)
    res = _result()
    res.instances[0].track_id = 17
    out = draw_overlay(rgb, res, alpha=0.5, labels=True)
    np.testing.assert_allclose(out[50, 35].astype(int), (40 + np.array(instance_color(17))) / 2, atol=2)
    assert display_color(res.instances[0]) == instance_color(17) != instance_color(1)
    assert instance_label(res.instances[0]) == "#1 id 17 0.87 occ 50%"


def test_empty_result_returns_a_copy():
    rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    res = FrameResult(width=W, height=H, instances=[], label_image=np.zeros((H, W), np.uint16))
    out = draw_overlay(rgb, res)
    np.testing.assert_array_equal(out, rgb)
    assert out is not rgb


def test_colors_are_distinct_and_stable():
    cols = [instance_color(i) for i in range(1, 11)]
    assert len(set(cols)) == 10 and instance_color(3) == cols[2]
    assert all(0 <= c <= 255 for col in cols for c in col)


@pytest.mark.parametrize(
    ("img", "kw", "match"),
    [
        (np.zeros((H, W), np.uint8), {}, "RGB uint8"),
        (np.zeros((H, W, 3), np.float32), {}, "RGB uint8"),
        (np.zeros((H + 1, W, 3), np.uint8), {}, "result is for a 160x120"),
        (np.zeros((H, W, 3), np.uint8), {"alpha": 2.0}, "alpha"),
        (np.zeros((H, W, 3), np.uint8), {"thickness": 0}, "thickness"),
    ],
)
def test_bad_inputs(img, kw, match):
    with pytest.raises(ValueError, match=match):
        draw_overlay(img, _result(), **kw)
