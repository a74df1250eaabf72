"""Persistent instance identities across frames: a two-stage (ByteTrack-style) tracker on masks, boxes and 3D
centroids (numpy and scipy, no ROS, no torch).

A grasp planner needs the same object to keep the same id from frame to frame, through brief occlusions and camera
motion. :class:`Tracker` gives every detection of a frame the id of the track it continues:

1. **Expire.** A track not seen for more than ``max_age_s`` (measured in the frames' stamps, so a bag replayed at
   any rate behaves the same) is dropped.
2. **Predict.** Each track is moved to the frame's stamp with a constant velocity taken from its last two
   observations (the 2D boxes in pixels/s, the 3D centroid in m/s), over at most ``motion_horizon_s``; the masks
   themselves are the last observation's crops, shifted with their boxes.
3. **Score.** :func:`similarity_matrix` combines visible-mask IoU, amodal-mask IoU (the full shape stays stable
   when the object becomes partly hidden), visible 2D box IoU and 3D centroid proximity into one similarity in
   [0, 1]; a pair whose centroids are both known and farther apart than ``gate_m`` is never matched.
4. **Associate** (Zhang et al., "ByteTrack", ECCV 2022): detections with ``score >= high_score`` are matched to all
   live tracks, then detections with ``low_score <= score < high_score`` to the confirmed tracks still unmatched.
   Each stage is an optimal one-to-one assignment (:func:`assign`, the Hungarian method) over the pairs whose
   similarity reaches ``min_similarity`` (a pair that provably cannot, from its mask areas and box overlap, is not
   given its mask IoUs: the same pairs, at the same similarities, reach the assignment).
5. **Birth and confirmation.** Only an unmatched high-score detection starts a track. A new track is *tentative*: it
   is dropped at its first miss and reports id 0 until it has been matched in ``min_hits`` consecutive frames;
   then it is *confirmed* and receives the next id of a counter that starts at 1 and is never reused (not even
   after :meth:`Tracker.reset`). A confirmed track's id never changes; it survives misses for ``max_age_s``.

So the id a caller sees is either 0 ("not tracked yet": a tentative track, a detection below ``low_score``, a
disabled tracker) or the id of a confirmed track, which is what a grasp planner should act on. Ids are handed out
at confirmation, not at birth, so short-lived false positives do not use up ids and the same sequence replayed at
another frame rate yields the same ids.

Example::

    tracker = Tracker(TrackerConfig())
    for stamp_s, frame in frames:                 # FrameResult per image, stamp in seconds
        ids = tracker.update(stamp_s, frame.instances)   # also sets inst.track_id
        for event in tracker.drain_events():      # e.g. "time went backwards": the tracker restarted
            log.warning(event.message)
    tracker.stats.confirmed, tracker.stats.last_update_ms
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import TrackerConfig
from .matching import Crop, assign, box_iou_matrix, box_overlap, crop_iou, mask_area
from .types import InstanceResult

__all__ = [
    "Tracker",
    "TrackerConfig",
    "TrackerEvent",
    "TrackerStats",
    "assign",
    "box_iou_matrix",
    "similarity_matrix",
]

_NAN3 = np.full(3, np.nan)


@dataclass(frozen=True)
class TrackerEvent:
    """Something the node should log: ``kind`` is ``"reset"`` (all tracks dropped) for now."""

    stamp_s: float
    kind: str
    message: str


@dataclass(frozen=True)
class TrackerStats:
    """Diagnostics after the latest :meth:`Tracker.update`.

    Attributes:
        live (int): tracks held: tentative and confirmed, seen this frame or missing for at most ``max_age_s``.
        confirmed (int): confirmed tracks among ``live``.
        matched (int): confirmed tracks that were matched in the latest frame (ids reported in it).
        ids_issued (int): ids handed out so far (the largest id); ids are never reused.
        id_switches (int): suspected identity switches, counted as tracks confirmed after a *contested birth*: the
            track was born from a high-score detection that could also have continued a confirmed track (similarity
            at least ``min_similarity``) but that track went to another detection in the same frame. One of the two
            detections is the object that track followed; the other now carries a new id (two objects traded
            places, or the detector split one object). Swaps between two existing tracks are not visible without
            ground truth; :mod:`.mot_metrics` measures those.
        resets (int): times all tracks were dropped (:meth:`Tracker.reset`, or a stamp older than the previous).
        frames (int): update calls.
        last_update_ms (float): wall time of the latest update, milliseconds.
    """

    live: int = 0
    confirmed: int = 0
    matched: int = 0
    ids_issued: int = 0
    id_switches: int = 0
    resets: int = 0
    frames: int = 0
    last_update_ms: float = 0.0


# ----------------------------------------------------------------------------------------------------------------
# Geometry of the association


def _centroid_array(values: Sequence[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """(float64[N, 3], known bool[N]) of N centroids: a centroid is unknown when it is None, not finite, or all zeros
    (what the pipeline reports for an instance without depth points)."""
    c = np.array([_NAN3 if v is None else v for v in values], dtype=np.float64).reshape(len(values), 3)
    known = np.isfinite(c).all(axis=1) & (c != 0.0).any(axis=1)
    return c, known


class _Masks:
    """An observation's visible and amodal mask crops, each made bool and counted once, when a pair first needs it
    (:func:`.matching.mask_area`); a track keeps the :class:`_Masks` of the detection it last matched, so its crops
    are not recounted in later frames (a mask array replaced on the instance is counted again)."""

    __slots__ = ("_amodal", "_src", "_visible")

    def __init__(self, inst: InstanceResult) -> None:
        self._src = inst
        self._visible: tuple[np.ndarray, np.ndarray, int] | None = None
        self._amodal: tuple[np.ndarray, np.ndarray, int] | None = None

    def get(self, amodal: bool) -> tuple[np.ndarray, int]:
        """``(crop as bool, area)`` of the amodal or the visible mask."""
        src = self._src.amodal_mask if amodal else self._src.mask
        hit = self._amodal if amodal else self._visible
        if hit is None or hit[0] is not src:
            hit = (src, *mask_area(src))
            if amodal:
                self._amodal = hit
            else:
                self._visible = hit
        return hit[1], hit[2]


class _Geometry:
    """What :func:`similarity_matrix` needs of a list of instances (detections, or the tracks' predictions), gathered
    once per frame: boxes (arrays for the box IoUs), centroids, which instances are unoccluded, their masks
    (:class:`_Masks`) and, once asked for, each mask's :data:`~.matching.Crop` and the areas as an array."""

    __slots__ = ("_boxes", "_crops", "box_a", "box_v", "cent", "known", "masks", "unocc")

    def __init__(self, bboxes: Sequence, amodal_bboxes: Sequence, centroids: Sequence, unoccluded: np.ndarray,
                 masks: list[_Masks]) -> None:
        n = len(masks)
        self.box_v = np.asarray(bboxes, dtype=np.float64).reshape(n, 4)
        self.box_a = np.asarray(amodal_bboxes, dtype=np.float64).reshape(n, 4)
        self.cent, self.known = _centroid_array(centroids)
        self.unocc = unoccluded
        self.masks = masks
        self._crops: dict[bool, tuple[list[Crop], np.ndarray]] = {}
        self._boxes = (bboxes, amodal_bboxes)

    @classmethod
    def of(cls, instances: Sequence[InstanceResult]) -> _Geometry:
        return cls([i.bbox for i in instances], [i.amodal_bbox for i in instances], [i.centroid for i in instances],
                   _unoccluded(instances), [_Masks(i) for i in instances])

    def crops(self, amodal: bool) -> tuple[list[Crop], np.ndarray]:
        """The visible (or amodal) masks' crops, and their areas as float64[N]; made on the first call."""
        hit = self._crops.get(amodal)
        if hit is None:
            crops = [(x, y, x + w, y + h, *m.get(amodal))
                     for (x, y, w, h), m in zip(self._boxes[amodal], self.masks, strict=True)]
            hit = self._crops[amodal] = (crops, np.array([c[5] for c in crops], dtype=np.float64))
        return hit

    def take(self, idx: Sequence[int]) -> _Geometry:
        """The instances at positions ``idx`` (sharing their masks, and the crops made so far)."""
        g = object.__new__(_Geometry)
        rows = np.asarray(idx, dtype=np.intp)
        g.box_v, g.box_a, g.cent, g.known, g.unocc = (a[rows] for a in (self.box_v, self.box_a, self.cent, self.known,
                                                                         self.unocc))
        g.masks = [self.masks[i] for i in idx]
        g._boxes = tuple([b[i] for i in idx] for b in self._boxes)
        g._crops = {k: ([c[i] for i in idx], a[rows]) for k, (c, a) in self._crops.items()}
        return g

    def __len__(self) -> int:
        return len(self.masks)


def similarity_matrix(dets: Sequence[InstanceResult], tracks: Sequence[InstanceResult],
                      config: TrackerConfig) -> np.ndarray:
    """Association similarity float64[D, T] in [0, 1] between detections and (predicted) track observations.

    The weighted mean of visible-mask IoU, amodal-mask IoU (both on the crops, :func:`.matching.crop_iou`),
    visible-box IoU and, when both centroids are known, 3D proximity ``max(0, 1 - distance / gate_m)`` (its weight
    is then left out of the mean, so a frame without depth is scored on the image alone). A pair whose known
    centroids are farther apart than ``gate_m`` scores 0. Mask IoUs are computed only where the boxes overlap.
    """
    if len(dets) == 0 or len(tracks) == 0:
        return np.zeros((len(dets), len(tracks)))
    return _similarity(_Geometry.of(dets), _Geometry.of(tracks), config)


def _similarity(gd: _Geometry, gt: _Geometry, cfg: TrackerConfig, floor: float | None = None) -> np.ndarray:
    """:func:`similarity_matrix` of two :class:`_Geometry`.

    With ``floor`` (the tracker's ``min_similarity``), the mask IoUs of a pair are computed only if its similarity
    may reach ``floor``: a pair that certainly stays below it keeps IoU 0 there, so its similarity is lower than
    :func:`similarity_matrix` gives but still below ``floor``, and every pair that can reach ``floor`` is exact. The
    tracker only compares similarities ``>= min_similarity`` (:func:`.matching.assign` zeroes the rest, contested
    births test the same), so its result is the same. "Certainly" is decided on an upper bound of each mask IoU,
    ``m / (area_d + area_t - m)`` with ``m = min(area_d, area_t, area of the boxes' overlap)`` (the intersection
    exceeds none of the three), put into the same float operations as the similarity (each monotone, so the bound is
    never below it; a 1e-9 margin on top): first with both IoUs bounded, then, for the visible IoU, with the exact
    amodal IoU.
    """
    n_d, n_t = len(gd), len(gt)
    if n_d == 0 or n_t == 0:
        return np.zeros((n_d, n_t))
    inter_v, union_v = box_overlap(gd.box_v, gt.box_v)
    box_v = np.divide(inter_v, union_v, out=np.zeros_like(inter_v), where=union_v > 0)  # box_iou_matrix
    cd, kd = gd.cent, gd.known
    ct, kt = gt.cent, gt.known
    both = kd[:, None] & kt[None, :]
    dist = np.linalg.norm(cd[:, None, :] - ct[None, :, :], axis=2)
    gated = both & (dist > cfg.gate_m)
    proximity = np.where(both, np.clip(1.0 - dist / cfg.gate_m, 0.0, 1.0), 0.0)

    total = cfg.weight_box * box_v + cfg.weight_centroid * proximity
    weights = cfg.weight_visible + cfg.weight_amodal + cfg.weight_box + cfg.weight_centroid * both
    same = np.zeros((n_d, n_t), dtype=bool)  # both unoccluded: visible IoU = amodal IoU, computed once
    cand_a = cand_v = bound_a = bound_v = None
    if cfg.weight_amodal > 0.0:
        inter_a, union_a = box_overlap(gd.box_a, gt.box_a)
        cand_a = (np.divide(inter_a, union_a, out=np.zeros_like(inter_a), where=union_a > 0) > 0.0) & ~gated
        same = gd.unocc[:, None] & gt.unocc[None, :]
    if cfg.weight_visible > 0.0:
        cand_v = (box_v > 0.0) & ~gated & ~same
    if floor is not None:
        ub = total
        if cand_a is not None:
            bound_a = _iou_bound(gd, gt, cand_a, inter_a, amodal=True)
            ub = ub + cfg.weight_amodal * bound_a
        if cand_v is not None:
            bound_v = _iou_bound(gd, gt, cand_v, inter_v, amodal=False)
            if bound_a is not None:
                bound_v[same] = bound_a[same]
            ub = ub + cfg.weight_visible * bound_v
        reach = ub / weights >= floor - 1e-9
        cand_a = cand_a & reach if cand_a is not None else None
        cand_v = cand_v & reach if cand_v is not None else None
    if cand_a is not None:
        iou_a = _mask_ious(gd, gt, cand_a, amodal=True)
        total += cfg.weight_amodal * iou_a
    if cand_v is not None:
        if bound_v is not None and cand_v.any():  # again, with the exact amodal IoU
            ub = np.where(cand_v, bound_v, 0.0)
            if same.any():
                ub[same] = iou_a[same]
            cand_v &= (total + cfg.weight_visible * ub) / weights >= floor - 1e-9
        iou_v = _mask_ious(gd, gt, cand_v, amodal=False)
        if same.any():
            iou_v[same] = iou_a[same]
        total += cfg.weight_visible * iou_v
    sim = total / weights
    sim[gated] = 0.0
    return sim


def _iou_bound(gd: _Geometry, gt: _Geometry, candidates: np.ndarray, box_inter: np.ndarray, *, amodal: bool
               ) -> np.ndarray:
    """float64[D, T]: an upper bound of the mask IoU of each candidate pair, 0 elsewhere (see :func:`_similarity`);
    ``box_inter``: the areas of the boxes' overlaps (:func:`.matching.box_overlap`)."""
    ad, at = gd.crops(amodal)[1][:, None], gt.crops(amodal)[1][None, :]
    m = np.minimum(np.minimum(ad, at), box_inter)
    union = ad + at - m
    return np.divide(m, union, out=np.zeros_like(m), where=candidates & (union > 0))


def _unoccluded(instances: Sequence[InstanceResult]) -> np.ndarray:
    """bool[N]: the visible mask is the whole amodal mask (occlusion 0 and the same box; amodal ⊇ visible)."""
    return np.array([i.occlusion <= 0.0 and tuple(i.bbox) == tuple(i.amodal_bbox) for i in instances], dtype=bool)


def _mask_ious(gd: _Geometry, gt: _Geometry, candidates: np.ndarray, *, amodal: bool) -> np.ndarray:
    """Mask IoU [D, T] for the ``candidates`` pairs (0 elsewhere)."""
    out = np.zeros(candidates.shape)
    rows, cols = np.nonzero(candidates)
    if rows.size:
        cd, ct = gd.crops(amodal)[0], gt.crops(amodal)[0]
        for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
            out[i, j] = crop_iou(cd[i], ct[j])
    return out


# ----------------------------------------------------------------------------------------------------------------
# Tracker


@dataclass(eq=False)
class _Track:
    serial: int  # birth order, for deterministic id allocation
    obs: InstanceResult  # last matched detection
    centroid: np.ndarray | None  # its centroid, None when unknown
    stamp: float  # its stamp, seconds
    hits: int = 1  # matched frames (consecutive while tentative)
    track_id: int = 0  # 0 while tentative
    vel_px: tuple[float, float] = (0.0, 0.0)  # amodal box center motion, pixels/s
    vel_m: np.ndarray | None = None  # centroid motion, m/s; None when unknown
    contested: bool = False  # born beside a confirmed track that went to another detection
    masks: _Masks | None = None  # obs's masks, counted once (None: made on first use)

    def observe(self, inst: InstanceResult, centroid: np.ndarray | None, stamp: float,
                masks: _Masks | None = None) -> None:
        dt = stamp - self.stamp
        if dt > 0.0:
            (x0, y0, w0, h0), (x1, y1, w1, h1) = self.obs.amodal_bbox, inst.amodal_bbox
            self.vel_px = ((x1 + w1 / 2 - x0 - w0 / 2) / dt, (y1 + h1 / 2 - y0 - h0 / 2) / dt)
            known = centroid is not None and self.centroid is not None
            self.vel_m = (centroid - self.centroid) / dt if known else None
        self.obs, self.centroid, self.stamp, self.masks = inst, centroid, stamp, masks
        self.hits += 1

    def _motion(self, stamp: float, horizon_s: float) -> tuple[int, int, float, bool]:
        h = min(max(stamp - self.stamp, 0.0), horizon_s)
        dx, dy = round(self.vel_px[0] * h), round(self.vel_px[1] * h)
        return dx, dy, h, self.vel_m is not None and h > 0.0


def _predictions(tracks: Sequence[_Track], stamp: float, horizon_s: float) -> _Geometry:
    """The :class:`_Geometry` of the tracks' last observations moved to ``stamp`` at constant velocity (boxes rounded to
    whole pixels, centroids along their 3D velocity; :meth:`_Track._motion`), without copying the observations; the
    masks are the tracks' own crops (:attr:`_Track.masks`), unmoved, as the boxes carry them."""
    boxes, amodal_boxes, cents, masks = [], [], [], []
    for t in tracks:
        o = t.obs
        dx, dy, h, moves_3d = t._motion(stamp, horizon_s)
        if dx or dy or moves_3d:
            box = (o.bbox[0] + dx, o.bbox[1] + dy, o.bbox[2], o.bbox[3])
            abox = (o.amodal_bbox[0] + dx, o.amodal_bbox[1] + dy, o.amodal_bbox[2], o.amodal_bbox[3])
        else:
            box, abox = o.bbox, o.amodal_bbox
        boxes.append(box)
        amodal_boxes.append(abox)
        cents.append(t.centroid + t.vel_m * h if moves_3d else o.centroid)
        if t.masks is None:
            t.masks = _Masks(o)
        masks.append(t.masks)
    # both boxes move together: unoccluded as the observation is
    return _Geometry(boxes, amodal_boxes, cents, _unoccluded([t.obs for t in tracks]), masks)


class Tracker:
    """Gives the detections of successive frames persistent ids (see the module docstring for the algorithm).

    Not thread-safe: call :meth:`update` from one thread (the node's frame callback).
    """

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = TrackerConfig() if config is None else config
        self._tracks: list[_Track] = []
        self._next_id = 1  # uint64 in the message; never reset
        self._next_serial = 0
        self._last_stamp: float | None = None
        self._events: deque[TrackerEvent] = deque(maxlen=32)
        self._stats = TrackerStats()

    # ------------------------------------------------------------------ public API
    @property
    def stats(self) -> TrackerStats:
        return self._stats

    def reconfigure(self, config: TrackerConfig) -> None:
        """Use ``config`` from the next update on; live tracks and ids are kept (turning ``enabled`` off drops them)."""
        self.config = config

    def reset(self, reason: str, stamp_s: float | None = None) -> None:
        """Drop every track (a time-base reset: a looping bag, a restarted camera). Ids already issued are not
        reused. Records a ``"reset"`` event with ``reason``."""
        self._tracks.clear()
        self._last_stamp = None
        self._stats = dataclasses.replace(self._stats, live=0, confirmed=0, matched=0,
                                          resets=self._stats.resets + 1)
        stamp = float("nan") if stamp_s is None else float(stamp_s)
        self._events.append(TrackerEvent(stamp, "reset", f"Tracker reset, all tracks dropped: {reason}."))

    def drain_events(self) -> list[TrackerEvent]:
        """The events recorded since the previous call (oldest first; at most the latest 32 are kept)."""
        out = list(self._events)
        self._events.clear()
        return out

    def update(self, stamp_s: float, instances: Sequence[InstanceResult]) -> list[int]:
        """Associate one frame's detections with the tracks and return one id per instance, in order.

        Args:
            stamp_s: the frame's stamp in seconds (the image header stamp; any monotonic time base). A stamp older
                than the previous frame's resets the tracker first (an event is recorded, see
                :meth:`drain_events`); an equal stamp is processed as a new frame.
            instances: the frame's detections (``score``, ``bbox``/``mask``, ``amodal_bbox``/``amodal_mask``,
                ``centroid`` in meters or zeros/NaN when unknown).

        Returns:
            list[int]: per instance, the id of the confirmed track it continues, or 0 (tentative track, score below
            ``low_score``, tracker disabled). Each instance's ``track_id`` is set to the same value.

        Raises:
            ValueError: ``stamp_s`` is not a finite number.
        """
        t0 = time.perf_counter()
        stamp = float(stamp_s)
        if not math.isfinite(stamp):
            raise ValueError(f"stamp_s must be a finite number of seconds, got {stamp_s!r}.")
        if self._last_stamp is not None and stamp < self._last_stamp:
            self.reset(f"time went backwards from {self._last_stamp:.3f} s to {stamp:.3f} s (a looping bag or a "
                       f"restarted camera)", stamp)
        self._last_stamp = stamp
        ids = [0] * len(instances)
        if self.config.enabled:
            self._associate(stamp, instances, ids)
        else:
            self._tracks.clear()
        for inst, tid in zip(instances, ids, strict=True):
            inst.track_id = tid
        confirmed = sum(1 for t in self._tracks if t.track_id)
        self._stats = dataclasses.replace(
            self._stats, live=len(self._tracks), confirmed=confirmed, matched=sum(1 for i in ids if i),
            ids_issued=self._next_id - 1, frames=self._stats.frames + 1,
            last_update_ms=(time.perf_counter() - t0) * 1e3,
        )
        return ids

    # ------------------------------------------------------------------ one frame
    def _associate(self, stamp: float, instances: Sequence[InstanceResult], ids: list[int]) -> None:
        cfg = self.config
        self._tracks = [t for t in self._tracks if stamp - t.stamp <= cfg.max_age_s]
        tracks = self._tracks
        # deterministic order: descending score, then input position
        order = sorted(range(len(instances)), key=lambda i: (-instances[i].score, i))
        high = [i for i in order if instances[i].score >= cfg.high_score]
        low = [i for i in order if cfg.low_score <= instances[i].score < cfg.high_score]
        dets = _Geometry.of(instances)
        preds = _predictions(tracks, stamp, cfg.motion_horizon_s)
        known = dets.known.tolist()
        centroid = [dets.cent[i] if known[i] else None for i in range(len(instances))]

        # stage 1: high-score detections against every live track (pairs certainly below min_similarity are left
        # below it without their mask IoUs: the same assignment, see _similarity)
        sim1 = _similarity(dets.take(high), preds, cfg, floor=cfg.min_similarity)
        pairs1 = assign(sim1, cfg.min_similarity)
        matched: dict[int, int] = {high[r]: c for r, c in pairs1}  # instance position -> track position
        # stage 2: low-score detections against the confirmed tracks still unmatched
        rest = [j for j in range(len(tracks)) if tracks[j].track_id and j not in matched.values()]
        sim2 = _similarity(dets.take(low), preds.take(rest), cfg, floor=cfg.min_similarity)
        for r, c in assign(sim2, cfg.min_similarity):
            matched[low[r]] = rest[c]

        for i, j in matched.items():
            tracks[j].observe(instances[i], centroid[i], stamp, dets.masks[i])
        taken = set(matched.values())
        survivors = [t for j, t in enumerate(tracks) if j in taken or t.track_id]  # a tentative track dies at a miss
        # births: unmatched high-score detections; contested when a confirmed track they match went elsewhere
        stage1_taken = {c for _, c in pairs1}
        births = []
        for r, i in enumerate(high):
            if i in matched:
                continue
            contested = any(tracks[j].track_id and j in stage1_taken and sim1[r, j] >= cfg.min_similarity
                            for j in range(len(tracks)))
            births.append((i, _Track(self._next_serial, instances[i], centroid[i], stamp, contested=contested,
                                     masks=dets.masks[i])))
            self._next_serial += 1
        self._tracks = survivors + [t for _, t in births]
        for t in self._tracks:  # confirmation in birth order, so ids follow the order objects appeared
            if not t.track_id and t.hits >= cfg.min_hits:
                t.track_id = self._next_id
                self._next_id += 1
                if t.contested:
                    self._stats = dataclasses.replace(self._stats, id_switches=self._stats.id_switches + 1)
        for i, j in matched.items():
            ids[i] = tracks[j].track_id
        for i, t in births:
            ids[i] = t.track_id
