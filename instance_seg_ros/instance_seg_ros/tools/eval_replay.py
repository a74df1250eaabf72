"""The two loops of ``isr eval`` over an open bag, and the bookkeeping they share.

- :class:`PipelineReplay`: color, depth and camera_info messages, paired by header stamp with the node's
  :class:`~instance_seg_ros.core.sync.StampSynchronizer` (queues and age limits opened wide, so no frame is dropped
  while the messages come in bag order), decoded as the node decodes them and run through the
  :class:`~instance_seg_ros.core.pipeline.Segmenter`;
- :func:`score_predictions`: a recorded InstanceArray topic, parsed back with the message codec.

Both hand each frame's result to :class:`EvalRun`, which pairs it with its ground truth (a topic, paired by stamp
within ``sync.slop``, or a :class:`~instance_seg_ros.tools.ground_truth.JsonGroundTruth`), scores the pair, and
counts every frame it cannot evaluate under one of the ``R_*`` reasons. With ``frame_step`` N only every N-th frame
(synchronized frame, or prediction message) is evaluated; the others are skipped before any work.

Identities: in pipeline mode a :class:`~instance_seg_ros.core.tracking.Tracker` (``tracking.*``) gives the
evaluated frames their track ids as the node does, with the frames' header stamps; in predictions mode the recorded
``track_id`` s are taken as they are. Every scored frame keeps its ground-truth ids, its predictions' track ids and
their visible-mask IoU (:class:`IdFrame`); :func:`mot_summary` runs them in stamp order through
:class:`~instance_seg_ros.core.mot_metrics.MotAccumulator` (MOTA, MOTP, IDF1, ID switches).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.msg_codec import MessageError, frame_result_from_instance_array, stamp_ns
from ..core.types import FrameError, FrameResult, Intrinsics

__all__ = [
    "MOT_KEYS",
    "NO_GT_IDS",
    "NO_PRED_IDS",
    "R_COLOR",
    "R_DEPTH",
    "R_DESERIALIZE",
    "R_FRAME",
    "R_INFO",
    "R_NO_GT",
    "R_PRED",
    "R_SIZE",
    "R_SUPERSEDED",
    "R_UNMATCHED_END",
    "EvalRun",
    "IdFrame",
    "PipelineReplay",
    "fmt_stamp",
    "mot_summary",
    "score_predictions",
]

# the offline synchronizer: as the node's, but nothing ages out or overflows while messages come in bag order
_SYNC_QUEUE = 1000
_SYNC_MAX_AGE = 3600.0

# frame rejection reasons (the keys of frames.rejected_by_reason)
R_DESERIALIZE = "message not deserializable"
R_COLOR = "color image not decodable"
R_DEPTH = "depth image not decodable"
R_INFO = "camera_info invalid"
R_FRAME = "color, depth and camera_info disagree"
R_UNMATCHED_END = "no depth/camera_info partner within sync.slop by the end of the bag"
R_SUPERSEDED = "partners taken by a closer frame"
R_NO_GT = "no ground truth within sync.slop of the stamp"
R_SIZE = "prediction and ground truth sizes differ"
R_PRED = "predictions message malformed"


def fmt_stamp(ns: int) -> str:
    """A stamp in nanoseconds as ``sec.nanosec s``."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d} s"


