"""core/mot_metrics.py: CLEAR MOT and IDF1 on hand-computed sequences (boxes and real masks)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from instance_seg_ros.core.masks import box_and_crop
from instance_seg_ros.core.mot_metrics import MotAccumulator
from instance_seg_ros.core.tracking import Tracker, TrackerConfig
from instance_seg_ros.core.types import InstanceResult

H, W = 60, 80


def disk(cx: int, cy: int, r: int, track_id: int = 0) -> InstanceResult:
    v, u = np.mgrid[0:H, 0:W]
    bbox, mask = box_and_crop((u - cx) ** 2 + (v - cy) ** 2 <= r * r)
    return InstanceResult(index=0, class_id=1, class_name="object", score=0.9, bbox=bbox, mask=mask,
                          amodal_bbox=bbox, amodal_mask=mask.copy(), occlusion=0.0, is_occluded=False,
                          centroid=np.array([cx / 100, cy / 100, 0.8]), track_id=track_id)


A, B = (0, 0, 10, 10), (50, 0, 10, 10)


def boxes(*bs: tuple[int, int, int, int]) -> np.ndarray:
    return np.array(bs, dtype=float).reshape(-1, 4)


def test_perfect_tracking_scores_one_whatever_the_ids():
    acc = MotAccumulator()
    for _ in range(10):
        gt = [disk(15, 15, 8), disk(40, 30, 6), disk(65, 45, 7)]
        pred = [disk(65, 45, 7, track_id=9), disk(15, 15, 8, track_id=7), disk(40, 30, 6, track_id=8)]
        matches = acc.add_instances(gt, [1, 2, 3], pred)
        assert sorted(matches) == [(1, 7), (2, 8), (3, 9)]
    m = acc.compute()
    assert (m.frames, m.gt_objects, m.gt_ids, m.predictions, m.pred_ids) == (10, 30, 3, 30, 3)
    assert (m.matches, m.misses, m.false_positives, m.id_switches) == (30, 0, 0, 0)
    assert m.mota == 1.0 and m.motp == pytest.approx(1.0) and m.idf1 == 1.0
    assert (m.idtp, m.idfp, m.idfn, m.id_switches_per_100) == (30, 0, 0, 0.0)


def test_one_object_changing_id_midway_is_one_switch():
    # A is tracked as 10 in frames 0-4 and as 30 in frames 5-9; B is 20 throughout.
    acc = MotAccumulator()
    for t in range(10):
        acc.add_boxes([1, 2], boxes(A, B), [10 if t < 5 else 30, 20], boxes(A, B))
    m = acc.compute()
    assert m.id_switches == 1
    assert m.mota == pytest.approx(1 - 1 / 20)  # 20 gt object-frames, one mismatch
    assert m.id_switches_per_100 == pytest.approx(5.0)
    # IDF1: A pairs with 10 (5 frames) or 30 (5 frames), B with 20 (10): IDTP = 15 of 20 gt and 20 predictions
    assert (m.idtp, m.idfp, m.idfn) == (15, 5, 5)
    assert m.idf1 == pytest.approx(2 * 15 / (2 * 15 + 5 + 5)) == pytest.approx(0.75)
    assert m.idp == pytest.approx(0.75) and m.idr == pytest.approx(0.75)


def test_two_tracks_swapping_ids_are_two_switches():
    acc = MotAccumulator()
    for t in range(10):
        acc.add_boxes([1, 2], boxes(A, B), [10, 20] if t < 5 else [20, 10], boxes(A, B))
    m = acc.compute()
    assert m.id_switches == 2 and m.mota == pytest.approx(0.9)
    assert m.idtp == 10 and m.idf1 == pytest.approx(0.5)  # best global pairing keeps 5 frames per object


def test_misses_and_false_positives_reduce_mota_as_hand_computed():
    # 4 frames, 2 gt objects = 8 gt object-frames.
    # A: tracked exactly (IoU 1) as 1 except frame 2 (miss). B: tracked as 2, shifted 2 px (IoU 80 / 120 = 2/3).
    # A clutter track 3 in frames 1 and 3 (2 false positives).
    b_shift = (52, 0, 10, 10)
    clutter = (30, 40, 5, 5)
    acc = MotAccumulator()
    acc.add_boxes([1, 2], boxes(A, B), [1, 2], boxes(A, b_shift))
    acc.add_boxes([1, 2], boxes(A, B), [1, 2, 3], boxes(A, b_shift, clutter))
    acc.add_boxes([1, 2], boxes(A, B), [2], boxes(b_shift))
    acc.add_boxes([1, 2], boxes(A, B), [3, 2, 1], boxes(clutter, b_shift, A))
    m = acc.compute()
    assert (m.gt_objects, m.predictions, m.matches, m.misses, m.false_positives, m.id_switches) == (8, 9, 7, 1, 2, 0)
    assert m.mota == pytest.approx(1 - (1 + 2 + 0) / 8)  # 0.625
    assert m.motp == pytest.approx((3 * 1.0 + 4 * 2 / 3) / 7)  # 17/21
    assert (m.idtp, m.idfp, m.idfn) == (7, 2, 1)
    assert m.idf1 == pytest.approx(2 * 7 / (8 + 9))


def test_overlap_below_the_threshold_is_a_miss_and_a_false_positive():
    acc = MotAccumulator(iou_threshold=0.5)
    acc.add_boxes([1], boxes(A), [5], boxes((0, 0, 4, 10)))  # IoU 0.4
    m = acc.compute()
    assert (m.matches, m.misses, m.false_positives) == (0, 1, 1)
    assert m.mota == -1.0 and math.isnan(m.motp) and m.idf1 == 0.0  # 1 - (1 + 1) / 1: MOTA can go negative


def test_an_earlier_correspondence_is_kept_while_it_overlaps():
    # frame 1: the old track 1 still overlaps A (IoU 0.6) and track 2 overlaps better (1.0): A stays with 1,
    # 2 is a false positive (Bernardin & Stiefelhagen step 1). Frame 2: track 1 is gone, A goes to 2: a switch.
    acc = MotAccumulator()
    acc.add_boxes([1], boxes(A), [1], boxes(A))
    assert acc.add_boxes([1], boxes(A), [1, 2], boxes((0, 0, 10, 6), A)) == [(1, 1)]
    assert acc.add_boxes([1], boxes(A), [2], boxes(A)) == [(1, 2)]
    m = acc.compute()
    assert (m.matches, m.false_positives, m.id_switches) == (3, 1, 1)
    assert m.mota == pytest.approx(1 - 2 / 3)


def test_a_new_id_after_a_gap_is_a_switch_and_a_return_to_the_old_one_is_not():
    acc = MotAccumulator()
    acc.add_boxes([1], boxes(A), [1], boxes(A))
    acc.add_boxes([], boxes(), [], boxes())  # A unseen
    acc.add_boxes([1], boxes(A), [4], boxes(A))  # a new id: switch
    acc.add_boxes([1], boxes(A), [], boxes())  # missed
    acc.add_boxes([1], boxes(A), [4], boxes(A))  # same as the last match: no switch
    m = acc.compute()
    assert (m.frames, m.gt_objects, m.matches, m.misses, m.id_switches) == (5, 4, 3, 1, 1)


def test_untracked_predictions_are_left_out_and_gt_ids_can_come_from_track_id():
    acc = MotAccumulator()
    gt = [disk(20, 20, 8, track_id=101), disk(60, 30, 8, track_id=102)]
    pred = [disk(20, 20, 8, track_id=5), disk(60, 30, 8, track_id=0)]  # the second is not tracked yet
    assert acc.add_instances(gt, None, pred) == [(101, 5)]
    m = acc.compute()
    assert (m.predictions, m.matches, m.misses, m.false_positives) == (1, 1, 1, 0)


def test_idf1_on_detected_objects_leaves_out_detector_errors_but_not_tracker_ones():
    acc = MotAccumulator()
    # frame 1: object 1 detected but not yet confirmed (id 0), object 2 missed, a false positive tracked
    acc.add_instances([disk(15, 15, 8), disk(40, 30, 6)], [1, 2], [disk(15, 15, 8), disk(65, 45, 7, track_id=5)])
    # frames 2-4: object 1 tracked as 7, object 2 still missed
    for _ in range(3):
        acc.add_instances([disk(15, 15, 8), disk(40, 30, 6)], [1, 2], [disk(15, 15, 8, track_id=7)])
    m = acc.compute()
    assert (m.idtp, m.gt_objects, m.predictions) == (3, 8, 4)
    assert math.isclose(m.idf1, 6 / 12)
    # detected: object 1 in all 4 frames (the unconfirmed one counts against the tracker); on ground truth: 3
    assert (m.gt_detected, m.predictions_on_gt) == (4, 3)
    assert math.isclose(m.idf1_detected, 6 / 7)
    # through add(): detected defaults to the overlaps of the predictions given
    acc = MotAccumulator()
    acc.add_boxes([1, 2], boxes(A, B), [4], boxes(A))
    m = acc.compute()
    assert (m.gt_detected, m.predictions_on_gt, m.idf1_detected) == (1, 1, 1.0)
    with pytest.raises(ValueError, match="one flag per ground-truth"):
        MotAccumulator().add([1], [], np.zeros((1, 0)), detected=[True, False])


def test_empty_sequences_give_nan_ratios():
    m = MotAccumulator().compute()
    assert m.frames == 0 and math.isnan(m.mota) and math.isnan(m.idf1) and math.isnan(m.motp)
    acc = MotAccumulator()
    acc.add_boxes([], boxes(), [3], boxes(A))
    m = acc.compute()
    assert m.false_positives == 1 and math.isnan(m.mota) and m.idp == 0.0 and m.idf1 == 0.0
    assert set(m.as_dict()) >= {"mota", "motp", "idf1", "id_switches", "id_switches_per_100"}


@pytest.mark.parametrize(("call", "message"), [
    (lambda acc: acc.add([1, 1], [2], np.ones((2, 1))), "gt_ids must be unique"),
    (lambda acc: acc.add([1], [2, 2], np.ones((1, 2))), "pred_ids must be unique"),
    (lambda acc: acc.add([1, 2], [3], np.ones((1, 2))), r"shape \[G, P\] = \[2, 1\]"),
    (lambda acc: acc.add_instances([disk(20, 20, 5)], [1, 2], []), "one id per ground-truth instance"),
])
def test_bad_inputs_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call(MotAccumulator())


def test_bad_threshold_is_refused():
    with pytest.raises(ValueError, match="iou_threshold"):
        MotAccumulator(iou_threshold=0.0)


def test_tracker_on_a_static_scene_evaluates_as_hand_computed():
    # 3 objects x 10 frames; min_hits=3 leaves the first 2 frames untracked (id 0): 6 misses, nothing else.
    tracker = Tracker(TrackerConfig(min_hits=3))
    acc = MotAccumulator()
    for t in range(10):
        gt = [disk(15, 15, 8), disk(40, 30, 6), disk(65, 45, 7)]
        pred = [disk(15, 15, 8), disk(40, 30, 6), disk(65, 45, 7)]
        tracker.update(t / 30, pred)
        acc.add_instances(gt, [11, 12, 13], pred)
    m = acc.compute()
    assert (m.gt_objects, m.matches, m.misses, m.false_positives, m.id_switches) == (30, 24, 6, 0, 0)
    assert m.mota == pytest.approx(0.8)
    assert m.idf1 == pytest.approx(2 * 24 / (30 + 24))
