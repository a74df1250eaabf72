"""Geometric proposals: clusters of depth above the support plane become boxes for the network's box head."""

from __future__ import annotations

import numpy as np
import pytest
from roi_cases import overlapping_rois

from instance_seg_ros.core.geometric_proposals import cluster_boxes
from instance_seg_ros.core.support_plane import fit_support_plane
from instance_seg_ros.core.types import Intrinsics

K = Intrinsics(500.0, 500.0, 159.5, 119.5, 320, 240)


def _plane_scene():
    """A camera looking straight down at a table 1 m away; a 10 cm high box (left) and a 20 cm can (right) that
    touches a 5 cm tall box behind it in the image (different heights: a depth jump separates them)."""
    d = np.full((240, 320), 1.0, np.float32)
    d[40:100, 30:110] = 0.9       # box, 10 cm high
    d[130:200, 180:240] = 0.8     # tall object, 20 cm
    d[130:200, 240:300] = 0.95    # flat box touching it, 5 cm
    d[220:, :40] = np.nan         # missing depth
    return d


def test_boxes_around_objects_split_at_depth_jumps():
    d = _plane_scene()
    plane = fit_support_plane(d, K)
    assert plane is not None and abs(plane.offset - 1.0) < 0.01
    boxes = cluster_boxes(d, K, plane, stride=1)
    assert boxes.shape == (3, 4) and boxes.dtype == np.float32
    expected = np.array([[30, 40, 110, 100], [180, 130, 240, 200], [240, 130, 300, 200]], np.float32)
    for e in expected:
        # each object has a box within a few pixels (cut pixels at the jump, the padding)
        err = np.abs(boxes - e).max(axis=1)
        assert err.min() <= 6, (e, boxes)


def test_flat_things_and_specks_are_not_proposed():
    d = np.full((240, 320), 1.0, np.float32)
    d[50:150, 50:150] = 0.995     # a 5 mm thick sheet: below min_height
    d[200:202, 200:202] = 0.8     # a 2x2 speck: below min_area
    plane = fit_support_plane(d, K)
    assert len(cluster_boxes(d, K, plane, stride=1)) == 0


def test_stride_and_limits():
    d = _plane_scene()
    plane = fit_support_plane(d, K)
    coarse = cluster_boxes(d, K, plane, stride=4)
    assert len(coarse) == 3
    assert np.all(coarse[:, [0, 2]] <= K.width - 1) and np.all(coarse[:, [1, 3]] <= K.height - 1)
    assert len(cluster_boxes(d, K, plane, stride=1, max_boxes=1)) == 1
    # the largest cluster is kept first
    one = cluster_boxes(d, K, plane, stride=1, max_boxes=1)[0]
    assert one[0] < 40 and one[2] > 100


# ------------------------------------------------------------------------------------------------ mask overlap
def test_mask_overlap_keep_drops_parts_and_duplicates_of_better_detections():
    import torch

    from instance_seg_ros.core.model.predictor import mask_overlap_keep

    m = torch.zeros((5, 40, 40), dtype=torch.bool)
    m[0, 0:20, 0:20] = True       # an object
    m[1, 4:12, 4:12] = True       # a label on it, lower score: a part -> dropped
    m[2, 20:40, 20:40] = True     # another object
    m[3, 0:20, 0:20] = True       # a duplicate of the first -> dropped
    m[4, 16:40, 16:40] = True     # a lower-scored box around object 2 that reaches out: mostly inside 2 -> dropped
    keep = mask_overlap_keep(m, 0.5, stride=1).tolist()
    assert keep == [0, 2]
    assert mask_overlap_keep(m, 1.0, stride=1).tolist() == [0, 1, 2, 3, 4]
    # a whole object found after one of its parts is kept (the part is inside it, not it inside the part)
    w = torch.zeros((2, 40, 40), dtype=torch.bool)
    w[0, 4:12, 4:12] = True
    w[1, 0:20, 0:20] = True
    assert mask_overlap_keep(w, 0.5, stride=1).tolist() == [0, 1]
    assert mask_overlap_keep(m[:1], 0.5).tolist() == [0]