# ---------------------------------------------------------------------------------------- identities
@dataclass(frozen=True)
class IdFrame:
    """The identities of one scored frame, all the tracking figures need of it.

    Attributes:
        stamp_ns (int): the frame's header stamp.
        gt_ids (tuple[int, ...]): each ground-truth instance's ``track_id`` (0: the instance has no identity).
        pred_ids (tuple[int, ...]): the track ids of the predictions that have one (``track_id != 0``).
        iou (np.ndarray[G, P] float64): visible-mask IoU between ground-truth instance ``i`` and tracked prediction
            ``j``.
        detected (np.ndarray[G] bool | None): whether any prediction, tracked or not, overlaps ground-truth
            instance ``i`` at ``iou_threshold`` (for ``idf1_detected``); None: the tracked ones decide.
    """

    stamp_ns: int
    gt_ids: tuple[int, ...]
    pred_ids: tuple[int, ...]
    iou: np.ndarray
    detected: np.ndarray | None = None

    @classmethod
    def of(cls, stamp_ns: int, pred: FrameResult, gt: FrameResult, iou_threshold: float = 0.5) -> IdFrame:
        from ..core.matching import crop_iou_matrix

        gt_ids = tuple(int(g.track_id) for g in gt.instances)
        tracked = np.array([bool(p.track_id) for p in pred.instances], bool)
        # the IoU only where it can count: ground truth with identities
        iou = crop_iou_matrix(list(gt.instances), list(pred.instances)) if any(gt_ids) \
            else np.zeros((len(gt_ids), len(pred.instances)))
        return cls(int(stamp_ns), gt_ids, tuple(int(p.track_id) for p in pred.instances if p.track_id),
                   iou[:, tracked], (iou >= iou_threshold).any(axis=1))


MOT_KEYS = ("mota", "motp", "idf1", "idp", "idr", "id_switches", "id_switches_per_100", "frames", "gt_objects",
            "gt_ids", "predictions", "pred_ids", "matches", "misses", "false_positives", "idtp", "idfp", "idfn",
            "gt_detected", "predictions_on_gt", "idf1_detected")
NO_GT_IDS = "ground truth has no identities"
NO_PRED_IDS = "no prediction carries a track id"


def mot_summary(frames: Sequence[IdFrame], iou_threshold: float) -> dict[str, Any]:
    """The tracking figures of scored frames, taken in stamp order
    (:class:`~instance_seg_ros.core.mot_metrics.MotAccumulator`).

    Ground-truth instances without an identity (``track_id`` 0) are left out when others have one; a frame with the
    same id twice (ground truth or predictions) is left out. Both are counted in ``notes``.

    Returns:
        ``{"status", **MOT_KEYS, "notes"}``: ``status`` is ``"ok"``, ``"no frames evaluated"``,
        :data:`NO_GT_IDS` or :data:`NO_PRED_IDS`; the figures are NaN unless it is ``"ok"``.
    """
    from ..core.mot_metrics import MotAccumulator

    out: dict[str, Any] = {"status": "ok", **dict.fromkeys(MOT_KEYS, math.nan), "notes": {}}
    if not frames:
        out["status"] = "no frames evaluated"
    elif not any(any(f.gt_ids) for f in frames):
        out["status"] = NO_GT_IDS
    elif not any(f.pred_ids for f in frames):
        out["status"] = NO_PRED_IDS
    if out["status"] != "ok":
        return out
    notes: Counter[str] = Counter()
    acc = MotAccumulator(iou_threshold=iou_threshold)
    for f in sorted(frames, key=lambda f: f.stamp_ns):
        keep = [i for i, g in enumerate(f.gt_ids) if g]
        gt_ids = [f.gt_ids[i] for i in keep]
        notes["ground-truth instances without an identity (left out)"] += len(f.gt_ids) - len(keep)
        if len(set(gt_ids)) != len(gt_ids) or len(set(f.pred_ids)) != len(f.pred_ids):
            notes["frames with a repeated id in one frame (left out)"] += 1
            continue
        acc.add(gt_ids, f.pred_ids, f.iou[keep], detected=None if f.detected is None else f.detected[keep])
    out.update({k: v for k, v in acc.compute().as_dict().items() if k in MOT_KEYS})
    out["notes"] = {k: n for k, n in notes.items() if n}
    return out


