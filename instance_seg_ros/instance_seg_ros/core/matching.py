"""Matching predicted instances to ground truth by visible-mask IoU; box IoU and optimal one-to-one assignment
(shared by the tracker and the tracking metrics).

Used by the demo's ground-truth line, the shipped-model test and the rosbag evaluator's 3D metrics
(the COCO AP figures come from :mod:`.coco_eval`, which runs pycocotools).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from .types import FrameResult, InstanceResult

__all__ = ["Crop", "Match", "assign", "box_iou_matrix", "box_overlap", "crop_iou", "crop_iou_matrix", "crop_of",
           "mask_area", "match_instances"]


def _box_xyxy(inst: InstanceResult, amodal: bool) -> tuple[int, int, int, int]:
    x, y, w, h = inst.amodal_bbox if amodal else inst.bbox
    return x, y, x + w, y + h


#: What :func:`crop_iou` needs of one mask: its box ``(x0, y0, x1, y1)``, the crop as bool and the crop's area.
Crop = tuple[int, int, int, int, np.ndarray, int]


def crop_of(inst: InstanceResult, amodal: bool = False) -> Crop:
    """The :data:`Crop` of an instance's visible (or amodal) mask: computed once per mask, used for every pair."""
    m = inst.amodal_mask if amodal else inst.mask
    return (*_box_xyxy(inst, amodal), *mask_area(m))


def mask_area(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``(mask as bool, its number of set pixels)``; a bool mask is used as it is (no copy)."""
    m = mask if type(mask) is np.ndarray and mask.dtype == np.bool_ else np.asarray(mask).astype(bool)
    return m, int(np.count_nonzero(m))


def crop_iou(a: Crop, b: Crop) -> float:
    """IoU of two masks given as :data:`Crop`: the intersection is counted on the overlap of their boxes only."""
    ax0, ay0, ax1, ay1, ma, area_a = a
    bx0, by0, bx1, by1, mb, area_b = b
    x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    inter = 0
    if x1 > x0 and y1 > y0:
        both = ma[y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0] & mb[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]
        inter = int(np.count_nonzero(both))
    union = area_a + area_b - inter
    return inter / union if union else 0.0


def crop_iou_matrix(pred: list[InstanceResult], gt: list[InstanceResult], *, amodal: bool = False) -> np.ndarray:
    """IoU float64[P, G] of the (visible or amodal) masks, computed on the overlap of their crops only (each mask's
    bool crop and area once, then one intersection count per pair of overlapping boxes)."""
    out = np.zeros((len(pred), len(gt)))
    if not len(pred) or not len(gt):
        return out
    pc = [crop_of(p, amodal) for p in pred]
    gc = [crop_of(g, amodal) for g in gt]
    for i, a in enumerate(pc):
        for j, b in enumerate(gc):
            out[i, j] = crop_iou(a, b)
    return out


@dataclass(frozen=True)
class Match:
    pred: int  # position in the prediction list
    gt: int  # position in the ground-truth list
    iou: float
    centroid_error_m: float  # |pred centroid - gt centroid|, nan when either has no points


def match_instances(pred: FrameResult, gt: FrameResult, *, iou_threshold: float = 0.5, amodal: bool = False
                    ) -> list[Match]:
    """Greedy one-to-one matching in descending prediction score (COCO style) at mask IoU ≥ ``iou_threshold``."""
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}.")
    ious = crop_iou_matrix(pred.instances, gt.instances, amodal=amodal)
    order = sorted(range(len(pred.instances)), key=lambda i: -pred.instances[i].score)
    taken: set[int] = set()
    matches = []
    for i in order:
        best, best_iou = -1, iou_threshold
        for j in range(len(gt.instances)):
            if j not in taken and ious[i, j] >= best_iou:
                best, best_iou = j, ious[i, j]
        if best >= 0:
            taken.add(best)
            p, g = pred.instances[i], gt.instances[best]
            err = float(np.linalg.norm(np.asarray(p.centroid) - np.asarray(g.centroid))) \
                if p.num_points and g.num_points else float("nan")
            matches.append(Match(i, best, float(best_iou), err))
    return matches


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU float64[N, M] of boxes ``a`` [N, 4] and ``b`` [M, 4] given as ``(x, y, w, h)`` (the
    :mod:`.types` convention); 0 where a union is empty."""
    inter, union = box_overlap(a, b)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_overlap(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(intersection, union)`` areas float64[N, M] of boxes ``a`` [N, 4] and ``b`` [M, 4] (``(x, y, w, h)``): what
    :func:`box_iou_matrix` divides."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ax0, ay0, aw, ah = (a[:, k, None] for k in range(4))
    bx0, by0, bw, bh = (b[None, :, k] for k in range(4))
    iw = np.clip(np.minimum(ax0 + aw, bx0 + bw) - np.maximum(ax0, bx0), 0.0, None)
    ih = np.clip(np.minimum(ay0 + ah, by0 + bh) - np.maximum(ay0, by0), 0.0, None)
    inter = iw * ih
    return inter, aw * ah + bw * bh - inter


def assign(similarity: np.ndarray, min_similarity: float) -> list[tuple[int, int]]:
    """Optimal one-to-one pairs ``(row, col)`` maximising the summed similarity over the pairs whose similarity is at
    least ``min_similarity`` (> 0); rows and columns left without such a pair stay unmatched. Sorted by row."""
    if min_similarity <= 0.0:
        raise ValueError(f"min_similarity must be above 0, got {min_similarity}.")
    if similarity.size == 0:
        return []
    w = np.where(similarity >= min_similarity, similarity, 0.0)
    rows, cols = linear_sum_assignment(w, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if w[r, c] > 0.0]
