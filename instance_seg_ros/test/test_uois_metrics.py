"""core/uois_metrics.py: Overlap / Boundary P/R/F and F@.75 (UOIS-Net's definitions) on hand-computed frames.

Notation in the comments: |A| is a pixel count, F(g, p) = 2|g ∩ p| / (|g| + |p|) the overlap F-measure of a pair.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from instance_seg_ros.core.uois_metrics import (
    METRIC_KEYS,
    MetricsError,
    UoisAccumulator,
    _seg2bmap,
    labels_from_masks,
    overlap_boundary_metrics,
)


def canvas(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w), np.int32)


def paint(labels: np.ndarray, rows: tuple[int, int], cols: tuple[int, int], value: int) -> np.ndarray:
    """Set the inclusive rectangle rows[0]..rows[1] x cols[0]..cols[1] to ``value`` (in place) and return labels."""
    labels[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = value
    return labels


def assert_figures(m: dict, **expected: float) -> None:
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key


# ---------------------------------------------------------------------------------------------------------------
# Overlap measures and matching


def test_perfect_prediction_scores_one_everywhere_whatever_the_ids():
    gt = canvas(12, 12)
    paint(gt, (1, 3), (1, 4), 1)
    paint(gt, (6, 10), (2, 5), 2)
    paint(gt, (5, 9), (7, 10), 3)
    pred = np.select([gt == 1, gt == 2, gt == 3], [200, 9, 5], 0).astype(np.uint16)  # other, non-contiguous ids
    m = overlap_boundary_metrics(pred, gt)
    assert_figures(m, **dict.fromkeys(METRIC_KEYS, 1.0))
    assert (m["objects_gt"], m["objects_pred"], m["objects_f75"]) == (3, 3, 3)


def test_object_split_in_two_predictions_keeps_the_larger_piece():
    # GT object: rows 2..5 x cols 1..8 = 4 x 8 = 32 px.
    # Predicted left piece  (id 1): cols 1..5 = 4 x 5 = 20 px, F = 2*20/(32+20) = 40/52 = 10/13 ~ 0.769
    # Predicted right piece (id 2): cols 6..8 = 4 x 3 = 12 px, F = 2*12/(32+12) = 24/44 = 6/11 ~ 0.545
    # One GT object -> one match: the left piece. Shared pixels of the match = 20.
    # precision = 20 / (20 + 12 predicted pixels) = 0.625, recall = 20 / 32 = 0.625, F = 0.625.
    # F@.75: 10/13 > 0.75 -> 1 of 1 GT objects.
    gt = paint(canvas(10, 10), (2, 5), (1, 8), 1)
    pred = canvas(10, 10)
    paint(pred, (2, 5), (1, 5), 1)
    paint(pred, (2, 5), (6, 8), 2)
    m = overlap_boundary_metrics(pred, gt)
    assert_figures(m, overlap_precision=0.625, overlap_recall=0.625, overlap_f=0.625, f75=1.0)
    assert (m["objects_gt"], m["objects_pred"], m["objects_f75"]) == (1, 2, 1)


def test_two_objects_merged_into_one_prediction_lose_the_unmatched_object():
    # GT A: rows 2..4 x cols 1..4 = 12 px; GT B: rows 2..4 x cols 5..6 = 6 px (touching A).
    # Prediction: rows 2..4 x cols 1..6 = 18 px covering both.
    # F(A, pred) = 2*12/(12+18) = 0.8, F(B, pred) = 2*6/(6+18) = 0.5 -> pred matches A, 12 shared pixels.
    # precision = 12/18 = 2/3, recall = 12/(12+6) = 2/3, F = 2/3. F@.75: A (0.8) yes, B unmatched -> 1/2.
    gt = canvas(8, 9)
    paint(gt, (2, 4), (1, 4), 1)
    paint(gt, (2, 4), (5, 6), 2)
    pred = paint(canvas(8, 9), (2, 4), (1, 6), 1)
    m = overlap_boundary_metrics(pred, gt)
    assert_figures(m, overlap_precision=2 / 3, overlap_recall=2 / 3, overlap_f=2 / 3, f75=0.5)
    assert (m["objects_gt"], m["objects_pred"], m["objects_f75"]) == (2, 1, 1)


def test_matching_maximizes_the_sum_of_f_not_the_best_single_pair():
    # One row, 14 columns. GT A = cols 0..9 (10 px), GT B = cols 10..13 (4 px).
    # Pred X = cols 2..13 (12 px): |A∩X| = 8, |B∩X| = 4; F(A,X) = 16/22 ~ 0.727, F(B,X) = 8/16 = 0.5.
    # Pred Y = cols 0..1 (2 px):   |A∩Y| = 2;             F(A,Y) = 4/12 ~ 0.333, F(B,Y) = 0.
    # Greedy (best pair first) would take A-X then B-Y: sum 0.727. Hungarian takes A-Y + B-X: 0.333 + 0.5 = 0.833.
    # Shared pixels of the Hungarian matches = 2 + 4 = 6 -> precision = 6/14, recall = 6/14.
    gt = canvas(1, 14)
    paint(gt, (0, 0), (0, 9), 1)
    paint(gt, (0, 0), (10, 13), 2)
    pred = canvas(1, 14)
    paint(pred, (0, 0), (2, 13), 1)
    paint(pred, (0, 0), (0, 1), 2)
    m = overlap_boundary_metrics(pred, gt)
    assert_figures(m, overlap_precision=6 / 14, overlap_recall=6 / 14, overlap_f=6 / 14, f75=0.0)


def test_f75_counts_strictly_above_the_threshold():
    # GT 1: rows 0..2 x cols 0..4 = 15 px; pred 1 inside it, rows 0..2 x cols 0..2 = 9 px:
    #       F = 2*9/(15+9) = 18/24 = 0.75 exactly -> NOT above 0.75.
    # GT 2: rows 6..8 x cols 0..4 = 15 px; pred 2 inside it, rows 6..7 x cols 0..4 = 10 px:
    #       F = 2*10/(15+10) = 20/25 = 0.8 -> above 0.75.
    gt = canvas(12, 12)
    paint(gt, (0, 2), (0, 4), 1)
    paint(gt, (6, 8), (0, 4), 2)
    pred = canvas(12, 12)
    paint(pred, (0, 2), (0, 2), 1)
    paint(pred, (6, 7), (0, 4), 2)
    m = overlap_boundary_metrics(pred, gt)
    assert (m["objects_f75"], m["f75"]) == (1, 0.5)
    m = overlap_boundary_metrics(pred, gt, f_threshold=0.7)  # both 0.75 and 0.8 are above 0.7
    assert (m["objects_f75"], m["f75"]) == (2, 1.0)
    m = overlap_boundary_metrics(pred, gt, f_threshold=0.8)  # 0.8 is not above 0.8
    assert (m["objects_f75"], m["f75"]) == (0, 0.0)
    # Overlap: 9 + 10 shared pixels, 19 predicted, 30 labelled.
    assert_figures(m, overlap_precision=1.0, overlap_recall=19 / 30)


# ---------------------------------------------------------------------------------------------------------------
# Boundary measures


def test_seg2bmap_of_a_square_is_its_outline_shifted_half_a_pixel_towards_the_origin():
    # Square rows 3..6 x cols 3..6 (side 4). Inside, the last column and last row differ from an east / south
    # neighbour; outside, row 2 (cols 2..6) and column 2 (rows 2..6) have the square as south / east / SE
    # neighbour. Together: the ring of the 5 x 5 square rows 2..6 x cols 2..6, 4*5 - 4 = 16 pixels.
    seg = paint(canvas(10, 10), (3, 6), (3, 6), 1) > 0
    ring = paint(canvas(10, 10), (2, 6), (2, 6), 1) > 0
    ring[3:6, 3:6] = False
    assert np.array_equal(_seg2bmap(seg), ring)
    # The image border is no boundary: a full image has none, and a mask touching the bottom-right corner has
    # only its top row / left column outline.
    assert not _seg2bmap(np.ones((4, 5), bool)).any()
    corner = paint(canvas(4, 4), (2, 3), (2, 3), 1) > 0
    assert np.array_equal(np.argwhere(_seg2bmap(corner)), [[1, 1], [1, 2], [1, 3], [2, 1], [3, 1]])


def test_shifted_square_boundary_precision_and_recall_at_a_known_tolerance():
    # GT square rows 3..6 x cols 3..6, its boundary the ring R_g = rows 2..6 x cols 2..6 (16 px).
    # Pred square shifted right by 2: cols 5..8, ring R_p = rows 2..6 x cols 4..8 (16 px).
    # Overlap: 4 x 2 = 8 shared px of 16 each -> P = R = F = 0.5.
    #
    # Tolerance 1 px (disk of radius 1 = the pixel and its 4 neighbours). Pixels of R_p within 1 px of R_g:
    #   top row (row 2), cols 4..8: cols 4, 5, 6 lie on R_g's top row, col 7 touches (2, 6), col 8 does not -> 4
    #   bottom row (row 6): likewise                                                                       -> 4
    #   left column (col 4), rows 3..5: (3, 4) touches (2, 4), (5, 4) touches (6, 4), (4, 4) touches nothing -> 2
    #   right column (col 8), rows 3..5: nearest R_g pixels are 2 columns away                              -> 0
    #   precision = (4 + 4 + 2 + 0) / 16 = 0.625; the mirror image gives recall = 10/16 = 0.625.
    gt = paint(canvas(10, 12), (3, 6), (3, 6), 1)
    pred = paint(canvas(10, 12), (3, 6), (5, 8), 1)
    m = overlap_boundary_metrics(pred, gt, boundary_th=1)
    assert_figures(m, overlap_precision=0.5, overlap_recall=0.5, overlap_f=0.5,
                   boundary_precision=0.625, boundary_recall=0.625, boundary_f=0.625)
    # Tolerance 2 px (disk radius 2: offsets with dy² + dx² <= 4). Now (2, 8) reaches (2, 6), (4, 4) reaches
    # (4, 2), and (3..5, 8) reach (3..5, 6) on R_g's right column -> all 16 -> precision = recall = 1.
    m = overlap_boundary_metrics(pred, gt, boundary_th=2)
    assert_figures(m, boundary_precision=1.0, boundary_recall=1.0, boundary_f=1.0)
    # Below 1 the tolerance is a fraction of the diagonal, rounded up: sqrt(10² + 12²) ~ 15.6 px, so
    # the default 0.003 -> ceil(0.047) = 1 px and 0.1 -> ceil(1.56) = 2 px.
    assert overlap_boundary_metrics(pred, gt)["boundary_precision"] == pytest.approx(0.625)
    assert overlap_boundary_metrics(pred, gt, boundary_th=0.1)["boundary_precision"] == pytest.approx(1.0)
    # Tolerance 0: only pixels on both rings count: rows 2 and 6 at cols 4..6 = 6 of 16.
    assert overlap_boundary_metrics(pred, gt, boundary_th=0)["boundary_precision"] == pytest.approx(6 / 16)


# ---------------------------------------------------------------------------------------------------------------
# Frames without objects (the reference's edge cases)


def test_labels_but_no_predictions():
    gt = canvas(6, 6)
    paint(gt, (0, 1), (0, 1), 1)
    paint(gt, (3, 4), (3, 4), 2)
    m = overlap_boundary_metrics(canvas(6, 6), gt)
    assert_figures(m, overlap_precision=1.0, overlap_recall=0.0, overlap_f=0.0,
                   boundary_precision=1.0, boundary_recall=0.0, boundary_f=0.0, f75=0.0)
    assert (m["objects_gt"], m["objects_pred"], m["objects_f75"]) == (2, 0, 0)


def test_predictions_but_no_labels():
    pred = paint(canvas(6, 6), (1, 3), (1, 3), 4)
    m = overlap_boundary_metrics(pred, canvas(6, 6))
    assert_figures(m, overlap_precision=0.0, overlap_recall=1.0, overlap_f=0.0,
                   boundary_precision=0.0, boundary_recall=1.0, boundary_f=0.0, f75=0.0)
    assert (m["objects_gt"], m["objects_pred"], m["objects_f75"]) == (0, 1, 0)


def test_nothing_predicted_and_nothing_labelled_scores_one():
    m = overlap_boundary_metrics(canvas(6, 6), canvas(6, 6))
    assert_figures(m, **dict.fromkeys(METRIC_KEYS, 1.0))
    assert (m["objects_gt"], m["objects_pred"], m["objects_f75"]) == (0, 0, 0)


# ---------------------------------------------------------------------------------------------------------------
# Input errors


def test_size_mismatch_names_both_shapes():
    with pytest.raises(MetricsError, match=r"\(4, 5\).*\(5, 4\)") as info:
        overlap_boundary_metrics(np.zeros((4, 5), np.int32), np.zeros((5, 4), np.int32))
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("pred", "kwargs", "message"),
    [
        (np.zeros((4, 4), np.float32), {}, "integer"),
        (np.zeros((2, 4, 4), np.int32), {}, "2-D"),
        (np.full((4, 4), -1, np.int32), {}, "negative"),
        (np.zeros((4, 4), np.int32), {"boundary_th": 1.5}, "whole pixels"),
        (np.zeros((4, 4), np.int32), {"boundary_th": -0.1}, ">= 0"),
        (np.zeros((4, 4), np.int32), {"f_threshold": 1.5}, r"\[0, 1\]"),
    ],
)
def test_bad_inputs_raise_metrics_error(pred, kwargs, message):
    with pytest.raises(MetricsError, match=message):
        overlap_boundary_metrics(pred, np.zeros((4, 4), np.int32), **kwargs)


def test_bool_label_images_are_one_object_each():
    gt = paint(canvas(6, 6), (1, 3), (1, 3), 1) > 0
    m = overlap_boundary_metrics(gt.copy(), gt)
    assert (m["objects_gt"], m["overlap_f"], m["boundary_f"]) == (1, 1.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# labels_from_masks


def test_labels_from_masks_earlier_masks_win_overlaps():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, 0:2, :] = True  # rows 0..1
    masks[1, 1:3, :] = True  # rows 1..2: row 1 is also mask 0's -> stays 1
    masks[2, 0, 0:2] = True  # inside mask 0 entirely -> leaves no id
    labels = labels_from_masks(masks)
    assert labels.dtype == np.uint16
    assert np.array_equal(labels, [[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2], [0, 0, 0, 0]])
    assert np.array_equal(labels_from_masks(masks.astype(np.uint8)), labels)  # 0/1 integers work too


def test_labels_from_masks_empty_stack_and_bad_inputs():
    labels = labels_from_masks(np.zeros((0, 3, 5), bool))
    assert labels.shape == (3, 5) and labels.dtype == np.uint16 and not labels.any()
    with pytest.raises(MetricsError, match="masks > 0.5"):
        labels_from_masks(np.zeros((1, 3, 5), np.float32))
    with pytest.raises(MetricsError, match=r"\[N, H, W\]"):
        labels_from_masks(np.zeros((3, 5), bool))


# ---------------------------------------------------------------------------------------------------------------
# Accumulator


def test_accumulator_averages_frames_and_sums_counts():
    perfect = paint(canvas(10, 10), (2, 5), (1, 8), 1)
    split = canvas(10, 10)  # the split frame above: overlap P = R = F = 0.625, F@.75 = 1
    paint(split, (2, 5), (1, 5), 1)
    paint(split, (2, 5), (6, 8), 2)
    acc = UoisAccumulator()
    first = acc.add(perfect, perfect)
    second = acc.add(split, perfect)
    assert len(acc) == 2
    s = acc.summarize()
    assert s["frames"] == 2
    assert_figures(s, overlap_precision=(1.0 + 0.625) / 2, overlap_recall=(1.0 + 0.625) / 2,
                   overlap_f=(1.0 + 0.625) / 2, f75=1.0)
    for key in METRIC_KEYS:  # per-image figures averaged over images
        assert s[key] == pytest.approx((first[key] + second[key]) / 2)
    assert (s["objects_gt"], s["objects_pred"], s["objects_f75"]) == (2, 3, 2)


def test_accumulator_passes_its_thresholds_and_is_nan_when_empty():
    acc = UoisAccumulator(boundary_th=2)
    gt = paint(canvas(10, 12), (3, 6), (3, 6), 1)
    pred = paint(canvas(10, 12), (3, 6), (5, 8), 1)
    assert acc.add(pred, gt)["boundary_precision"] == pytest.approx(1.0)  # the shifted square at 2 px
    empty = UoisAccumulator().summarize()
    assert empty["frames"] == 0 and empty["objects_gt"] == 0
    assert all(math.isnan(empty[key]) for key in METRIC_KEYS)
    with pytest.raises(MetricsError):
        UoisAccumulator(f_threshold=-1)


# ---------------------------------------------------------------------------------------------------------------
# Cross-check against a literal per-pair implementation of the definitions


def _bmap_loop(mask: np.ndarray) -> np.ndarray:
    """seg2bmap, pixel by pixel."""
    h, w = mask.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if y < h - 1 and x < w - 1:
                neighbours = [(y, x + 1), (y + 1, x), (y + 1, x + 1)]
            elif x < w - 1:  # last row
                neighbours = [(y, x + 1)]
            elif y < h - 1:  # last column
                neighbours = [(y + 1, x)]
            else:
                neighbours = []
            out[y, x] = any(mask[n] != mask[y, x] for n in neighbours)
    return out


def _within(a: np.ndarray, b: np.ndarray, radius: int) -> int:
    """Pixels of boundary a with a pixel of boundary b at Euclidean distance <= radius."""
    pa, pb = np.argwhere(a), np.argwhere(b)
    if len(pa) == 0 or len(pb) == 0:
        return 0
    d2 = ((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)
    return int((d2.min(axis=1) <= radius * radius).sum())


def _brute_force(pred: np.ndarray, gt: np.ndarray, radius: int) -> list[tuple[float, ...]]:
    """(overlap P, R, boundary P, R, F@.75) for every F-optimal one-to-one matching (ties give several)."""
    gts = [gt == v for v in np.unique(gt) if v]
    preds = [pred == v for v in np.unique(pred) if v]
    f = np.array([[2 * (g & p).sum() / (g.sum() + p.sum()) for p in preds] for g in gts])
    n_gt, n_pred = len(gts), len(preds)
    if n_gt <= n_pred:
        perms = itertools.permutations(range(n_pred), n_gt)
        matchings = [list(zip(range(n_gt), perm, strict=True)) for perm in perms]
    else:
        perms = itertools.permutations(range(n_gt), n_pred)
        matchings = [list(zip(perm, range(n_pred), strict=True)) for perm in perms]
    best = max(sum(f[i, j] for i, j in mt) for mt in matchings)
    gb, pb = [_bmap_loop(g) for g in gts], [_bmap_loop(p) for p in preds]
    out = []
    for mt in matchings:
        if sum(f[i, j] for i, j in mt) < best - 1e-9:
            continue
        shared = sum(int((gts[i] & preds[j]).sum()) for i, j in mt)
        out.append((shared / (pred > 0).sum(), shared / (gt > 0).sum(),
                    sum(_within(pb[j], gb[i], radius) for i, j in mt) / sum(b.sum() for b in pb),
                    sum(_within(gb[i], pb[j], radius) for i, j in mt) / sum(b.sum() for b in gb),
                    sum(f[i, j] > 0.75 for i, j in mt) / len(gts)))
    return out


def _random_labels(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    labels = canvas(h, w)
    for n in range(1, rng.integers(1, 5) + 1):  # later rectangles paint over earlier ones
        y, x = rng.integers(0, h - 1), rng.integers(0, w - 1)
        labels[y:y + rng.integers(1, h // 2 + 2), x:x + rng.integers(1, w // 2 + 2)] = 3 * n
    return labels


@pytest.mark.parametrize("seed", range(20))
def test_matches_a_brute_force_per_pair_implementation(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(6, 18)), int(rng.integers(6, 18))
    gt = _random_labels(rng, h, w)
    if seed % 2:  # a slightly shifted copy: mostly good matches
        pred = np.roll(gt, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    else:  # unrelated rectangles: poor matches, unequal counts, zero-F pairs
        pred = _random_labels(rng, h, w)
    radius = int(rng.integers(0, 4))
    m = overlap_boundary_metrics(pred, gt, boundary_th=radius if radius else 0.0)
    ours = (m["overlap_precision"], m["overlap_recall"], m["boundary_precision"], m["boundary_recall"], m["f75"])
    candidates = _brute_force(pred, gt, radius)
    assert any(np.allclose(ours, c, rtol=0, atol=1e-12) for c in candidates), (ours, candidates)


def test_vga_frame_with_30_objects_per_side():
    # 5 x 6 grid of 85 x 95 px objects; the prediction is the grid shifted by (3, 4) px. Each match shares
    # (85 - 3) x (95 - 4) = 82 x 91 = 7462 of 8075 px -> overlap P = R = 7462/8075 and every F > 0.75.
    gt = canvas(480, 640)
    for k, (r, c) in enumerate(itertools.product(range(5), range(6)), start=1):
        gt[r * 96 + 5:r * 96 + 90, c * 106 + 5:c * 106 + 100] = k
    pred = np.roll(gt, (3, 4), axis=(0, 1))
    m = overlap_boundary_metrics(pred, gt)  # (its cost, ~0.05 s here, is in the isr eval report, not a test)
    assert_figures(m, overlap_precision=7462 / 8075, overlap_recall=7462 / 8075, f75=1.0)
    assert (m["objects_gt"], m["objects_pred"], m["objects_f75"]) == (30, 30, 30)