def _roi_detections():
    """Three detections on an 80x80 image, best score first: 0 is an object whose mask spills (probability 0.6)
    over a touching object, 1 is that touching object (probability 0.98), 2 a label on object 1."""
    import torch

    from instance_seg_ros.core.model.predictor import paste_masks_batched

    probs = torch.zeros((3, 28, 28))
    probs[0, :, :19] = 0.95  # box x 0..60: its own object left of x = 40
    probs[0, :, 19:] = 0.6   # the spill over object 1 (x 40..60)
    probs[1] = 0.98
    probs[2] = 0.9
    boxes = torch.tensor([[0.0, 0.0, 60.0, 40.0], [40.0, 0.0, 70.0, 40.0], [45.0, 10.0, 55.0, 20.0]])
    scores = torch.tensor([0.9, 0.85, 0.7])
    masks = paste_masks_batched(probs[:, None], boxes, (80, 80), 0.5)[:, 0]
    return masks, probs, boxes, scores


def test_mask_ownership_keep_gives_a_spill_back_and_drops_parts():
    import torch

    from instance_seg_ros.core.model.predictor import mask_overlap_keep, mask_ownership_keep

    masks, probs, boxes, scores = _roi_detections()
    # containment loses object 1: two thirds of it lie inside detection 0's spill
    assert mask_overlap_keep(masks, 0.5, stride=1).tolist() == [0]
    for stride in (1, 4):
        kept, out = mask_ownership_keep(masks, probs, boxes, scores, 0.5, stride=stride)
        assert kept.tolist() == [0, 1], stride  # the label (2) owns none of its mask: object 1 is surer there
        assert int(out.sum(dim=0).max()) == 1  # disjoint
        assert torch.equal(out[1][:, 41:], masks[1][:, 41:])  # object 1 keeps itself, the spill included
        assert not out[0, :, 42:].any() and torch.equal(out[0, :, :38], masks[0, :, :38])
    # 1 keeps every detection, and still makes the masks disjoint
    kept, out = mask_ownership_keep(masks, probs, boxes, scores, 1.0, stride=1)
    assert kept.tolist() == [0, 1, 2] and int(out.sum(dim=0).max()) == 1
    assert not out[2].any() or out[2].sum() < masks[2].sum()
    # a detection with nothing above the mask threshold contests nothing: kept (as in mask_overlap_keep)
    faint = probs.clone()
    faint[2] = 0.3
    assert mask_ownership_keep(masks, faint, boxes, scores, 0.5, stride=1)[0].tolist() == [0, 1, 2]
    one, out1 = mask_ownership_keep(masks[:1], probs[:1], boxes[:1], scores[:1], 0.5)
    assert one.tolist() == [0] and torch.equal(out1, masks[:1])


def test_mask_ownership_keep_paths_agree():
    """The CPU pair-by-pair settling (numpy), the all-at-once one used on accelerators and the in-place call give
    the same detections and masks, on random overlapping RoI masks with every kind of overlap and tie."""
    import torch

    from instance_seg_ros.core.model.predictor import mask_ownership_keep, paste_masks_batched

    g = torch.Generator().manual_seed(3)
    dropped = 0
    for _ in range(60):
        boxes, probs = overlapping_rois(g)
        n = len(boxes)
        if bool(torch.rand(1, generator=g) < 0.3):
            probs = (probs > 0.5).float() * 0.9  # flat probabilities: ties everywhere
        scores = torch.sort(torch.rand(n, generator=g), descending=True).values
        masks = paste_masks_batched(probs[:, None], boxes, (80, 96), 0.5)[:, 0]
        thr = float(torch.rand(1, generator=g))
        stride = int(torch.randint(1, 5, (1,), generator=g))
        kept, out = mask_ownership_keep(masks, probs, boxes, scores, thr, stride=stride)
        kept_d, out_d = mask_ownership_keep(masks, probs, boxes, scores, thr, stride=stride, _dense=True)
        assert torch.equal(kept, kept_d) and torch.equal(out, out_d)  # numpy keep + pairs vs torch keep + dense
        assert int(out.sum(dim=0).max()) <= 1
        dropped += len(kept) < n
        own = masks.clone()
        kept_i, out_i = mask_ownership_keep(own, probs, boxes, scores, thr, stride=stride, inplace=True)
        assert torch.equal(kept, kept_i) and torch.equal(out, out_i)
        assert out_i.data_ptr() == own.data_ptr()  # a view: no new image stack
    assert dropped >= 10, "the cases should exercise the dropping loop, not only the settling"


