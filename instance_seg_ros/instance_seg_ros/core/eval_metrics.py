"""Per-frame scoring of predictions against ground truth, accumulated over a sequence (no ROS).

:class:`FrameScorer` takes one ``(prediction, ground truth)`` pair of :class:`~.types.FrameResult` at a time and
gives, in :meth:`FrameScorer.summarize`:

- ``coco``: COCO mask AP, AP50, AP75 ... of the visible and of the amodal masks, from
  :class:`~.coco_eval.AmodalCocoEvaluator` (pycocotools ``COCOeval``, class-agnostic), with its
  ``occlusion_mae`` (|predicted - true| hidden fraction over COCO's matches at visible IoU >= 0.5);
- ``pr_curves``: COCOeval's interpolated precision at its 101 recall points (area ``all``, the largest
  ``maxDets``), for IoU 0.5, 0.75 and the mean over 0.5:0.95, visible and amodal;
- ``matching``: greedy one-to-one matching (:func:`~.matching.match_instances`, descending score, visible-mask
  IoU >= ``iou_threshold``): matched, recall, precision, mean IoU of the matches and the mean IoU of their amodal
  masks (``mean_amodal_iou``), unmatched predictions per frame;
- ``occlusion``: over the matches, the mean absolute error of the occluded fraction, the accuracy of
  ``is_occluded`` against the ground truth's own flag, and both per ground-truth occlusion level (bins of 0.1);
- ``centroid_error_mm``: |predicted - true centroid| in millimetres over the matches where both centroids are
  known (a centroid of exactly (0, 0, 0) means "no points", the :class:`~.types.InstanceResult` convention);
- ``cloud_precision``: over the matches where both clouds have points, the share of the predicted points that lie
  on the ground-truth object, i.e. within ``cloud_tolerance`` meters of its nearest ground-truth point
  (``mean`` over instances and ``pointwise`` over all points pooled). Points from the background or another
  object behind a mask edge (flying pixels, bleeding masks) are the ones that fail.

Example::

    scorer = FrameScorer(iou_threshold=0.5, cloud_tolerance=0.01)
    for pred, gt in pairs:
        scorer.add(pred, gt, stamp_ns=stamp)
    metrics = scorer.summarize()
    metrics["coco"]["mask_ap50"], metrics["centroid_error_mm"]["mean"]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .coco_eval import AmodalCocoEvaluator
from .matching import crop_iou_matrix, match_instances
from .types import FrameResult

__all__ = ["OCCLUSION_BINS", "FrameScorer", "ScoreError", "distribution"]

#: Edges of the ground-truth occlusion levels of the per-level figures (the last bin includes 1.0).
OCCLUSION_BINS = tuple(round(0.1 * i, 1) for i in range(11))


class ScoreError(ValueError):
    """A prediction and its ground truth cannot be compared; the message says why."""


def distribution(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """``{"count", "mean", "p50", "p90", "p99", "max"}`` of a list of numbers (NaNs ignored; ``nan`` when empty).

    Percentiles use linear interpolation (numpy's default).
    """
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"count": 0, "mean": math.nan, "p50": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"count": int(a.size), "mean": float(a.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(a.max())}


class _RecordingEvaluator(AmodalCocoEvaluator):
    """AmodalCocoEvaluator that keeps its COCOeval objects (for the precision arrays behind the PR curves)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cocoevals: dict[str, Any] = {}

    def _evaluate(self, kind: str):
        ev, stats = super()._evaluate(kind)
        self.cocoevals[kind] = ev
        return ev, stats


def _known_centroid(c: np.ndarray) -> bool:
    c = np.asarray(c, dtype=np.float64)
    return bool(np.all(np.isfinite(c)) and np.any(c != 0))


def _on_object_share(points: np.ndarray, gt_points: np.ndarray, tolerance: float) -> tuple[int, int]:
    """``(points within tolerance of the nearest GT point, all points)`` with finite coordinates."""
    import open3d as o3d

    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    g = np.asarray(gt_points, dtype=np.float64).reshape(-1, 3)
    p = p[np.all(np.isfinite(p), axis=1)]
    g = g[np.all(np.isfinite(g), axis=1)]
    if p.shape[0] == 0 or g.shape[0] == 0:
        return 0, 0
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
    gc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(g))
    d = np.asarray(pc.compute_point_cloud_distance(gc))
    return int(np.count_nonzero(d <= tolerance)), int(p.shape[0])


