"""Multi-object tracking metrics: CLEAR MOT (MOTA, MOTP, ID switches) and the identity measures IDP/IDR/IDF1
(numpy and scipy, no ROS).

Each frame gives ground-truth objects with their persistent ids and the tracker's outputs with their track ids, and
an IoU matrix between them (masks through :func:`.matching.crop_iou_matrix`, or boxes through
:func:`.tracking.box_iou_matrix`). A ground-truth object and a prediction *overlap* when their IoU is at least
``iou_threshold`` (0.5).

**CLEAR MOT** (K. Bernardin and R. Stiefelhagen, "Evaluating Multiple Object Tracking Performance: The CLEAR MOT
Metrics", EURASIP J. Image and Video Processing, 2008), per frame ``t``:

1. Every correspondence ``(g, h)`` made earlier (the last prediction id each ground-truth id was matched to) is
   kept if both are present in frame ``t`` and still overlap.
2. The remaining ground-truth objects and predictions are matched one-to-one by the Hungarian method maximising
   the summed IoU over overlapping pairs.
3. A match ``(g, h)`` of step 2 whose ground-truth id ``g`` was last matched to another prediction id is an
   **ID switch** (mismatch, ``mme``). Unmatched ground truth are **misses** (``m``), unmatched predictions **false
   positives** (``fp``).

Then ``MOTA = 1 - Σ(m + fp + mme) / Σ g_t`` (``g_t`` the ground-truth objects in frame ``t``; it can be negative)
and ``MOTP = Σ IoU of matches / Σ matches`` (the overlap form of MOTP, as in the MOTChallenge; higher is better).

**Identity measures** (E. Ristani, F. Solera, R. Zou, R. Cucchiara and C. Tomasi, "Performance Measures and a Data
Set for Multi-Target, Multi-Camera Tracking", ECCV 2016 workshops): every ground-truth trajectory is paired with at
most one predicted trajectory, once for the whole sequence, by the Hungarian method maximising the number of frames
in which the pair overlaps. ``IDTP`` is that number, ``IDFN = Σ g_t - IDTP`` and ``IDFP = Σ p_t - IDTP`` (``p_t``
the predictions in frame ``t``); ``IDP = IDTP / (IDTP + IDFP)``, ``IDR = IDTP / (IDTP + IDFN)`` and
``IDF1 = 2 IDTP / (2 IDTP + IDFP + IDFN)``.

**Identity on detected objects** (``idf1_detected``, ours): IDF1 with the detector's own errors taken out, to
show what the tracker does with what it is given. Only the ground-truth object-frames that some detection overlaps
(tracked or not: a detection the tracker has not confirmed yet still counts against the tracker) and the tracked
predictions that overlap some ground-truth object are counted: ``2 IDTP / (Σ detected g_t + Σ p_t on ground
truth)``. The same IDTP; a detector miss or a false positive no longer lowers it, an unconfirmed track or a track
that changes objects still does.

Predictions with track id 0 are not tracks (the tracker reports 0 for detections it has not confirmed) and are
left out by :meth:`MotAccumulator.add_instances`; pass them with ids of their own through :meth:`MotAccumulator.add`
to count them.

Example::

    acc = MotAccumulator()
    for gt_frame, gt_ids, pred_frame in sequence:       # pred instances carry track_id from the Tracker
        acc.add_instances(gt_frame.instances, gt_ids, pred_frame.instances)
    m = acc.compute()
    m.mota, m.idf1, m.id_switches
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from .matching import assign, box_iou_matrix, crop_iou_matrix
from .types import InstanceResult

__all__ = ["MotAccumulator", "MotMetrics"]


@dataclass(frozen=True)
class MotMetrics:
    """Tracking figures of a sequence (see the module docstring for the definitions).

    Ratios are NaN when undefined (MOTA, ID switches per 100 and IDR without ground truth, MOTP without matches, IDP
    without predictions, IDF1 with neither).
    """

    frames: int
    gt_objects: int  # Σ g_t: ground-truth object-frames
    gt_ids: int  # distinct ground-truth identities
    predictions: int  # Σ p_t: predicted object-frames
    pred_ids: int  # distinct predicted track ids
    matches: int  # CLEAR MOT matched pairs (true positives)
    misses: int  # false negatives
    false_positives: int
    id_switches: int
    id_switches_per_100: float  # ID switches per 100 ground-truth object-frames
    mota: float
    motp: float  # mean IoU of the matches
    idtp: int
    idfp: int
    idfn: int
    idp: float
    idr: float
    idf1: float
    gt_detected: int  # ground-truth object-frames that some prediction overlaps, tracked or not (id 0)
    predictions_on_gt: int  # predictions (tracked) that overlap some ground-truth object
    idf1_detected: float  # IDF1 over those only: 2 IDTP / (gt_detected + predictions_on_gt)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


class MotAccumulator:
    """Collects frames of a sequence and computes :class:`MotMetrics` (see the module docstring).

    Args:
        iou_threshold: a ground-truth object and a prediction overlap (may match) when IoU ≥ this, in (0, 1].
    """

    def __init__(self, *, iou_threshold: float = 0.5) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}.")
        self.iou_threshold = float(iou_threshold)
        self._last_match: dict[int, int] = {}  # gt id -> prediction id it was last matched to
        self._overlaps: Counter[tuple[int, int]] = Counter()  # (gt id, pred id) -> frames they overlap
        self._gt_ids: set[int] = set()
        self._pred_ids: set[int] = set()
        self._frames = self._gt = self._pred = 0
        self._gt_det = self._pred_on_gt = 0
        self._matches = self._switches = 0
        self._iou_sum = 0.0

    def add(self, gt_ids: Sequence[int], pred_ids: Sequence[int], iou: np.ndarray, *,
            detected: Sequence[bool] | None = None) -> list[tuple[int, int]]:
        """Add one frame.

        Args:
            gt_ids: the persistent id of each ground-truth object in the frame (unique within the frame).
            pred_ids: the track id of each prediction (unique within the frame).
            iou (np.ndarray[G, P] float): IoU between ground-truth object ``i`` and prediction ``j``.
            detected: per ground-truth object, whether any detection overlaps it, untracked ones (id 0)
                included (for ``idf1_detected``); None: whether one of the predictions given does.

        Returns:
            list[tuple[int, int]]: the frame's CLEAR MOT matches as (gt id, pred id).

        Raises:
            ValueError: duplicate ids in the frame, or ``iou`` not of shape [G, P].
        """
        gt_ids = [int(g) for g in gt_ids]
        pred_ids = [int(p) for p in pred_ids]
        for name, ids in (("gt_ids", gt_ids), ("pred_ids", pred_ids)):
            if len(set(ids)) != len(ids):
                raise ValueError(f"{name} must be unique within a frame, got {ids}.")
        iou = np.asarray(iou, dtype=np.float64)
        if iou.size == 0 and (not gt_ids or not pred_ids):
            iou = np.zeros((len(gt_ids), len(pred_ids)))
        if iou.shape != (len(gt_ids), len(pred_ids)):
            raise ValueError(f"iou must have shape [G, P] = [{len(gt_ids)}, {len(pred_ids)}], got {list(iou.shape)}.")
        ok = iou >= self.iou_threshold

        self._frames += 1
        self._gt += len(gt_ids)
        self._pred += len(pred_ids)
        self._gt_ids.update(gt_ids)
        self._pred_ids.update(pred_ids)
        det = ok.any(axis=1) if detected is None else np.asarray(detected, bool) | ok.any(axis=1)
        if det.shape != (len(gt_ids),):
            raise ValueError(f"detected must give one flag per ground-truth object ({len(gt_ids)}), got {det.shape}.")
        self._gt_det += int(det.sum())
        self._pred_on_gt += int(ok.any(axis=0).sum())
        for gi, pj in zip(*np.nonzero(ok), strict=True):
            self._overlaps[gt_ids[gi], pred_ids[pj]] += 1

        # 1. keep the earlier correspondences that still overlap (a prediction once; the higher IoU first)
        col_of = {p: j for j, p in enumerate(pred_ids)}
        earlier = [(i, col_of[self._last_match[g]]) for i, g in enumerate(gt_ids)
                   if self._last_match.get(g) in col_of]
        pairs: list[tuple[int, int]] = []
        for i, j in sorted(earlier, key=lambda ij: -iou[ij]):
            if ok[i, j] and all(j != jj for _, jj in pairs):
                pairs.append((i, j))
        # 2. Hungarian on the rest; 3. a new pair that contradicts the last correspondence is a switch
        kept_g, kept_p = {i for i, _ in pairs}, {j for _, j in pairs}
        free_g = np.array([i for i in range(len(gt_ids)) if i not in kept_g], dtype=np.int64)
        free_p = np.array([j for j in range(len(pred_ids)) if j not in kept_p], dtype=np.int64)
        for r, c in assign(iou[np.ix_(free_g, free_p)], self.iou_threshold):
            i, j = int(free_g[r]), int(free_p[c])
            if self._last_match.get(gt_ids[i], pred_ids[j]) != pred_ids[j]:
                self._switches += 1
            pairs.append((i, j))
        for i, j in pairs:
            self._last_match[gt_ids[i]] = pred_ids[j]
            self._iou_sum += float(iou[i, j])
        self._matches += len(pairs)
        return [(gt_ids[i], pred_ids[j]) for i, j in pairs]

    def add_instances(self, gt: Sequence[InstanceResult], gt_ids: Sequence[int] | None,
                      pred: Sequence[InstanceResult], *, amodal: bool = False) -> list[tuple[int, int]]:
        """Add one frame of instances, matched on the visible (or ``amodal``) mask IoU of their crops.

        ``gt_ids`` are the ground-truth identities (None: each ground-truth instance's ``track_id``); the predictions'
        ids are their ``track_id`` and predictions with ``track_id == 0`` are left out.
        """
        ids = [g.track_id for g in gt] if gt_ids is None else list(gt_ids)
        if len(ids) != len(gt):
            raise ValueError(f"gt_ids must give one id per ground-truth instance: {len(ids)} ids, {len(gt)} "
                             f"instances.")
        iou = crop_iou_matrix(list(gt), list(pred), amodal=amodal)
        tracked = np.array([bool(p.track_id) for p in pred], bool)
        return self.add(ids, [p.track_id for p in pred if p.track_id], iou[:, tracked],
                        detected=(iou >= self.iou_threshold).any(axis=1))

    def add_boxes(self, gt_ids: Sequence[int], gt_boxes: np.ndarray, pred_ids: Sequence[int],
                  pred_boxes: np.ndarray) -> list[tuple[int, int]]:
        """Add one frame of boxes ``(x, y, w, h)`` ([G, 4] and [P, 4]), matched on box IoU."""
        return self.add(gt_ids, pred_ids, box_iou_matrix(gt_boxes, pred_boxes))

    def compute(self) -> MotMetrics:
        """The figures over every frame added so far."""
        idtp = 0
        if self._overlaps:
            gts = sorted(self._gt_ids)
            preds = sorted(self._pred_ids)
            gi = {g: k for k, g in enumerate(gts)}
            pj = {p: k for k, p in enumerate(preds)}
            together = np.zeros((len(gts), len(preds)))
            for (g, p), n in self._overlaps.items():
                together[gi[g], pj[p]] = n
            rows, cols = linear_sum_assignment(together, maximize=True)
            idtp = int(together[rows, cols].sum())
        idfn, idfp = self._gt - idtp, self._pred - idtp
        misses = self._gt - self._matches
        fps = self._pred - self._matches
        return MotMetrics(
            frames=self._frames,
            gt_objects=self._gt,
            gt_ids=len(self._gt_ids),
            predictions=self._pred,
            pred_ids=len(self._pred_ids),
            matches=self._matches,
            misses=misses,
            false_positives=fps,
            id_switches=self._switches,
            id_switches_per_100=_ratio(100.0 * self._switches, self._gt),
            mota=1.0 - _ratio(misses + fps + self._switches, self._gt) if self._gt else math.nan,
            motp=_ratio(self._iou_sum, self._matches),
            idtp=idtp,
            idfp=idfp,
            idfn=idfn,
            idp=_ratio(idtp, idtp + idfp),
            idr=_ratio(idtp, idtp + idfn),
            idf1=_ratio(2 * idtp, 2 * idtp + idfp + idfn),
            gt_detected=self._gt_det,
            predictions_on_gt=self._pred_on_gt,
            idf1_detected=_ratio(2 * idtp, self._gt_det + self._pred_on_gt),
        )