def test_mask_ownership_keep_with_the_opencv_coarse_paste():
    """The coarse probabilities pasted by OpenCV (the CPU default) differ from the batched paste by float rounding
    only: the same detections are kept and the same pixels settled, on random overlapping RoI masks (smooth
    probabilities: no exact ties for rounding to break)."""
    import torch

    from instance_seg_ros.core.model.predictor import (
        mask_ownership_keep,
        paste_masks_batched,
        paste_probs_batched,
        paste_probs_opencv,
    )

    g = torch.Generator().manual_seed(5)
    for _ in range(60):
        boxes, probs = overlapping_rois(g)
        n = len(boxes)
        scores = torch.sort(torch.rand(n, generator=g), descending=True).values
        stride = int(torch.randint(1, 5, (1,), generator=g))
        coarse = (-(-80 // stride), -(-96 // stride))
        a = paste_probs_batched(probs[:, None], boxes / stride, coarse)
        b = paste_probs_opencv(probs[:, None], boxes / stride, coarse)
        assert b.shape == a.shape and float((a - b).abs().max()) < 1e-5
        masks = paste_masks_batched(probs[:, None], boxes, (80, 96), 0.5)[:, 0]
        thr = float(torch.rand(1, generator=g))
        kept, out = mask_ownership_keep(masks, probs, boxes, scores, thr, stride=stride)
        kept_o, out_o = mask_ownership_keep(masks, probs, boxes, scores, thr, stride=stride, opencv=True)
        assert torch.equal(kept, kept_o) and torch.equal(out, out_o)


def test_predictor_mask_nms_mode_is_a_run_time_setting():
    from instance_seg_ros.core.config import Config
    from instance_seg_ros.core.model.predictor import PredictorError
    from instance_seg_ros.core.pipeline import Segmenter

    cfg = Config.from_flat({"model.weights": "none", "model.backbone": "mobilenet_v3_large_fpn",
                            "model.device": "cpu", "model.warmup": False})
    assert cfg.model.mask_nms == "ownership"
    seg = Segmenter(cfg)
    seg.load()
    assert seg.predictor.mask_nms == "ownership"
    seg.update_config(cfg.replace(**{"model.mask_nms": "containment"}))
    assert seg.predictor.mask_nms == "containment"
    with pytest.raises(PredictorError, match="mask_nms must be one of"):
        seg.predictor.update(mask_nms="biggest")


# ------------------------------------------------------------------------------------------------ model.proposals
def test_model_proposals_sets_the_rpn_budget():
    from instance_seg_ros.core.config import Config
    from instance_seg_ros.core.pipeline import Segmenter

    cfg = Config.from_flat({"model.weights": "none", "model.backbone": "mobilenet_v3_large_fpn",
                            "model.device": "cpu", "model.warmup": False, "model.proposals": 50})
    seg = Segmenter(cfg)
    seg.load()
    rpn = seg.predictor.model.rpn
    color = np.zeros((120, 160, 3), np.uint8)
    depth = np.full((120, 160), 1.0, np.float32)
    seg.predictor.predict(color, depth)
    assert rpn._post_nms_top_n["testing"] == 50 and rpn._pre_nms_top_n["testing"] == 1000
    seg.update_config(cfg.replace(**{"model.proposals": 2000}))  # at run time
    seg.predictor.predict(color, depth)
    assert rpn._post_nms_top_n["testing"] == 2000 and rpn._pre_nms_top_n["testing"] == 2000
    seg.update_config(cfg.replace(**{"model.proposals": 0}))  # the model's own
    seg.predictor.predict(color, depth)
    assert rpn._post_nms_top_n["testing"] == 300


def test_coarse_ownership_weights_region_by_region_equal_whole_images():
    """The CPU path's q (score x coarse probability, 0 at or below the mask threshold), computed region by region
    while pasting, equals the whole-image product and mask of the same OpenCV paste, bit for bit, probabilities
    exactly at the threshold included."""
    import torch

    from instance_seg_ros.core.model.predictor import _coarse_q_opencv, paste_probs_opencv

    g = torch.Generator().manual_seed(6)
    probs = torch.rand(9, 28, 28, generator=g)
    probs[:, ::5, ::3] = 0.3  # exactly the threshold
    xy = torch.rand(9, 2, generator=g) * torch.tensor([30.0, 20.0]) - 5.0
    boxes = torch.cat([xy, xy + torch.rand(9, 2, generator=g) * 20 + 1], dim=1)
    scores = torch.rand(9, generator=g)
    for thr in (0.3, 0.5, 0.0):
        pc = paste_probs_opencv(probs[:, None], boxes, (30, 40))[:, 0].flatten(1)
        below = pc <= thr
        ref = pc.mul_(scores[:, None]).masked_fill_(below, 0.0)
        assert torch.equal(_coarse_q_opencv(probs, boxes, (30, 40), scores, thr), ref)
