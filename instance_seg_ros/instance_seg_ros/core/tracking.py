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
   similarity reaches ``min_similarity``.
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

import copy
import dataclasses
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import TrackerConfig
from .matching import assign, box_iou_matrix, crop_iou_matrix
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


def _centroids(instances: Sequence[InstanceResult]) -> tuple[np.ndarray, np.ndarray]:
    """(float64[N, 3], known bool[N]): a centroid is unknown when it is None, not finite, or all zeros (what the
    pipeline reports for an instance without depth points)."""
    c = np.array([_NAN3 if inst.centroid is None else inst.centroid for inst in instances], dtype=np.float64)
    c = c.reshape(len(instances), 3)
    known = np.isfinite(c).all(axis=1) & (c != 0.0).any(axis=1)
    return c, known


def similarity_matrix(dets: Sequence[InstanceResult], tracks: Sequence[InstanceResult],
                      config: TrackerConfig) -> np.ndarray:
    """Association similarity float64[D, T] in [0, 1] between detections and (predicted) track observations.

    The weighted mean of visible-mask IoU, amodal-mask IoU (both on the crops, :func:`.matching.crop_iou_matrix`),
    visible-box IoU and, when both centroids are known, 3D proximity ``max(0, 1 - distance / gate_m)`` (its weight
    is then left out of the mean, so a frame without depth is scored on the image alone). A pair whose known
    centroids are farther apart than ``gate_m`` scores 0. Mask IoUs are computed only where the boxes overlap.
    """
    n_d, n_t = len(dets), len(tracks)
    if n_d == 0 or n_t == 0:
        return np.zeros((n_d, n_t))
    cfg = config
    box_v = box_iou_matrix([d.bbox for d in dets], [t.bbox for t in tracks])
    cd, kd = _centroids(dets)
    ct, kt = _centroids(tracks)
    both = kd[:, None] & kt[None, :]
    dist = np.linalg.norm(cd[:, None, :] - ct[None, :, :], axis=2)
    gated = both & (dist > cfg.gate_m)
    proximity = np.where(both, np.clip(1.0 - dist / cfg.gate_m, 0.0, 1.0), 0.0)

    total = cfg.weight_box * box_v + cfg.weight_centroid * proximity
    same = np.zeros((n_d, n_t), dtype=bool)  # both unoccluded: visible IoU = amodal IoU, computed once
    if cfg.weight_amodal > 0.0:
        box_a = box_iou_matrix([d.amodal_bbox for d in dets], [t.amodal_bbox for t in tracks])
        iou_a = _mask_ious(dets, tracks, (box_a > 0.0) & ~gated, amodal=True)
        total += cfg.weight_amodal * iou_a
        same = _unoccluded(dets)[:, None] & _unoccluded(tracks)[None, :]
    if cfg.weight_visible > 0.0:
        iou_v = _mask_ious(dets, tracks, (box_v > 0.0) & ~gated & ~same, amodal=False)
        if same.any():
            iou_v[same] = iou_a[same]
        total += cfg.weight_visible * iou_v
    weights = cfg.weight_visible + cfg.weight_amodal + cfg.weight_box + cfg.weight_centroid * both
    sim = total / weights
    sim[gated] = 0.0
    return sim


def _unoccluded(instances: Sequence[InstanceResult]) -> np.ndarray:
    """bool[N]: the visible mask is the whole amodal mask (occlusion 0 and the same box; amodal ⊇ visible)."""
    return np.array([i.occlusion <= 0.0 and tuple(i.bbox) == tuple(i.amodal_bbox) for i in instances], dtype=bool)


def _mask_ious(dets: Sequence[InstanceResult], tracks: Sequence[InstanceResult], candidates: np.ndarray, *,
               amodal: bool) -> np.ndarray:
    """Mask IoU [D, T] for the ``candidates`` pairs (0 elsewhere), one crop_iou_matrix call per track."""
    out = np.zeros(candidates.shape)
    for j in np.flatnonzero(candidates.any(axis=0)):
        rows = np.flatnonzero(candidates[:, j])
        out[rows, j] = crop_iou_matrix([dets[i] for i in rows], [tracks[j]], amodal=amodal)[:, 0]
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

    def observe(self, inst: InstanceResult, centroid: np.ndarray | None, stamp: float) -> None:
        dt = stamp - self.stamp
        if dt > 0.0:
            (x0, y0, w0, h0), (x1, y1, w1, h1) = self.obs.amodal_bbox, inst.amodal_bbox
            self.vel_px = ((x1 + w1 / 2 - x0 - w0 / 2) / dt, (y1 + h1 / 2 - y0 - h0 / 2) / dt)
            known = centroid is not None and self.centroid is not None
            self.vel_m = (centroid - self.centroid) / dt if known else None
        self.obs, self.centroid, self.stamp = inst, centroid, stamp
        self.hits += 1

    def predicted(self, stamp: float, horizon_s: float) -> InstanceResult:
        """The last observation moved to ``stamp`` at constant velocity (boxes rounded to whole pixels)."""
        h = min(max(stamp - self.stamp, 0.0), horizon_s)
        dx, dy = round(self.vel_px[0] * h), round(self.vel_px[1] * h)
        moves_3d = self.vel_m is not None and h > 0.0
        if not (dx or dy or moves_3d):
            return self.obs
        o = self.obs
        p = copy.copy(o)  # shallow: the mask crops are shared, only boxes and centroid move
        p.bbox = (o.bbox[0] + dx, o.bbox[1] + dy, o.bbox[2], o.bbox[3])
        p.amodal_bbox = (o.amodal_bbox[0] + dx, o.amodal_bbox[1] + dy, o.amodal_bbox[2], o.amodal_bbox[3])
        if moves_3d:
            p.centroid = self.centroid + self.vel_m * h
        return p


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
        preds = [t.predicted(stamp, cfg.motion_horizon_s) for t in tracks]
        cents, known = _centroids(instances)
        centroid = [cents[i] if known[i] else None for i in range(len(instances))]

        # stage 1: high-score detections against every live track
        sim1 = similarity_matrix([instances[i] for i in high], preds, cfg)
        pairs1 = assign(sim1, cfg.min_similarity)
        matched: dict[int, int] = {high[r]: c for r, c in pairs1}  # instance position -> track position
        # stage 2: low-score detections against the confirmed tracks still unmatched
        rest = [j for j in range(len(tracks)) if tracks[j].track_id and j not in matched.values()]
        sim2 = similarity_matrix([instances[i] for i in low], [preds[j] for j in rest], cfg)
        for r, c in assign(sim2, cfg.min_similarity):
            matched[low[r]] = rest[c]

        for i, j in matched.items():
            tracks[j].observe(instances[i], centroid[i], stamp)
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
            births.append((i, _Track(self._next_serial, instances[i], centroid[i], stamp, contested=contested)))
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