class EvalRun:
    """Bookkeeping of one evaluation: frames, rejections, pending results and ground truth, timings.

    Args:
        scorer: the :class:`~instance_seg_ros.core.eval_metrics.FrameScorer` every pair goes to.
        config: the Config (``sync.slop`` pairs results and ground truth; depth limits and the occlusion threshold
            build the JSON ground truth).
        json_gt: a :class:`~instance_seg_ros.tools.ground_truth.JsonGroundTruth`, or None (ground truth comes as
            messages: :meth:`add_gt`).
        frame_step: evaluate every ``frame_step``-th frame offered to :meth:`take` (1 = all).
    """

    def __init__(self, scorer: Any, config: Any, json_gt: Any = None, *, frame_step: int = 1) -> None:
        self.scorer = scorer
        self.config = config
        self.json_gt = json_gt
        self.slop_ns = int(round(config.sync.slop * 1e9))
        self.messages = 0
        self.rejected: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.notes: Counter[str] = Counter()
        self.pending_pred: dict[int, tuple[FrameResult, dict[str, float]]] = {}
        self.pending_gt: dict[int, FrameResult] = {}
        self.latency: dict[str, list[float]] = {}
        self.per_frame: list[dict[str, Any]] = []
        self.frame_hw: tuple[int, int] | None = None
        self.rejected_stamps: set[int] = set()
        self.frame_step = int(frame_step)
        self.offered = 0
        self.skipped_stamps: set[int] = set()
        self.id_frames: list[IdFrame] = []
        self.tracker_stats: dict[str, Any] | None = None  # the replay's Tracker.stats at the end (pipeline mode)

    def take(self, stamp: int) -> bool:
        """Whether the next frame (stamp ``stamp``) is evaluated under ``frame_step``; a skipped frame's ground truth
        is dropped."""
        self.offered += 1
        if (self.offered - 1) % self.frame_step == 0:
            return True
        self.skipped_stamps.add(stamp)
        self.pending_gt.pop(stamp, None)
        return False

    def reject(self, reason: str, detail: str, stamp: int | None = None) -> None:
        self.rejected[reason] += 1
        self.examples.setdefault(reason, detail)
        if stamp is not None:
            self.pending_gt.pop(stamp, None)
            self.rejected_stamps.add(stamp)

    def add_gt(self, stamp: int, gt: FrameResult) -> None:
        if stamp in self.rejected_stamps or stamp in self.skipped_stamps:  # its frame was rejected or skipped
            return
        if stamp in self.pending_pred:
            pred, lat = self.pending_pred.pop(stamp)
            self.score(stamp, pred, gt, lat)
        else:
            self.pending_gt[stamp] = gt

    def add_gt_msg(self, msg: Any) -> None:
        """A ground-truth InstanceArray message (None: not deserializable)."""
        if msg is None:
            self.notes["ground-truth messages not deserializable"] += 1
            return
        stamp = stamp_ns(msg)
        try:
            self.add_gt(stamp, frame_result_from_instance_array(msg))
        except MessageError as exc:
            self.notes["ground-truth messages malformed"] += 1
            self.examples.setdefault("ground-truth messages malformed", f"{fmt_stamp(stamp)}: {exc}")

    def add_pred(self, stamp: int, pred: FrameResult, lat: dict[str, float]) -> None:
        gt = self.pending_gt.pop(stamp, None)
        if gt is None:
            self.pending_pred[stamp] = (pred, lat)
        else:
            self.score(stamp, pred, gt, lat)

    def predicted(self, stamp: int, pred: FrameResult, lat: dict[str, float], *, depth: Any = None,
                  K: Intrinsics | None = None) -> bool:
        """A frame's result: scored against its JSON ground truth now (lifted with ``depth`` and ``K`` when given),
        or held until its ground-truth message comes. False when the JSON has no image for it (rejected)."""
        if self.json_gt is None:
            self.add_pred(stamp, pred, lat)
            return True
        key = self.json_gt.lookup(stamp, self.slop_ns)
        if key is None:
            self.reject(R_NO_GT, f"frame {fmt_stamp(stamp)} has no image in {self.json_gt.path}")
            return False
        c = self.config
        gt = self.json_gt.frame_result(key, depth=depth, K=K, depth_min=c.depth.min, depth_max=c.depth.max,
                                       occlusion_threshold=c.occlusion.threshold)
        self.score(stamp, pred, gt, lat)
        return True

    def score(self, stamp: int, pred: FrameResult, gt: FrameResult, lat: dict[str, float]) -> None:
        from ..core.eval_metrics import ScoreError

        try:
            rec = self.scorer.add(pred, gt, stamp_ns=stamp)
        except ScoreError as exc:
            self.reject(R_SIZE, f"frame {fmt_stamp(stamp)}: {exc}")
            return
        for k, v in lat.items():
            self.latency.setdefault(k, []).append(float(v))
        rec["latency_ms"] = {k: round(float(v), 3) for k, v in lat.items()}
        ids = IdFrame.of(stamp, pred, gt, self.scorer.iou_threshold)
        rec["gt_track_ids"], rec["track_ids"] = list(ids.gt_ids), list(ids.pred_ids)
        self.id_frames.append(ids)
        self.per_frame.append(rec)
        if self.frame_hw is None:
            self.frame_hw = (int(gt.height), int(gt.width))

    def finish(self) -> None:
        """Pair what is left by nearest stamp within slop; the rest has no ground truth."""
        stamps = sorted(self.pending_gt)
        for stamp in sorted(self.pending_pred):
            pred, lat = self.pending_pred.pop(stamp)
            k = bisect.bisect_left(stamps, stamp)
            cands = [stamps[c] for c in (k - 1, k) if 0 <= c < len(stamps) and abs(stamps[c] - stamp) <= self.slop_ns]
            if not cands:
                self.reject(R_NO_GT, f"frame {fmt_stamp(stamp)} has no ground truth within "
                                     f"{self.slop_ns / 1e9:g} s (sync.slop)")
                continue
            best = min(cands, key=lambda s: abs(s - stamp))
            stamps.remove(best)
            self.score(stamp, pred, self.pending_gt.pop(best), lat)
        if self.pending_gt:
            self.notes["ground truth without a frame"] += len(self.pending_gt)
        self.pending_gt.clear()


