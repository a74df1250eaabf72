"""Unseen-object instance segmentation (UOIS) metrics: Overlap and Boundary P/R/F and F@.75 (no ROS, no torch).

These are the figures of the UOIS literature (UOIS-Net, Xie et al.; UCN; UOAIS-Net; MSMFormer), defined as in
UOIS-Net's ``multilabel_metrics`` (``src/evaluation.py``) and reimplemented here with numpy and scipy. One frame
is a pair of label images of one size, ``0`` the background and every other value one object instance.

Per frame, with ``G`` ground-truth objects and ``P`` predicted ones:

1. For every pair (ground-truth object ``i``, predicted object ``j``) the overlap F-measure
   ``F[i, j] = 2 |g_i ∩ p_j| / (|g_i| + |p_j|)`` (the harmonic mean of the pair's pixel precision and recall).
2. The Hungarian algorithm matches ``min(G, P)`` pairs one-to-one so that the sum of ``F`` is largest
   (:func:`scipy.optimize.linear_sum_assignment`). Every matched pair counts, even one that does not overlap.
3. **Overlap** precision = (pixels shared by the matched pairs) / (all predicted object pixels), recall = the same
   numerator / (all ground-truth object pixels), F = their harmonic mean (0 when both are 0). A prediction split
   in two therefore loses the smaller piece; two objects merged into one prediction lose the unmatched object.
4. **Boundary** P/R/F: the same with boundary pixels in place of object pixels. An object's boundary is its
   ``seg2bmap`` map (from the DAVIS benchmark: a pixel is on the boundary when it differs from its east, south or
   south-east neighbour, i.e. the outline shifted half a pixel towards the origin; pixels in the last row compare
   east only, in the last column south only). A boundary pixel of a matched prediction is a true positive when a
   boundary pixel of its ground-truth match lies within a disk of radius ``r`` pixels (and vice versa for recall),
   where ``r = ceil(boundary_th * image diagonal)`` for ``boundary_th < 1`` (default 0.003: 3 px at 640x480)
   and ``r = boundary_th`` pixels for ``boundary_th >= 1``. Precision = matched predicted-boundary true
   positives / the boundary pixels of all predicted objects; recall likewise over all ground-truth objects.
5. **F@.75** (``obj_detected_075_percentage``): the share of the ground-truth objects whose matched pair has an
   overlap F-measure strictly above ``f_threshold`` (0.75).

Frames without objects follow the reference: nothing predicted and nothing labelled scores 1 everywhere
(F@.75 too); predictions without labels give precision 0, recall 1, F 0; labels without predictions give
precision 1, recall 0, F 0 (F@.75 0 in both).

Over a data set (:class:`UoisAccumulator`) each figure is the mean of the per-frame figures, as the papers report.

Example::

    acc = UoisAccumulator()
    for masks, gt_labels in frames:  # masks: bool[N, H, W] in descending score order
        acc.add(labels_from_masks(masks), gt_labels)
    acc.summarize()["overlap_f"], acc.summarize()["f75"]
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

__all__ = ["METRIC_KEYS", "MetricsError", "UoisAccumulator", "labels_from_masks", "overlap_boundary_metrics"]

#: The per-frame figures in [0, 1] that :meth:`UoisAccumulator.summarize` averages over frames.
METRIC_KEYS = ("overlap_precision", "overlap_recall", "overlap_f", "boundary_precision", "boundary_recall",
               "boundary_f", "f75")
#: The per-frame object counts that :meth:`UoisAccumulator.summarize` sums over frames.
COUNT_KEYS = ("objects_gt", "objects_pred", "objects_f75")

# Above this largest label value the labels are compacted with np.unique instead of a bincount lookup table.
_LUT_MAX_LABEL = 1 << 22


class MetricsError(ValueError):
    """The inputs of a UOIS metric cannot be scored; the message says what to change."""


# ----------------------------------------------------------------------------------------------------------------
# Input checks


def _check_labels(name: str, labels: np.ndarray) -> np.ndarray:
    """``labels`` as a 2-D array of non-negative integers (bool is taken as one object), else MetricsError."""
    a = np.asarray(labels)
    if a.ndim != 2:
        raise MetricsError(f"{name} must be a 2-D label image [H, W], got shape {a.shape}. Convert [N, H, W] "
                           f"masks with labels_from_masks() first.")
    if a.dtype == np.bool_:
        return a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise MetricsError(f"{name} must hold integer instance ids (0 = background), got dtype {a.dtype}. "
                           f"Round or cast the label image to an integer type.")
    if a.size and np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
        raise MetricsError(f"{name} has negative labels (min {a.min()}); use 0 for the background and positive "
                           f"ids for the objects.")
    return a


def _check_thresholds(f_threshold: float, boundary_th: float) -> None:
    if not (isinstance(f_threshold, numbers.Real) and 0.0 <= f_threshold <= 1.0):
        raise MetricsError(f"f_threshold is an F-measure and must be a number in [0, 1], got {f_threshold!r}.")
    if not (isinstance(boundary_th, numbers.Real) and math.isfinite(boundary_th) and boundary_th >= 0.0):
        raise MetricsError(f"boundary_th must be a finite number >= 0 (a fraction of the image diagonal below 1, "
                           f"whole pixels from 1 on), got {boundary_th!r}.")
    if boundary_th >= 1.0 and boundary_th != int(boundary_th):
        raise MetricsError(f"boundary_th >= 1 is a radius in whole pixels, got {boundary_th!r}; give an integer, "
                           f"or a value below 1 for a fraction of the image diagonal.")


def _boundary_radius(boundary_th: float, height: int, width: int) -> int:
    """The boundary tolerance in pixels: ``boundary_th`` itself from 1 on, else ceil(boundary_th * diagonal)."""
    if boundary_th >= 1.0:
        return int(boundary_th)
    return int(math.ceil(boundary_th * math.sqrt(height * height + width * width)))


# ----------------------------------------------------------------------------------------------------------------
# Building blocks


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel ids to 1..K in increasing id order (0 stays background): (int64[H, W], K)."""
    flat = labels.reshape(-1)
    if flat.size == 0:
        return np.zeros(labels.shape, np.int64), 0
    top = int(flat.max())
    if top <= _LUT_MAX_LABEL:
        flat = flat.astype(np.intp, copy=False)
        present = np.bincount(flat, minlength=1) > 0
        present[0] = False
        lut = np.zeros(top + 1, np.int64)
        k = int(present.sum())
        lut[present] = np.arange(1, k + 1)
        return lut[flat].reshape(labels.shape), k
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        inverse = inverse + 1
    k = int(ids.size - (ids[0] == 0))
    return inverse.reshape(labels.shape).astype(np.int64, copy=False), k


