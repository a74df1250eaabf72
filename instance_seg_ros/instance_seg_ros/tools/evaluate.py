"""``isr eval``: replay a rosbag2 through the pipeline (or score recorded predictions) against ground truth.

Two modes::

    isr eval BAG [--image-topic T --depth-topic T --info-topic T --gt-topic T] [--params config/X.yaml] [--out DIR]
    isr eval BAG --predictions-topic /instances [--gt-topic T | --gt-json FILE] [--out DIR]

*Pipeline mode* reads the color image (``sensor_msgs/Image`` or ``CompressedImage``: the topic's type decides),
the registered depth (16UC1 or 32FC1) and the camera_info of a bag (mcap or sqlite3, read with ``rosbags``,
no ROS install needed), matches the three streams by header stamp with the node's
:class:`~instance_seg_ros.core.sync.StampSynchronizer` (``sync.slop`` from the parameters; queues and age
limits opened wide, so no frame is dropped when the messages come in bag order) and runs every matched frame
through :class:`~instance_seg_ros.core.pipeline.Segmenter`, exactly as the node does (untrained weights are
seeded, ``--seed``, so a rerun gives the same detections). *Predictions mode* scores an
``instance_seg_msgs/InstanceArray`` topic that a node published during a live run and that was recorded.

Ground truth is an InstanceArray topic (``/ground_truth``, as ``isr record`` and the simulated camera write it),
or ``--gt-json``: a COCO-style amodal JSON (the layout ``isr synth`` writes) whose ``images`` carry
``stamp_ns``, the integer header stamp of the frame's color image in nanoseconds (``sec * 10**9 + nanosec``).
A frame's ground truth is the one with the same stamp, else the nearest one within ``sync.slop``.
See ``docs/eval.md`` for the JSON keys and the exact definition of every figure.

Output in ``--out``: ``report.md`` (every figure, the command line, the model and its parameters),
``metrics.json`` (the same and per-frame records; NaN is written as null), and PNG plots:
``pr_visible.png``, ``pr_amodal.png``, ``latency_hist.png``, ``occlusion_error.png``.

Frames that cannot be evaluated (undecodable or corrupt messages, bad stamps, no partner within slop, no
ground truth) are counted per reason; the rest are evaluated. A requested topic that the bag lacks is an
error naming the topic and listing the bag's topics (exit status 2).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import math
import shlex
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..core.types import FrameResult, InstanceResult, Intrinsics
from .record import COLOR_TOPIC, COMPRESSED_TOPIC, DEPTH_TOPIC, GT_TOPIC, INFO_TOPIC

__all__ = [
    "EvalError",
    "JsonGroundTruth",
    "MissingTopicError",
    "add_arguments",
    "bag_topics",
    "command_line",
    "evaluate",
    "ground_truth_result",
    "run",
]

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
INSTANCE_ARRAY = "instance_seg_msgs/msg/InstanceArray"

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


class EvalError(ValueError):
    """Bad ``isr eval`` input (arguments, bag, ground-truth file); the message says what to change."""


class MissingTopicError(EvalError):
    """A requested topic is not in the bag (or has the wrong type).

    Attributes:
        topic (str): the topic asked for. available (dict[str, tuple[str, int]]): the bag's topics with
            their message type and count.
    """

    def __init__(self, message: str, topic: str, available: dict[str, tuple[str, int]]) -> None:
        super().__init__(message)
        self.topic = topic
        self.available = available


# ---------------------------------------------------------------------------------------- bag helpers
def bag_topics(bag: str | Path) -> dict[str, tuple[str, int]]:
    """``{topic: (message type, message count)}`` of a rosbag2 (mcap or sqlite3).

    Raises:
        EvalError: no bag at ``bag``, or rosbags cannot open it.
    """
    with _open(bag) as reader:
        return _topics_of(reader)


@contextlib.contextmanager
def _open(bag: str | Path) -> Iterator[Any]:
    """An open rosbags AnyReader of ``bag`` (typestore with our messages); EvalError when it cannot be read."""
    from rosbags.highlevel import AnyReader

    from .bagio import typestore

    p = Path(bag)
    if not p.exists():
        raise EvalError(f"No bag at {p}; pass the rosbag2 directory (the one holding metadata.yaml).")
    try:
        reader = AnyReader([p], default_typestore=typestore())
        reader.open()
    except Exception as exc:  # rosbags raises its own AnyReaderError / ReaderError for every kind of bad bag
        raise EvalError(f"Cannot read {p} as a rosbag2 (mcap or sqlite3): {exc}") from exc
    try:
        yield reader
    finally:
        reader.close()


def _topics_of(reader: Any) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for c in reader.connections:
        typ, n = out.get(c.topic, (c.msgtype, 0))
        out[c.topic] = (typ, n + int(c.msgcount))
    return dict(sorted(out.items()))


def _listing(topics: dict[str, tuple[str, int]]) -> str:
    if not topics:
        return "The bag has no topics."
    return "The bag has: " + "; ".join(f"{t} [{typ}, {n} messages]" for t, (typ, n) in topics.items()) + "."


def _require(topics: dict[str, tuple[str, int]], topic: str, option: str, types: tuple[str, ...], bag: Path,
             extra: str = "") -> str:
    if topic not in topics:
        raise MissingTopicError(
            f"Topic {topic} ({option}) is not in the bag {bag}. {_listing(topics)} Pass {option} with one of these"
            f"{extra}.", topic, topics)
    typ = topics[topic][0]
    if typ not in types:
        raise MissingTopicError(
            f"Topic {topic} ({option}) has type {typ}, but {' or '.join(types)} is needed. {_listing(topics)} "
            f"Pass {option} with a topic of that type{extra}.", topic, topics)
    return typ


def _storage(bag: Path) -> str | None:
    import yaml

    try:
        meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        return str(meta.get("storage_identifier"))
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


# ---------------------------------------------------------------------------------------- JSON ground truth
class JsonGroundTruth:
    """COCO-style amodal ground truth keyed by stamp (``--gt-json``).

    Layout (``isr synth``'s ``annotations.json`` plus one key per image)::

        {"images": [{"id": 1, "width": 640, "height": 480, "stamp_ns": 1700000000100000000}, ...],
         "annotations": [{"image_id": 1, "segmentation": RLE | polygons,            # visible mask (required)
                          "amodal_segmentation": RLE | polygons,                      # optional (= visible)
                          "occlusion": 0.25,                                          # optional (from the masks)
                          "is_occluded": true,                                        # optional
                          "centroid": [x, y, z],                                      # optional, meters
                          "category_id": 1, "object_name": "mug", "iscrowd": 0}, ...]}

    ``stamp_ns`` is the header stamp of the frame's color image in nanoseconds. Missing ``occlusion`` =
    ``1 - visible area / amodal area``; missing ``is_occluded`` = ``occlusion > occlusion.threshold``; missing
    ``centroid`` = the mean of the visible mask lifted with the frame's depth (pipeline mode; unknown in
    predictions mode). Crowd annotations (``iscrowd: 1``) are ignored.

    Raises:
        EvalError: unreadable file, or an image without ``stamp_ns``, or duplicate stamps.
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise EvalError(f"Cannot read the ground-truth JSON {p}: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise EvalError(f"{p} is not a COCO-style JSON: it needs an 'images' list and an 'annotations' list.")
        self.path = p
        self._images: dict[int, dict[str, Any]] = {}
        for img in data["images"]:
            stamp = img.get("stamp_ns") if isinstance(img, dict) else None
            if isinstance(stamp, bool) or not isinstance(stamp, int) or stamp <= 0:
                raise EvalError(
                    f"{p}: image {img.get('id') if isinstance(img, dict) else img!r} has no valid 'stamp_ns'; every "
                    "image needs the header stamp of its color image as an integer number of nanoseconds "
                    "(sec * 10**9 + nanosec).")
            if stamp in self._images:
                raise EvalError(f"{p}: two images have stamp_ns {stamp}; stamps must be unique.")
            for key in ("id", "width", "height"):
                if not isinstance(img.get(key), int):
                    raise EvalError(f"{p}: image with stamp_ns {stamp} needs an integer '{key}'.")
            self._images[stamp] = img
        self._anns: dict[int, list[dict[str, Any]]] = {}
        for ann in data.get("annotations", []):
            if int(ann.get("iscrowd", 0)):
                continue
            if "segmentation" not in ann:
                raise EvalError(f"{p}: annotation {ann.get('id')} of image {ann.get('image_id')} has no "
                                "'segmentation' (the visible mask).")
            self._anns.setdefault(int(ann["image_id"]), []).append(ann)
        self._stamps = sorted(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def lookup(self, stamp_ns: int, slop_ns: int) -> int | None:
        """The stamp of the image for a frame stamped ``stamp_ns``: the same, else the nearest within ``slop_ns``."""
        if stamp_ns in self._images:
            return stamp_ns
        k = bisect.bisect_left(self._stamps, stamp_ns)
        best = None
        for c in (k - 1, k):
            if 0 <= c < len(self._stamps) and abs(self._stamps[c] - stamp_ns) <= slop_ns:
                if best is None or abs(self._stamps[c] - stamp_ns) < abs(best - stamp_ns):
                    best = self._stamps[c]
        return best

    def frame_result(
        self,
        stamp_ns: int,
        *,
        depth: np.ndarray | None = None,
        K: Intrinsics | None = None,
        depth_min: float = 0.1,
        depth_max: float = 5.0,
        occlusion_threshold: float = 0.1,
    ) -> FrameResult:
        """The ground truth of the image stamped ``stamp_ns`` (a key from :meth:`lookup`) as a FrameResult.

        Args:
            depth (np.ndarray[H, W] float32 | None), K: the frame's depth (meters, NaN invalid) and intrinsics;
                when given, each visible mask is lifted to the object's points (for the centroid when the JSON
                has none, and the cloud precision).
        """
        from pycocotools import mask as mask_utils

        img = self._images[stamp_ns]
        h, w = int(img["height"]), int(img["width"])
        anns = self._anns.get(int(img["id"]), [])
        vis = np.zeros((len(anns), h, w), bool)
        amo = np.zeros((len(anns), h, w), bool)
        for i, ann in enumerate(anns):
            vis[i] = _decode_segmentation(mask_utils, ann["segmentation"], h, w, self.path)
            amo[i] = vis[i] | (_decode_segmentation(mask_utils, ann["amodal_segmentation"], h, w, self.path)
                               if ann.get("amodal_segmentation") else vis[i])
        return ground_truth_result(
            vis, amo, depth=depth, K=K, depth_min=depth_min, depth_max=depth_max,
            occlusion_threshold=occlusion_threshold,
            occlusion=[ann.get("occlusion") for ann in anns], is_occluded=[ann.get("is_occluded") for ann in anns],
            centroids=[ann.get("centroid") for ann in anns], class_ids=[int(ann.get("category_id", 1)) for ann in anns],
            class_names=[str(ann.get("object_name", "object")) for ann in anns])


def ground_truth_result(
    visible: np.ndarray,
    amodal: np.ndarray | None = None,
    *,
    depth: np.ndarray | None = None,
    K: Intrinsics | None = None,
    depth_min: float = 0.1,
    depth_max: float = 5.0,
    occlusion_threshold: float = 0.1,
    occlusion: list[float | None] | None = None,
    is_occluded: list[bool | None] | None = None,
    centroids: list[Any] | None = None,
    class_ids: list[int] | None = None,
    class_names: list[str] | None = None,
) -> FrameResult:
    """Ground-truth masks of one image as a :class:`FrameResult` (score 1.0), the form the scorers compare.

    Args:
        visible (np.ndarray[G, H, W] bool): visible masks. amodal (np.ndarray[G, H, W] bool | None): amodal masks
            (``None``: the visible ones); each is united with its visible mask.
        depth (np.ndarray[H, W] float32 | None), K: the frame's depth (meters, NaN invalid) and intrinsics; when
            given, each visible mask is lifted to the object's points (for the centroid where none is given, and
            the cloud precision).
        occlusion, is_occluded, centroids, class_ids, class_names: per object, ``None`` entries (or lists) for
            unknown: occlusion = ``1 - visible area / amodal area``; is_occluded = occlusion above
            ``occlusion_threshold``; centroid = the mean of the lifted points (zeros without depth).
    """
    vis = np.asarray(visible, bool)
    g, h, w = vis.shape
    amo = vis.copy() if amodal is None else (np.asarray(amodal, bool) | vis)
    clouds = None
    if depth is not None and K is not None and g:
        from ..core.lifting import lift_instances

        clouds = lift_instances(depth, vis, K, depth_min=depth_min, depth_max=depth_max, flying_pixel_threshold=0.0)
    label = np.zeros((h, w), np.uint16)
    instances = []
    for i in range(g):
        area, aarea = int(vis[i].sum()), int(amo[i].sum())
        given = occlusion[i] if occlusion is not None else None
        occ = float(given) if given is not None else (1.0 - area / aarea if aarea else 0.0)
        flag = is_occluded[i] if is_occluded is not None else None
        pts = clouds[i].points if clouds is not None else np.zeros((0, 3), np.float32)
        c_given = centroids[i] if centroids is not None else None
        if c_given is not None:
            c = np.asarray(c_given, dtype=np.float64).reshape(3)
        else:
            c = pts.astype(np.float64).mean(axis=0) if pts.shape[0] else np.zeros(3)
        bbox, crop = _box_and_crop(vis[i])
        abox, acrop = _box_and_crop(amo[i])
        label[vis[i] & (label == 0)] = i + 1
        instances.append(InstanceResult(
            index=i + 1, class_id=class_ids[i] if class_ids else 1,
            class_name=class_names[i] if class_names else "object", score=1.0, bbox=bbox, mask=crop,
            amodal_bbox=abox, amodal_mask=acrop, occlusion=occ,
            is_occluded=bool(flag) if flag is not None else occ > occlusion_threshold,
            points=pts, depth_coverage=clouds[i].depth_coverage if clouds is not None else 0.0, centroid=c,
        ))
    return FrameResult(width=w, height=h, instances=instances, label_image=label)


def _decode_segmentation(mask_utils: Any, seg: Any, h: int, w: int, path: Path) -> np.ndarray:
    try:
        if isinstance(seg, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, h, w)
        elif isinstance(seg, dict):
            counts = seg["counts"]
            rle = {"size": list(seg["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise TypeError(f"a segmentation is a polygon list or an RLE dict, got {type(seg).__name__}")
        with warnings.catch_warnings():  # pycocotools vs numpy 2's copy keyword
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode(rle)
    except (TypeError, KeyError, ValueError) as exc:
        raise EvalError(f"{path}: a segmentation cannot be decoded ({exc}).") from exc
    if m.shape[:2] != (h, w):
        raise EvalError(f"{path}: a segmentation is {m.shape[1]}x{m.shape[0]} but its image is {w}x{h}.")
    return m.reshape(h, w).astype(bool)


def _box_and_crop(m: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray]:
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0), np.zeros((0, 0), bool)
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return (x0, y0, x1 - x0, y1 - y0), m[y0:y1, x0:x1].copy()


# ---------------------------------------------------------------------------------------- the evaluation
class _Run:
    """Bookkeeping of one evaluation: frames, rejections, pending results and ground truth, timings."""

    def __init__(self, scorer: Any, slop_ns: int) -> None:
        self.scorer = scorer
        self.slop_ns = slop_ns
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

    def reject(self, reason: str, detail: str, stamp: int | None = None) -> None:
        self.rejected[reason] += 1
        self.examples.setdefault(reason, detail)
        if stamp is not None:
            self.pending_gt.pop(stamp, None)
            self.rejected_stamps.add(stamp)

    def add_gt(self, stamp: int, gt: FrameResult) -> None:
        if stamp in self.rejected_stamps:  # its frame was already rejected
            return
        if stamp in self.pending_pred:
            pred, lat = self.pending_pred.pop(stamp)
            self.score(stamp, pred, gt, lat)
        else:
            self.pending_gt[stamp] = gt

    def add_pred(self, stamp: int, pred: FrameResult, lat: dict[str, float]) -> None:
        gt = self.pending_gt.pop(stamp, None)
        if gt is None:
            self.pending_pred[stamp] = (pred, lat)
        else:
            self.score(stamp, pred, gt, lat)

    def score(self, stamp: int, pred: FrameResult, gt: FrameResult, lat: dict[str, float]) -> None:
        from ..core.eval_metrics import ScoreError

        try:
            rec = self.scorer.add(pred, gt, stamp_ns=stamp)
        except ScoreError as exc:
            self.reject(R_SIZE, f"frame {_fmt_stamp(stamp)}: {exc}")
            return
        for k, v in lat.items():
            self.latency.setdefault(k, []).append(float(v))
        rec["latency_ms"] = {k: round(float(v), 3) for k, v in lat.items()}
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
                self.reject(R_NO_GT, f"frame {_fmt_stamp(stamp)} has no ground truth within "
                                     f"{self.slop_ns / 1e9:g} s (sync.slop)")
                continue
            best = min(cands, key=lambda s: abs(s - stamp))
            stamps.remove(best)
            self.score(stamp, pred, self.pending_gt.pop(best), lat)
        if self.pending_gt:
            self.notes["ground truth without a frame"] += len(self.pending_gt)
        self.pending_gt.clear()


def _fmt_stamp(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d} s"


def evaluate(
    bag: str | Path,
    *,
    config: Any = None,
    image_topic: str | None = None,
    depth_topic: str = DEPTH_TOPIC,
    info_topic: str = INFO_TOPIC,
    gt_topic: str = GT_TOPIC,
    gt_json: str | Path | None = None,
    predictions_topic: str | None = None,
    segmenter: Any = None,
    iou_threshold: float = 0.5,
    cloud_tolerance: float = 0.01,
    max_frames: int | None = None,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a bag; returns the ``metrics.json`` document (NaN where nothing was measured).

    Args:
        bag: rosbag2 directory (mcap or sqlite3 storage).
        config: :class:`~instance_seg_ros.core.config.Config` (``sync.slop`` pairs the streams and the ground
            truth; the model's parameters in pipeline mode). ``None``: ``segmenter.config`` if given, else the
            defaults (:func:`~instance_seg_ros.tools.bench.build_config`: untrained weights while none are bundled).
        image_topic: color topic; ``None`` = ``/camera/color/image_raw``, or its ``/compressed`` sibling when only
            that is in the bag. Its type (Image or CompressedImage) picks the decoder.
        depth_topic, info_topic: registered depth (16UC1 or 32FC1) and camera_info topics (pipeline mode).
        gt_topic: InstanceArray ground-truth topic (ignored when ``gt_json`` is given).
        gt_json: COCO-style amodal JSON keyed by ``stamp_ns`` (see :class:`JsonGroundTruth`).
        predictions_topic: score this recorded InstanceArray topic instead of running the pipeline.
        segmenter: a loaded :class:`~instance_seg_ros.core.pipeline.Segmenter` to reuse (built from ``config``
            and loaded, after ``torch.manual_seed(seed)``, when ``None``).
        iou_threshold: visible-mask IoU of a match for the matching-based figures (COCO's AP uses its own
            thresholds). cloud_tolerance: meters, see :mod:`~instance_seg_ros.core.eval_metrics`.
        max_frames: evaluate at most this many frames (color or prediction messages), ``None`` = all.
        progress: show a tqdm progress bar over the frames on stderr.
        log: called with a line per notable event (default: nothing).

    Raises:
        MissingTopicError: a requested topic is not in the bag or has the wrong type (names the bag's topics).
        EvalError: no bag there, bad arguments, unreadable ground-truth JSON.
        ConfigError / WeightsError: the model cannot be built from ``config``.
    """
    from ..core.eval_metrics import FrameScorer, ScoreError

    log = log or (lambda _m: None)
    bag = Path(bag)
    if max_frames is not None and int(max_frames) < 1:
        raise EvalError(f"--max-frames must be >= 1, got {max_frames}.")
    try:
        scorer = FrameScorer(iou_threshold=iou_threshold, cloud_tolerance=cloud_tolerance)
    except ScoreError as exc:
        raise EvalError(str(exc)) from exc
    if config is None:
        if segmenter is not None:
            config = segmenter.config
        else:
            from .bench import build_config

            config, notes = build_config(None)
            for n in notes:
                log(n)
    json_gt = JsonGroundTruth(gt_json) if gt_json is not None else None
    slop_ns = int(round(config.sync.slop * 1e9))

    with _open(bag) as reader:
        topics = _topics_of(reader)
        inputs: dict[str, Any] = {}
        gt_hint = " (or pass --gt-json FILE)"
        if json_gt is None:
            _require(topics, gt_topic, "--gt-topic", (INSTANCE_ARRAY,), bag, gt_hint)
            inputs["ground_truth"] = gt_topic
        else:
            inputs["ground_truth"] = f"{json_gt.path} ({len(json_gt)} images)"
        if predictions_topic is not None:
            _require(topics, predictions_topic, "--predictions-topic", (INSTANCE_ARRAY,), bag)
            inputs["predictions"] = predictions_topic
            mode = "predictions"
        else:
            mode = "pipeline"
            if image_topic is None:
                image_topic = COMPRESSED_TOPIC if COLOR_TOPIC not in topics and COMPRESSED_TOPIC in topics \
                    else COLOR_TOPIC
            image_type = _require(topics, image_topic, "--image-topic", (IMAGE, COMPRESSED), bag)
            _require(topics, depth_topic, "--depth-topic", (IMAGE,), bag)
            _require(topics, info_topic, "--info-topic", (CAMERA_INFO,), bag)
            inputs.update(image=image_topic, image_format="compressed" if image_type == COMPRESSED else "raw",
                          depth=depth_topic, camera_info=info_topic)

        state = _Run(scorer, slop_ns)
        model: dict[str, Any] | None = None
        t_start = time.perf_counter()
        if mode == "predictions":
            pivot_count = topics[predictions_topic][1]
            _score_predictions(reader, state, predictions_topic, None if json_gt else gt_topic, json_gt, config,
                               max_frames, _bar(progress, pivot_count, max_frames))
        else:
            seg = segmenter
            if seg is None:
                import torch

                from ..core.pipeline import Segmenter

                torch.manual_seed(int(seed))  # untrained weights: the same model (and detections) on every run
                seg = Segmenter(config, log=log)
                seg.load()
            model = _model_info(seg)
            pivot_count = topics[image_topic][1]
            _replay(reader, state, seg, config, inputs, None if json_gt else gt_topic, json_gt, max_frames,
                    _bar(progress, pivot_count, max_frames))
            if state.frame_hw is not None:
                h, w = state.frame_hw
                lo, hi = seg.predictor.input_size(h, w)
                model["frame"] = f"{w}x{h} (width x height)"
                model["network_input"] = f"short side {lo}, long side at most {hi}"
        state.finish()
        wall_s = time.perf_counter() - t_start

    metrics = scorer.summarize()
    metrics.pop("frames")  # the count of scored frames: frames.evaluated below
    evaluated = len(state.per_frame)
    latency = {k: _dist(v) for k, v in state.latency.items()}
    if mode == "pipeline":
        e2e = state.latency.get("end_to_end", [])
        fps = len(e2e) / (sum(e2e) / 1e3) if e2e and sum(e2e) > 0 else math.nan
        latency_note = ("pipeline stages on this machine (ms); decode = color + depth + camera_info to numpy; "
                        "end_to_end = decode + Segmenter.process; fps = frames / sum(end_to_end)")
    else:
        stamps = sorted(r["stamp_ns"] for r in state.per_frame)
        span = (stamps[-1] - stamps[0]) / 1e9 if len(stamps) >= 2 else 0.0
        fps = (len(stamps) - 1) / span if span > 0 else math.nan
        latency_note = ("recorded = bag receive time - header stamp of each prediction (the live node's latency "
                        "when the recorder ran on its machine); fps = prediction rate by stamp")
    return {
        "tool": "isr eval",
        "mode": mode,
        "bag": {"path": str(bag), "storage": _storage(bag),
                "topics": {t: {"type": typ, "messages": n} for t, (typ, n) in topics.items()}},
        "inputs": inputs,
        "model": model,
        "config": config.to_flat(),
        "seed": int(seed),
        "frames": {
            "messages": state.messages,
            "evaluated": evaluated,
            "rejected": int(sum(state.rejected.values())),
            "rejected_by_reason": dict(state.rejected),
            "rejected_examples": dict(state.examples),
            "notes": dict(state.notes),
        },
        **metrics,
        "latency_ms": latency,
        "latency_note": latency_note,
        "fps": fps,
        "wall_s": wall_s,
        "per_frame": state.per_frame,
    }


def _dist(values: list[float]) -> dict[str, float]:
    from ..core.eval_metrics import distribution

    return distribution(values)


def _bar(progress: bool, total: int, max_frames: int | None):
    from tqdm import tqdm

    n = min(total, max_frames) if max_frames else total
    return tqdm(total=n, desc="isr eval", unit="frame", disable=not progress, file=sys.stderr)


def _model_info(seg: Any) -> dict[str, Any]:
    import torch

    meta, pred = seg.meta, seg.predictor
    return {"weights": seg.config.model.weights, "backbone": meta.backbone, "input_mode": meta.input_mode,
            "classes": list(meta.classes), "device": str(pred.device), "precision": pred.precision,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def _deserialize(reader: Any, conn: Any, raw: bytes) -> tuple[Any, str | None]:
    try:
        return reader.deserialize(raw, conn.msgtype), None
    except Exception as exc:  # rosbags raises struct/Index/Unicode/Value errors on corrupt CDR data
        return None, f"{conn.topic}: {type(exc).__name__}: {exc}"


def _parse_gt(state: _Run, msg: Any, stamp: int) -> None:
    from .bagio import BagError, frame_result_from_instance_array

    try:
        state.add_gt(stamp, frame_result_from_instance_array(msg))
    except BagError as exc:
        state.notes["ground-truth messages malformed"] += 1
        state.examples.setdefault("ground-truth messages malformed", f"{_fmt_stamp(stamp)}: {exc}")


def _score_predictions(reader: Any, state: _Run, pred_topic: str, gt_topic: str | None, json_gt: Any, config: Any,
                       max_frames: int | None, bar: Any) -> None:
    from .bagio import BagError, frame_result_from_instance_array, stamp_ns

    wanted = {pred_topic} | ({gt_topic} if gt_topic else set())
    conns = [c for c in reader.connections if c.topic in wanted]
    done = False
    with bar:
        for conn, t, raw in reader.messages(connections=conns):
            is_pred = conn.topic == pred_topic
            if is_pred and done:
                continue
            msg, err = _deserialize(reader, conn, raw)
            if is_pred:
                state.messages += 1
                bar.update(1)
                done = max_frames is not None and state.messages >= max_frames
                if msg is None:
                    state.reject(R_DESERIALIZE, err)
                    continue
                stamp = stamp_ns(msg)
                try:
                    pred = frame_result_from_instance_array(msg)
                except BagError as exc:
                    state.reject(R_PRED, f"{_fmt_stamp(stamp)}: {exc}", stamp)
                    continue
                lat = {"recorded": (int(t) - stamp) / 1e6}
                if json_gt is not None:
                    key = json_gt.lookup(stamp, state.slop_ns)
                    if key is None:
                        state.reject(R_NO_GT, f"frame {_fmt_stamp(stamp)} has no image in {json_gt.path}")
                        continue
                    gt = json_gt.frame_result(key, occlusion_threshold=config.occlusion.threshold)
                    state.score(stamp, pred, gt, lat)
                else:
                    state.add_pred(stamp, pred, lat)
                    if conn.topic == gt_topic:  # the same topic as ground truth: a sanity check that scores 1.0
                        state.add_gt(stamp, pred)
            elif msg is None:
                state.notes["ground-truth messages not deserializable"] += 1
            else:
                _parse_gt(state, msg, stamp_ns(msg))
            if done and not state.pending_pred:
                break


def _replay(reader: Any, state: _Run, seg: Any, config: Any, inputs: dict[str, Any], gt_topic: str | None,
            json_gt: Any, max_frames: int | None, bar: Any) -> None:
    from ..core.images import (
        FrameError,
        color_from_compressed_msg,
        color_from_msg,
        depth_from_msg,
        intrinsics_from_camera_info,
    )
    from ..core.sync import StampError, StampSynchronizer
    from .bagio import stamp_ns

    streams = {inputs["image"]: "image", inputs["depth"]: "depth", inputs["camera_info"]: "camera_info"}
    compressed = inputs["image_format"] == "compressed"
    limits = {"max_width": config.input.max_width, "max_height": config.input.max_height}
    open_pivots: set[int] = set()

    def on_drop(stream: str, stamp: int, missing: tuple[str, ...]) -> None:
        if stream != "image":
            state.notes[f"unused {stream} messages"] += 1
            return
        open_pivots.discard(stamp)
        if missing:
            state.reject(f"no {'/'.join(missing)} message within sync.slop",
                         f"frame {_fmt_stamp(stamp)}: no {' or '.join(missing)} message within "
                         f"{config.sync.slop:g} s", stamp)
        else:
            state.reject(R_SUPERSEDED, f"frame {_fmt_stamp(stamp)}: its partner messages were closer to another "
                                       "frame", stamp)

    sync = StampSynchronizer(("image", "depth", "camera_info"), slop=config.sync.slop, queue_size=_SYNC_QUEUE,
                             max_age=_SYNC_MAX_AGE, on_drop=on_drop)

    def handle(m: Any) -> None:
        stamp = m.stamp_ns
        open_pivots.discard(stamp)
        color_msg, depth_msg, info_msg = m.msgs
        if color_msg is None:  # the end-of-bag sentinel
            return
        t0 = time.perf_counter()
        try:
            K = intrinsics_from_camera_info(info_msg)
        except FrameError as exc:
            state.reject(R_INFO, f"frame {_fmt_stamp(stamp)}: {exc}", stamp)
            return
        try:
            color = color_from_compressed_msg(color_msg, **limits) if compressed else color_from_msg(color_msg,
                                                                                                     **limits)
        except FrameError as exc:
            state.reject(R_COLOR, f"frame {_fmt_stamp(stamp)}: {exc}", stamp)
            return
        if not color.flags.writeable:  # a view of the bag's read-only buffer; the node's rclpy buffers are writable
            color = color.copy()
        try:
            depth = depth_from_msg(depth_msg, scale_16uc1=config.depth.scale_16uc1, **limits)
        except FrameError as exc:
            state.reject(R_DEPTH, f"frame {_fmt_stamp(stamp)}: {exc}", stamp)
            return
        t1 = time.perf_counter()
        try:
            result = seg.process(color, depth, K)
        except FrameError as exc:
            state.reject(R_FRAME, f"frame {_fmt_stamp(stamp)}: {exc}", stamp)
            return
        t2 = time.perf_counter()
        lat = {"decode": (t1 - t0) * 1e3, **result.timings, "end_to_end": (t2 - t0) * 1e3}
        if json_gt is not None:
            key = json_gt.lookup(stamp, state.slop_ns)
            if key is None:
                state.reject(R_NO_GT, f"frame {_fmt_stamp(stamp)} has no image in {json_gt.path}")
                return
            gt = json_gt.frame_result(key, depth=depth, K=K, depth_min=config.depth.min,
                                      depth_max=config.depth.max, occlusion_threshold=config.occlusion.threshold)
            state.score(stamp, result, gt, lat)
        else:
            state.add_pred(stamp, result, lat)

    wanted = set(streams) | ({gt_topic} if gt_topic else set())
    conns = [c for c in reader.connections if c.topic in wanted]
    newest = 0
    done = False
    with bar:
        for conn, _t, raw in reader.messages(connections=conns):
            stream = streams.get(conn.topic)
            if stream == "image" and done:
                continue
            msg, err = _deserialize(reader, conn, raw)
            if stream is None:  # ground truth
                if msg is None:
                    state.notes["ground-truth messages not deserializable"] += 1
                else:
                    _parse_gt(state, msg, stamp_ns(msg))
            else:
                if stream == "image":
                    state.messages += 1
                    bar.update(1)
                    done = max_frames is not None and state.messages >= max_frames
                if msg is None:
                    if stream == "image":
                        state.reject(R_DESERIALIZE, err)
                    else:
                        state.notes[f"{stream} messages not deserializable"] += 1
                else:
                    stamp = stamp_ns(msg)
                    try:
                        matched = sync.add(stream, stamp, msg)
                    except StampError as exc:
                        if stream == "image":
                            state.reject(f"stamp refused ({exc.reason})", f"{conn.topic}: {exc}")
                        else:
                            state.notes[f"{stream} stamps refused ({exc.reason})"] += 1
                        matched = []
                    else:
                        newest = max(newest, stamp)
                        if stream == "image":
                            open_pivots.add(stamp)
                    for m in matched:
                        handle(m)
            if done and not open_pivots and not state.pending_pred:
                break
        # flush: a newer pivot releases the last frames whose partners are final only by ordering
        if open_pivots:
            for m in sync.add("image", newest + 1, None):
                handle(m)
            for stamp in sorted(open_pivots):
                state.reject(R_UNMATCHED_END, f"frame {_fmt_stamp(stamp)}: no depth/camera_info partner within "
                                              f"{config.sync.slop:g} s", stamp)
            open_pivots.clear()


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", nargs="?", default=None, help="rosbag2 directory (mcap or sqlite3 storage)")
    parser.add_argument("--frames", default=None, metavar="DIR",
                        help="evaluate folders of RGB-D frames under DIR instead of a bag (our layout: rgb.png, "
                             "depth.png, K.json, label.png, amodal/; or OSD, OCID): see docs/eval.md")
    parser.add_argument("--layout", default="auto", choices=("auto", "folder", "osd", "ocid"),
                        help="--frames: the dataset layout (auto-detected by default)")
    parser.add_argument("--baseline", default=None, choices=("plane",),
                        help="--frames: also score the classical RANSAC-plane + Euclidean-clusters pipeline")
    parser.add_argument("--intrinsics", default=None, metavar="FX,FY,CX,CY,W,H",
                        help="--frames: intrinsics for layouts without a K.json (OSD, OCID; their defaults otherwise)")
    parser.add_argument("--image-topic", default=None,
                        help=f"color topic, Image or CompressedImage (default {COLOR_TOPIC}, or {COMPRESSED_TOPIC} "
                             "when only that one is in the bag)")
    parser.add_argument("--depth-topic", default=DEPTH_TOPIC, help=f"registered depth, 16UC1 or 32FC1 ({DEPTH_TOPIC})")
    parser.add_argument("--info-topic", default=INFO_TOPIC, help=f"camera_info of the color camera ({INFO_TOPIC})")
    parser.add_argument("--gt-topic", default=GT_TOPIC, help=f"ground-truth InstanceArray topic ({GT_TOPIC})")
    parser.add_argument("--gt-json", default=None, metavar="FILE",
                        help="COCO-style amodal ground truth whose images carry 'stamp_ns' (instead of --gt-topic)")
    parser.add_argument("--predictions-topic", default=None, metavar="TOPIC",
                        help="score this recorded InstanceArray topic instead of running the pipeline")
    parser.add_argument("--params", default=None, metavar="YAML",
                        help="config / ROS params file (default: built-in defaults; untrained weights while no "
                             "model is bundled)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one parameter, e.g. --set model.score_threshold=0.7 (repeatable)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output directory for report.md, metrics.json and the plots (default: <bag>_eval)")
    parser.add_argument("--iou", type=float, default=0.5,
                        help="visible-mask IoU of a match for recall, centroid, occlusion and cloud figures (0.5)")
    parser.add_argument("--cloud-tolerance", type=float, default=0.01,
                        help="meters: a predicted point this close to its object's true cloud is on it (0.01)")
    parser.add_argument("--max-frames", type=int, default=None, help="evaluate at most this many frames")
    parser.add_argument("--seed", type=int, default=0, help="torch seed before the model is built (0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log lines")


def command_line(args: argparse.Namespace) -> str:
    """The ``isr eval`` command that reproduces ``args`` (every option spelled out, shell-quoted)."""
    parts = ["isr", "eval", str(args.bag)]
    opts = [("--image-topic", args.image_topic), ("--depth-topic", args.depth_topic),
            ("--info-topic", args.info_topic), ("--gt-topic", args.gt_topic), ("--gt-json", args.gt_json),
            ("--predictions-topic", args.predictions_topic), ("--params", args.params)]
    for flag, value in opts:
        if value is not None:
            parts += [flag, str(value)]
    for item in args.set:
        parts += ["--set", item]
    parts += ["--out", str(args.out), "--iou", f"{args.iou:g}", "--cloud-tolerance", f"{args.cloud_tolerance:g}"]
    if args.max_frames is not None:
        parts += ["--max-frames", str(args.max_frames)]
    parts += ["--seed", str(args.seed)]
    if args.quiet:
        parts.append("--quiet")
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from ..core.config import ConfigError
    from ..core.model import WeightsError
    from .bagio import BagError
    from .bench import BenchError, _parse_set, build_config
    from .eval_report import write_outputs

    if (args.bag is None) == (args.frames is None):
        print("isr eval: error: give a bag (isr eval BAG) or a folder of frames (isr eval --frames DIR), "
              "not both and not neither.", file=sys.stderr)
        return 2
    if args.frames is not None:
        from .eval_frames import run_frames

        return run_frames(args)
    if args.baseline or args.intrinsics or args.layout != "auto":
        print("isr eval: error: --baseline, --layout and --intrinsics apply to --frames only.", file=sys.stderr)
        return 2
    log = (lambda _m: None) if args.quiet else (lambda m: print(f"isr eval: {m}", file=sys.stderr))
    if args.out is None:
        args.out = f"{Path(args.bag).name.rstrip('/') or 'bag'}_eval"
    command = command_line(args)
    invoked = shlex.join(["isr", *sys.argv[1:]]) if Path(sys.argv[0]).name == "isr" else None
    try:
        config, notes = build_config(args.params, _parse_set(args.set))
        for n in notes:
            log(n)
        report = evaluate(
            args.bag, config=config, image_topic=args.image_topic, depth_topic=args.depth_topic,
            info_topic=args.info_topic, gt_topic=args.gt_topic, gt_json=args.gt_json,
            predictions_topic=args.predictions_topic, iou_threshold=args.iou, cloud_tolerance=args.cloud_tolerance,
            max_frames=args.max_frames, seed=args.seed, progress=not args.quiet, log=log,
        )
    except (EvalError, ConfigError, BagError, BenchError, WeightsError) as exc:
        print(f"isr eval: error: {exc}", file=sys.stderr)
        return 2
    report["command"] = command
    if invoked is not None and invoked != command:
        report["invoked_as"] = invoked
    report["config_notes"] = notes
    paths = write_outputs(report, args.out)
    f = report["frames"]
    c = report["coco"]
    print(f"isr eval: {f['evaluated']} of {f['messages']} frames evaluated, {f['rejected']} rejected; "
          f"mask AP {_pct(c['mask_ap'])}, AP50 {_pct(c['mask_ap50'])}, amodal AP {_pct(c['amodal_ap'])}; "
          f"report -> {paths[0]}")
    if f["rejected"]:
        for reason, n in f["rejected_by_reason"].items():
            print(f"  rejected x{n}: {reason} (e.g. {f['rejected_examples'][reason]})", file=sys.stderr)
    if f["evaluated"] == 0:
        print("isr eval: error: no frame could be evaluated; see the rejection reasons above.", file=sys.stderr)
        return 1
    return 0


def _pct(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"