def _deserialize(reader: Any, conn: Any, raw: bytes) -> tuple[Any, str | None]:
    try:
        return reader.deserialize(raw, conn.msgtype), None
    except Exception as exc:  # rosbags raises struct/Index/Unicode/Value errors on corrupt CDR data
        return None, f"{conn.topic}: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------- predictions mode
def score_predictions(reader: Any, run: EvalRun, pred_topic: str, gt_topic: str | None, max_frames: int | None,
                      bar: Any) -> None:
    """Score the recorded InstanceArray topic ``pred_topic`` of an open bag (``gt_topic``: the ground-truth topic,
    None with JSON ground truth); at most ``max_frames`` prediction messages."""
    wanted = {pred_topic} | ({gt_topic} if gt_topic else set())
    conns = [c for c in reader.connections if c.topic in wanted]
    done = False
    with bar:
        for conn, t, raw in reader.messages(connections=conns):
            is_pred = conn.topic == pred_topic
            if is_pred and done:
                continue
            msg, err = _deserialize(reader, conn, raw)
            if not is_pred:
                run.add_gt_msg(msg)
            else:
                run.messages += 1
                bar.update(1)
                done = max_frames is not None and run.messages >= max_frames
                if not _prediction(run, msg, err, int(t), same_as_gt=conn.topic == gt_topic):
                    continue  # a rejected frame: read on (its ground truth is noted as such)
            if done and not run.pending_pred:
                break


def _prediction(run: EvalRun, msg: Any, err: str | None, t: int, same_as_gt: bool) -> bool:
    """One prediction message to ``run``; False when the frame was rejected."""
    if msg is None:
        run.reject(R_DESERIALIZE, err or "")
        return False
    stamp = stamp_ns(msg)
    if not run.take(stamp):
        return True
    try:
        pred = frame_result_from_instance_array(msg)
    except MessageError as exc:
        run.reject(R_PRED, f"{fmt_stamp(stamp)}: {exc}", stamp)
        return False
    if not run.predicted(stamp, pred, {"recorded": (t - stamp) / 1e6}):
        return False
    if same_as_gt and run.json_gt is None:  # the same topic as ground truth: a sanity check that scores 1.0
        run.add_gt(stamp, pred)
    return True