class FrameScorer:
    """Accumulate the metrics of the module docstring over frames.

    Args:
        iou_threshold: visible-mask IoU at which a prediction matches a ground-truth object (0 < t <= 1).
        cloud_tolerance: meters; a predicted point within this distance of its ground-truth object's cloud
            counts as on the object (> 0).
        max_dets: detections per frame COCO considers (its 100).

    Raises:
        ScoreError: an out-of-range argument.
    """

    def __init__(self, *, iou_threshold: float = 0.5, cloud_tolerance: float = 0.01, max_dets: int = 100) -> None:
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ScoreError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}.")
        if not (math.isfinite(float(cloud_tolerance)) and cloud_tolerance > 0):
            raise ScoreError(f"cloud_tolerance must be a positive number of meters, got {cloud_tolerance!r}.")
        if int(max_dets) < 1:
            raise ScoreError(f"max_dets must be >= 1, got {max_dets!r}.")
        self.iou_threshold = float(iou_threshold)
        self.cloud_tolerance = float(cloud_tolerance)
        self._coco = _RecordingEvaluator(2, class_agnostic=True, max_dets=int(max_dets))
        self.frames: list[dict[str, Any]] = []
        self._num_gt = 0
        self._num_pred = 0
        self._ious: list[float] = []
        self._amodal_ious: list[float] = []
        self._occ_err: list[float] = []
        self._occ_gt: list[float] = []
        self._occ_flag_ok: list[bool] = []
        self._centroid_mm: list[float] = []
        self._cloud_shares: list[float] = []
        self._cloud_on = 0
        self._cloud_all = 0

    def __len__(self) -> int:
        return len(self.frames)

    def add(self, pred: FrameResult, gt: FrameResult, *, stamp_ns: int | None = None) -> dict[str, Any]:
        """Score one frame.

        Args:
            pred: the predictions (instances with full-image geometry given by ``bbox`` + ``mask`` crops).
            gt: the ground truth of the same image (same ``width`` x ``height``); its instances' ``score`` is
                ignored, ``occlusion``, ``is_occluded``, ``centroid`` and ``points`` are the true values.
            stamp_ns: the frame's stamp, kept in the per-frame record.

        Returns:
            The frame's record: ``{"image_id", "stamp_ns", "gt", "pred", "matched", "unmatched", "mean_iou"}``.

        Raises:
            ScoreError: the two results describe images of different sizes.
        """
        if (pred.width, pred.height) != (gt.width, gt.height):
            raise ScoreError(f"the prediction is {pred.width}x{pred.height} but its ground truth is "
                             f"{gt.width}x{gt.height}; both must describe the same image.")
        image_id = len(self.frames) + 1
        h, w = int(gt.height), int(gt.width)
        g = len(gt.instances)
        vis = np.zeros((g, h, w), bool)
        amo = np.zeros((g, h, w), bool)
        for i, inst in enumerate(gt.instances):
            vis[i] = inst.full_mask(h, w)
            amo[i] = inst.full_mask(h, w, amodal=True)
        self._coco.add_ground_truth(image_id, masks=vis, amodal_masks=amo,
                                    occlusion=[float(inst.occlusion) for inst in gt.instances])
        self._coco.add_frame_result(image_id, pred)
        self._num_gt += g
        self._num_pred += len(pred.instances)

        matches = match_instances(pred, gt, iou_threshold=self.iou_threshold)
        for m in matches:
            p, t = pred.instances[m.pred], gt.instances[m.gt]
            self._ious.append(m.iou)
            self._amodal_ious.append(float(crop_iou_matrix([p], [t], amodal=True)[0, 0]))
            self._occ_err.append(abs(float(p.occlusion) - float(t.occlusion)))
            self._occ_gt.append(float(t.occlusion))
            self._occ_flag_ok.append(bool(p.is_occluded) == bool(t.is_occluded))
            if _known_centroid(p.centroid) and _known_centroid(t.centroid):
                d = np.asarray(p.centroid, np.float64) - np.asarray(t.centroid, np.float64)
                self._centroid_mm.append(float(np.linalg.norm(d)) * 1e3)
            on, n = _on_object_share(p.points, t.points, self.cloud_tolerance)
            if n:
                self._cloud_shares.append(on / n)
                self._cloud_on += on
                self._cloud_all += n
        record = {"image_id": image_id, "stamp_ns": None if stamp_ns is None else int(stamp_ns), "gt": g,
                  "pred": len(pred.instances), "matched": len(matches),
                  "unmatched": len(pred.instances) - len(matches),
                  "mean_iou": float(np.mean([m.iou for m in matches])) if matches else None}
        self.frames.append(record)
        return record

    # ------------------------------------------------------------------ summary
    def _pr_curves(self) -> dict[str, Any]:
        out: dict[str, Any] = {"recall": [round(float(r), 2) for r in np.linspace(0.0, 1.0, 101)]}
        for kind, ev in self._coco.cocoevals.items():
            if ev is None or "precision" not in getattr(ev, "eval", {}):
                out[kind] = None
                continue
            prec = np.asarray(ev.eval["precision"], dtype=np.float64)  # [T, R, K, A, M]
            a = list(ev.params.areaRngLbl).index("all")
            p = prec[:, :, :, a, -1]  # [T, R, K]
            p = np.where(p < 0, np.nan, p)
            with warnings.catch_warnings():  # all-NaN columns (no ground truth) stay NaN, silently
                warnings.simplefilter("ignore", RuntimeWarning)
                per_t = np.nanmean(p, axis=2)  # [T, R], over categories
                mean = np.nanmean(per_t, axis=0)
            thr = np.asarray(ev.params.iouThrs)
            t50, t75 = int(np.argmin(np.abs(thr - 0.5))), int(np.argmin(np.abs(thr - 0.75)))
            out[kind] = {"iou50": _clean_list(per_t[t50]), "iou75": _clean_list(per_t[t75]),
                         "mean": _clean_list(mean)}
        return out

    def summarize(self) -> dict[str, Any]:
        """All metrics so far (see the module docstring); ``nan`` where there is nothing to measure."""
        coco = self._coco.summarize()
        n_match = len(self._ious)
        occ_err = np.asarray(self._occ_err)
        occ_gt = np.asarray(self._occ_gt)
        flags = np.asarray(self._occ_flag_ok, dtype=bool)
        levels = []
        edges = OCCLUSION_BINS
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            sel = (occ_gt >= lo) & ((occ_gt < hi) if hi < 1.0 else (occ_gt <= hi))
            k = int(sel.sum())
            levels.append({"low": lo, "high": hi, "count": k,
                           "mae": float(occ_err[sel].mean()) if k else math.nan,
                           "is_occluded_accuracy": float(flags[sel].mean()) if k else math.nan})
        return {
            "frames": len(self.frames),
            "coco": coco,
            "pr_curves": self._pr_curves(),
            "matching": {
                "iou_threshold": self.iou_threshold,
                "num_gt": self._num_gt,
                "num_pred": self._num_pred,
                "matched": n_match,
                "recall": n_match / self._num_gt if self._num_gt else math.nan,
                "precision": n_match / self._num_pred if self._num_pred else math.nan,
                "mean_iou": float(np.mean(self._ious)) if n_match else math.nan,
                "mean_amodal_iou": float(np.mean(self._amodal_ious)) if n_match else math.nan,
                "unmatched": self._num_pred - n_match,
                "unmatched_per_frame": (self._num_pred - n_match) / len(self.frames) if self.frames else math.nan,
            },
            "occlusion": {
                "mae_coco": coco["occlusion_mae"],
                "mae": float(occ_err.mean()) if n_match else math.nan,
                "is_occluded_accuracy": float(flags.mean()) if n_match else math.nan,
                "matched": n_match,
                "by_level": levels,
            },
            "centroid_error_mm": distribution(self._centroid_mm),
            "cloud_precision": {
                "tolerance_m": self.cloud_tolerance,
                "instances": len(self._cloud_shares),
                "mean": float(np.mean(self._cloud_shares)) if self._cloud_shares else math.nan,
                "pointwise": self._cloud_on / self._cloud_all if self._cloud_all else math.nan,
                "points": self._cloud_all,
            },
        }


def _clean_list(a: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else round(float(v), 6) for v in np.asarray(a, dtype=np.float64)]