def _seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Boundary map (bool[H, W]) of a binary mask (bool[H, W]), the DAVIS ``seg2bmap`` rule.

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour; in the last row it
    is compared to its east neighbour only, in the last column to its south neighbour only, and the bottom-right
    pixel never is. The image border itself is not a boundary.
    """
    b = np.zeros_like(seg, dtype=bool)
    core = seg[:-1, :-1]
    b[:-1, :-1] = (core != seg[:-1, 1:]) | (core != seg[1:, :-1]) | (core != seg[1:, 1:])
    b[-1, :-1] = seg[-1, :-1] != seg[-1, 1:]
    b[:-1, -1] = seg[:-1, -1] != seg[1:, -1]
    return b


def _disk(radius: int) -> np.ndarray:
    """Disk structuring element bool[2r+1, 2r+1]: the offsets (dy, dx) with dy² + dx² <= r² (skimage's ``disk``)."""
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return yy * yy + xx * xx <= radius * radius


@dataclass
class _Patch:
    """A bool image window ``array`` whose pixel (0, 0) sits at image pixel (y0, x0)."""

    y0: int
    x0: int
    array: np.ndarray

    def count_and(self, other: _Patch) -> int:
        """Number of image pixels set in both windows."""
        h, w = self.array.shape
        oh, ow = other.array.shape
        ya, yb = max(self.y0, other.y0), min(self.y0 + h, other.y0 + oh)
        xa, xb = max(self.x0, other.x0), min(self.x0 + w, other.x0 + ow)
        if ya >= yb or xa >= xb:
            return 0
        mine = self.array[ya - self.y0:yb - self.y0, xa - self.x0:xb - self.x0]
        theirs = other.array[ya - other.y0:yb - other.y0, xa - other.x0:xb - other.x0]
        return int(np.count_nonzero(mine & theirs))

    def dilated(self, disk: np.ndarray) -> _Patch:
        """This window grown by the disk's radius on each side and dilated by the disk (outside counts as 0)."""
        r = disk.shape[0] // 2
        if r == 0:
            return self
        padded = np.pad(self.array, r)
        return _Patch(self.y0 - r, self.x0 - r, ndimage.binary_dilation(padded, structure=disk))


def _boundaries(compact: np.ndarray, count: int) -> list[_Patch]:
    """The ``seg2bmap`` boundary of each object 1..count of a compact label image, each on a window around it.

    An object's boundary pixels lie within its bounding box grown by one pixel up and left (the outline is offset
    half a pixel towards the origin); one more row and column below and right (zeros, or the image edge) make
    the window's last-row / last-column rules agree with the whole image's.
    """
    height, width = compact.shape
    out = []
    for k, box in enumerate(ndimage.find_objects(compact, max_label=count), start=1):
        sy, sx = box
        y0, y1 = max(sy.start - 1, 0), min(sy.stop + 1, height)
        x0, x1 = max(sx.start - 1, 0), min(sx.stop + 1, width)
        out.append(_Patch(y0, x0, _seg2bmap(compact[y0:y1, x0:x1] == k)))
    return out


def _empty_frame_metrics(n_gt: int, n_pred: int) -> dict[str, float | int]:
    """The reference's figures for a frame where one side (or both) has no objects."""
    if n_gt == 0 and n_pred == 0:
        precision, recall, f, f75 = 1.0, 1.0, 1.0, 1.0
    elif n_pred == 0:  # all false negatives
        precision, recall, f, f75 = 1.0, 0.0, 0.0, 0.0
    else:  # all false positives
        precision, recall, f, f75 = 0.0, 1.0, 0.0, 0.0
    return {"overlap_precision": precision, "overlap_recall": recall, "overlap_f": f,
            "boundary_precision": precision, "boundary_recall": recall, "boundary_f": f,
            "f75": f75, "objects_gt": n_gt, "objects_pred": n_pred, "objects_f75": 0}


def _harmonic(p: float, r: float) -> float:
    return 2.0 * p * r / (p + r) if p + r > 0 else 0.0


# ----------------------------------------------------------------------------------------------------------------
# Public API


def overlap_boundary_metrics(pred_labels: np.ndarray, gt_labels: np.ndarray, *, f_threshold: float = 0.75,
                             boundary_th: float = 0.003) -> dict[str, float | int]:
    """Overlap and Boundary precision / recall / F-measure and F@.75 of one frame (see the module docstring).

    Args:
        pred_labels (np.ndarray[H, W] integer or bool): predicted instance ids, 0 = background, each other value
            one object (ids need not be contiguous). :func:`labels_from_masks` makes one from a mask stack.
        gt_labels (np.ndarray[H, W] integer or bool): ground-truth instance ids, same convention and size.
        f_threshold (float): an object counts towards F@.75 when its matched overlap F-measure is strictly above.
        boundary_th (float): boundary tolerance; below 1 a fraction of the image diagonal (rounded up to whole
            pixels), from 1 on a radius in whole pixels.

    Returns:
        dict: ``overlap_precision``, ``overlap_recall``, ``overlap_f``, ``boundary_precision``,
        ``boundary_recall``, ``boundary_f``, ``f75`` (float in [0, 1]); ``objects_gt``, ``objects_pred``,
        ``objects_f75`` (int: ground-truth objects, predicted objects, ground-truth objects above f_threshold).

    Raises:
        MetricsError: the images are not 2-D integer label images of one size, hold negative ids, or a threshold
            is out of range.
    """
    _check_thresholds(f_threshold, boundary_th)
    pred = _check_labels("pred_labels", pred_labels)
    gt = _check_labels("gt_labels", gt_labels)
    if pred.shape != gt.shape:
        raise MetricsError(f"pred_labels has shape {pred.shape} but gt_labels has shape {gt.shape}; both label "
                           f"images must have the same size (resize the prediction to the ground truth's size "
                           f"with nearest-neighbour interpolation).")

    gt_c, n_gt = _compact(gt)
    pred_c, n_pred = _compact(pred)
    if n_gt == 0 or n_pred == 0:
        return _empty_frame_metrics(n_gt, n_pred)

    # Pixel counts of every (gt id, pred id) pair, background row/column 0 included, in one pass.
    joint = np.bincount((gt_c * (n_pred + 1) + pred_c).reshape(-1), minlength=(n_gt + 1) * (n_pred + 1))
    joint = joint.reshape(n_gt + 1, n_pred + 1)
    inter = joint[1:, 1:]
    gt_area = joint[1:, :].sum(axis=1)
    pred_area = joint[:, 1:].sum(axis=0)
    # 2PR / (P + R) of a pair, written with counts: exact where it meets the threshold.
    f_pair = 2.0 * inter / (gt_area[:, None] + pred_area[None, :])

    rows, cols = linear_sum_assignment(f_pair, maximize=True)
    objects_f75 = int(np.count_nonzero(f_pair[rows, cols] > f_threshold))

    matched_pixels = int(inter[rows, cols].sum())
    overlap_precision = matched_pixels / int(pred_area.sum())
    overlap_recall = matched_pixels / int(gt_area.sum())

    gt_bounds = _boundaries(gt_c, n_gt)
    pred_bounds = _boundaries(pred_c, n_pred)
    disk = _disk(_boundary_radius(boundary_th, *gt.shape))
    tp_precision = tp_recall = 0
    for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
        tp_precision += pred_bounds[j].count_and(gt_bounds[i].dilated(disk))
        tp_recall += gt_bounds[i].count_and(pred_bounds[j].dilated(disk))
    pred_boundary = sum(int(np.count_nonzero(b.array)) for b in pred_bounds)
    gt_boundary = sum(int(np.count_nonzero(b.array)) for b in gt_bounds)
    # Only an object covering the whole image has no boundary; nothing to find / nothing claimed counts as 1.
    boundary_precision = tp_precision / pred_boundary if pred_boundary else 1.0
    boundary_recall = tp_recall / gt_boundary if gt_boundary else 1.0

    return {
        "overlap_precision": overlap_precision,
        "overlap_recall": overlap_recall,
        "overlap_f": _harmonic(overlap_precision, overlap_recall),
        "boundary_precision": boundary_precision,
        "boundary_recall": boundary_recall,
        "boundary_f": _harmonic(boundary_precision, boundary_recall),
        "f75": objects_f75 / n_gt,
        "objects_gt": n_gt,
        "objects_pred": n_pred,
        "objects_f75": objects_f75,
    }


def labels_from_masks(masks: np.ndarray) -> np.ndarray:
    """One label image from a stack of instance masks, earlier masks winning where they overlap.

    Args:
        masks (np.ndarray[N, H, W] bool, or integer with nonzero = inside): instance masks in descending score /
            priority order.

    Returns:
        np.ndarray[H, W] uint16: 0 = background, ``n + 1`` where ``masks[n]`` is the first mask covering the
        pixel. A mask hidden entirely by earlier ones leaves no id behind.

    Raises:
        MetricsError: ``masks`` is not [N, H, W], holds floats (threshold probabilities first), or N > 65535.
    """
    m = np.asarray(masks)
    if m.ndim != 3:
        raise MetricsError(f"masks must be a stack [N, H, W], got shape {m.shape}; add a leading axis for a "
                           f"single mask (masks[None]).")
    if m.dtype != np.bool_ and not np.issubdtype(m.dtype, np.integer):
        raise MetricsError(f"masks must be bool (or integer 0/1), got dtype {m.dtype}; threshold soft masks first, "
                           f"e.g. masks > 0.5.")
    if m.shape[0] > np.iinfo(np.uint16).max:
        raise MetricsError(f"{m.shape[0]} masks do not fit uint16 ids (at most 65535); keep the top-scoring ones.")
    labels = np.zeros(m.shape[1:], np.uint16)
    for n in range(m.shape[0] - 1, -1, -1):  # paint the lowest priority first; earlier masks overwrite
        labels[m[n] != 0] = n + 1
    return labels


class UoisAccumulator:
    """Per-frame UOIS metrics over a data set, averaged over frames as UOIS-Net reports them.

    Args:
        f_threshold (float): see :func:`overlap_boundary_metrics`.
        boundary_th (float): see :func:`overlap_boundary_metrics`.

    Example::

        acc = UoisAccumulator()
        frame = acc.add(pred_labels, gt_labels)  # this frame's figures
        summary = acc.summarize()  # means over the frames so far, "frames", summed object counts
    """

    def __init__(self, *, f_threshold: float = 0.75, boundary_th: float = 0.003) -> None:
        _check_thresholds(f_threshold, boundary_th)
        self.f_threshold = f_threshold
        self.boundary_th = boundary_th
        self._sums = dict.fromkeys(METRIC_KEYS, 0.0)
        self._counts = dict.fromkeys(COUNT_KEYS, 0)
        self._frames = 0

    def __len__(self) -> int:
        """The number of frames added."""
        return self._frames

    def add(self, pred_labels: np.ndarray, gt_labels: np.ndarray) -> dict[str, float | int]:
        """Score one frame (np.ndarray[H, W] integer label images, 0 = background) and return its figures."""
        frame = overlap_boundary_metrics(pred_labels, gt_labels, f_threshold=self.f_threshold,
                                         boundary_th=self.boundary_th)
        for key in METRIC_KEYS:
            self._sums[key] += float(frame[key])
        for key in COUNT_KEYS:
            self._counts[key] += int(frame[key])
        self._frames += 1
        return frame

    def summarize(self) -> dict[str, float | int]:
        """The mean of each figure in :data:`METRIC_KEYS` over the frames, ``frames``, and the summed counts.

        With no frames added the means are ``nan`` (and the counts 0).
        """
        n = self._frames
        out: dict[str, float | int] = {key: (self._sums[key] / n if n else math.nan) for key in METRIC_KEYS}
        out["frames"] = n
        out.update(self._counts)
        return out