# ---------------------------------------------------------------------------------------- pipeline mode
class PipelineReplay:
    """Replay an open bag's color, depth and camera_info through ``seg`` (a loaded Segmenter), as the node would.

    With ``tracking.enabled`` a :class:`~instance_seg_ros.core.tracking.Tracker` gives each evaluated frame's
    instances their track ids after the Segmenter (stage ``tracking`` of the latency, in ``end_to_end``), and restarts
    on an input time reset, as in the node.

    Args:
        run: where results and rejections go. seg: the Segmenter. config: its Config (``sync.slop``, input limits,
            ``depth.scale_16uc1``, ``tracking.*``). inputs: ``{"image", "image_format" ("raw" | "compressed"),
            "depth", "camera_info"}`` topics. gt_topic: the ground-truth topic (None with JSON ground truth).
    """

    def __init__(self, run: EvalRun, seg: Any, config: Any, inputs: dict[str, Any], gt_topic: str | None) -> None:
        from ..core.sync import StampSynchronizer
        from ..core.tracking import Tracker

        self.run, self.seg, self.config, self.gt_topic = run, seg, config, gt_topic
        self.streams = {inputs["image"]: "image", inputs["depth"]: "depth", inputs["camera_info"]: "camera_info"}
        self.compressed = inputs["image_format"] == "compressed"
        self.limits = {"max_width": config.input.max_width, "max_height": config.input.max_height}
        self.open_pivots: set[int] = set()  # color stamps waiting for their partners
        self.newest = 0
        self.sync = StampSynchronizer(("image", "depth", "camera_info"), slop=config.sync.slop,
                                      queue_size=_SYNC_QUEUE, max_age=_SYNC_MAX_AGE, on_drop=self._on_drop,
                                      on_reset=self._on_reset)
        self.tracker = Tracker(config.tracking) if config.tracking.enabled else None

    def replay(self, reader: Any, max_frames: int | None, bar: Any) -> None:
        """Every message of the input (and ground-truth) topics in bag order; at most ``max_frames`` color frames."""
        wanted = set(self.streams) | ({self.gt_topic} if self.gt_topic else set())
        conns = [c for c in reader.connections if c.topic in wanted]
        done = False
        with bar:
            for conn, _t, raw in reader.messages(connections=conns):
                stream = self.streams.get(conn.topic)
                if stream == "image" and done:
                    continue
                msg, err = _deserialize(reader, conn, raw)
                if stream is None:  # ground truth
                    self.run.add_gt_msg(msg)
                else:
                    if stream == "image":
                        self.run.messages += 1
                        bar.update(1)
                        done = max_frames is not None and self.run.messages >= max_frames
                    self._input(stream, conn.topic, msg, err)
                if done and not self.open_pivots and not self.run.pending_pred:
                    break
            self._flush()
        if self.tracker is not None:
            self.run.tracker_stats = dataclasses.asdict(self.tracker.stats)

    def _input(self, stream: str, topic: str, msg: Any, err: str | None) -> None:
        from ..core.sync import StampError

        if msg is None:
            if stream == "image":
                self.run.reject(R_DESERIALIZE, err or "")
            else:
                self.run.notes[f"{stream} messages not deserializable"] += 1
            return
        stamp = stamp_ns(msg)
        try:
            matched = self.sync.add(stream, stamp, msg)
        except StampError as exc:
            if stream == "image":
                self.run.reject(f"stamp refused ({exc.reason})", f"{topic}: {exc}")
            else:
                self.run.notes[f"{stream} stamps refused ({exc.reason})"] += 1
            return
        self.newest = max(self.newest, stamp)
        if stream == "image":
            self.open_pivots.add(stamp)
        for m in matched:
            self._frame(m)

    def _flush(self) -> None:
        """At the end of the bag: a newer pivot releases the last frames whose partners are final only by ordering;
        color frames still open have no partner."""
        if not self.open_pivots:
            return
        for m in self.sync.add("image", self.newest + 1, None):
            self._frame(m)
        for stamp in sorted(self.open_pivots):
            self.run.reject(R_UNMATCHED_END, f"frame {fmt_stamp(stamp)}: no depth/camera_info partner within "
                                             f"{self.config.sync.slop:g} s", stamp)
        self.open_pivots.clear()

    def _on_reset(self, stream: str, _previous: int, stamp: int, reason: str) -> None:
        self.run.notes[f"input time resets ({reason})"] += 1
        if self.tracker is not None:
            self.tracker.reset(f"input time reset on {stream} ({reason})", stamp / 1e9)

    def _on_drop(self, stream: str, stamp: int, missing: tuple[str, ...]) -> None:
        if stream != "image":
            self.run.notes[f"unused {stream} messages"] += 1
            return
        self.open_pivots.discard(stamp)
        if missing:
            self.run.reject(f"no {'/'.join(missing)} message within sync.slop",
                            f"frame {fmt_stamp(stamp)}: no {' or '.join(missing)} message within "
                            f"{self.config.sync.slop:g} s", stamp)
        else:
            self.run.reject(R_SUPERSEDED, f"frame {fmt_stamp(stamp)}: its partner messages were closer to another "
                                          "frame", stamp)

    def _frame(self, m: Any) -> None:
        """One matched frame: decode, run the pipeline, hand the result on (or reject it with the reason)."""
        stamp = m.stamp_ns
        self.open_pivots.discard(stamp)
        if m.msgs[0] is None or not self.run.take(stamp):  # the end-of-bag sentinel, or a frame --frame-step skips
            return
        t0 = time.perf_counter()
        decoded = self._decode(stamp, *m.msgs)
        if decoded is None:
            return
        color, depth, K = decoded
        t1 = time.perf_counter()
        try:
            result = self.seg.process(color, depth, K)
        except FrameError as exc:
            self.run.reject(R_FRAME, f"frame {fmt_stamp(stamp)}: {exc}", stamp)
            return
        if self.tracker is not None:
            self.tracker.update(stamp / 1e9, result.instances)
            result.timings["tracking"] = self.tracker.stats.last_update_ms
        t2 = time.perf_counter()
        lat = {"decode": (t1 - t0) * 1e3, **result.timings, "end_to_end": (t2 - t0) * 1e3}
        self.run.predicted(stamp, result, lat, depth=depth, K=K)

    def _decode(self, stamp: int, color_msg: Any, depth_msg: Any, info_msg: Any) -> tuple[Any, Any, Any] | None:
        """``(color, depth, K)`` as the node decodes them; None (the frame rejected with the reason) when one fails."""
        from ..core.images import color_from_compressed_msg, color_from_msg, depth_from_msg, intrinsics_from_camera_info

        try:
            K = intrinsics_from_camera_info(info_msg)
        except FrameError as exc:
            self.run.reject(R_INFO, f"frame {fmt_stamp(stamp)}: {exc}", stamp)
            return None
        try:
            decode = color_from_compressed_msg if self.compressed else color_from_msg
            color = decode(color_msg, **self.limits)
        except FrameError as exc:
            self.run.reject(R_COLOR, f"frame {fmt_stamp(stamp)}: {exc}", stamp)
            return None
        if not color.flags.writeable:  # a view of the bag's read-only buffer; the node's rclpy buffers are writable
            color = color.copy()
        try:
            depth = depth_from_msg(depth_msg, scale_16uc1=self.config.depth.scale_16uc1, **self.limits)
        except FrameError as exc:
            self.run.reject(R_DEPTH, f"frame {fmt_stamp(stamp)}: {exc}", stamp)
            return None
        return color, depth, K
