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

Identities (the *Tracking* section): in pipeline mode, with ``tracking.enabled`` (the default), a
:class:`~instance_seg_ros.core.tracking.Tracker` runs over the evaluated frames in stamp order with their header
stamps, as in the node; in predictions mode the recorded ``track_id`` s are scored as they are. When the ground
truth carries identities (a ``track_id`` != 0: ``isr record`` and the simulated camera write each object's id),
MOTA, MOTP, IDF1 and the ID switches are reported beside the mask AP (:func:`~.eval_replay.mot_summary`).
``--frame-step N`` evaluates every N-th synchronized frame only (2: every other frame dropped, so the tracker sees
twice the motion between frames).

Frames that cannot be evaluated (undecodable or corrupt messages, bad stamps, no partner within slop, no
ground truth) are counted per reason; the rest are evaluated. A requested topic that the bag lacks is an
error naming the topic and listing the bag's topics (exit status 2).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .bagio import INSTANCE_ARRAY
from .eval_errors import EvalError, GroundTruthError
from .record import COLOR_TOPIC, COMPRESSED_TOPIC, DEPTH_TOPIC, GT_TOPIC, INFO_TOPIC

__all__ = ["add_arguments", "command_line", "evaluate", "run"]

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"


# ---------------------------------------------------------------------------------------- the evaluation
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
    frame_step: int = 1,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a bag; returns the ``metrics.json`` document (NaN where nothing was measured).

    Args:
        bag: rosbag2 directory (mcap or sqlite3 storage).
        config: :class:`~instance_seg_ros.core.config.Config` (``sync.slop`` pairs the streams and the ground
            truth; the model's parameters in pipeline mode). ``None``: ``segmenter.config`` if given, else the
            defaults (:func:`~instance_seg_ros.tools.cli_config.build_config`: the bundled model).
        image_topic: color topic; ``None`` = ``/camera/color/image_raw``, or its ``/compressed`` sibling when only
            that is in the bag. Its type (Image or CompressedImage) picks the decoder.
        depth_topic, info_topic: registered depth (16UC1 or 32FC1) and camera_info topics (pipeline mode).
        gt_topic: InstanceArray ground-truth topic (ignored when ``gt_json`` is given).
        gt_json: COCO-style amodal JSON keyed by ``stamp_ns`` (see
            :class:`~instance_seg_ros.tools.ground_truth.JsonGroundTruth`).
        predictions_topic: score this recorded InstanceArray topic instead of running the pipeline.
        segmenter: a loaded :class:`~instance_seg_ros.core.pipeline.Segmenter` to reuse (built from ``config``
            and loaded, after ``torch.manual_seed(seed)``, when ``None``).
        iou_threshold: visible-mask IoU of a match for the matching-based figures (COCO's AP uses its own
            thresholds). cloud_tolerance: meters, see :mod:`~instance_seg_ros.core.eval_metrics`.
        max_frames: read at most this many frames (color or prediction messages), ``None`` = all.
        frame_step: evaluate every ``frame_step``-th synchronized frame (or prediction message) of those read; the
            tracker sees only those.
        progress: show a tqdm progress bar over the frames on stderr.
        log: called with a line per notable event (default: nothing).

    Raises:
        MissingTopicError: a requested topic is not in the bag or has the wrong type (names the bag's topics).
        BagError: no bag there, or it cannot be read. EvalError: bad arguments.
        GroundTruthError: unreadable or malformed ground-truth JSON.
        ConfigError / WeightsError: the model cannot be built from ``config``.
    """
    from .bagio import open_bag, topics
    from .eval_replay import EvalRun, score_predictions
    from .ground_truth import JsonGroundTruth

    log = log or (lambda _m: None)
    bag = Path(bag)
    scorer = _scorer(max_frames, iou_threshold, cloud_tolerance)
    if int(frame_step) < 1:
        raise EvalError(f"--frame-step must be >= 1, got {frame_step}.")
    if config is None:
        config = segmenter.config if segmenter is not None else _default_config(log)
    json_gt = JsonGroundTruth(gt_json) if gt_json is not None else None

    with open_bag(bag) as reader:
        available = topics(reader)
        inputs = _inputs(available, bag, json_gt=json_gt, gt_topic=gt_topic, predictions_topic=predictions_topic,
                         image_topic=image_topic, depth_topic=depth_topic, info_topic=info_topic)
        run = EvalRun(scorer, config, json_gt, frame_step=int(frame_step))
        gt_stream = None if json_gt else gt_topic
        model: dict[str, Any] | None = None
        t_start = time.perf_counter()
        if predictions_topic is not None:
            score_predictions(reader, run, predictions_topic, gt_stream, max_frames,
                              _bar(progress, available[predictions_topic][1], max_frames))
        else:
            model = _replay(reader, run, segmenter, config, inputs, gt_stream, seed=seed, log=log,
                            max_frames=max_frames, bar=_bar(progress, available[inputs["image"]][1], max_frames))
        run.finish()
        wall_s = time.perf_counter() - t_start
    mode = "predictions" if predictions_topic is not None else "pipeline"
    return _report(bag, available, inputs, mode, model, config, seed, run, wall_s)


def _scorer(max_frames: int | None, iou_threshold: float, cloud_tolerance: float) -> Any:
    from ..core.eval_metrics import FrameScorer, ScoreError

    if max_frames is not None and int(max_frames) < 1:
        raise EvalError(f"--max-frames must be >= 1, got {max_frames}.")
    try:
        return FrameScorer(iou_threshold=iou_threshold, cloud_tolerance=cloud_tolerance)
    except ScoreError as exc:
        raise EvalError(str(exc)) from exc


def _default_config(log: Callable[[str], None]) -> Any:
    from .cli_config import build_config

    config, notes = build_config(None)
    for n in notes:
        log(n)
    return config


def _inputs(available: dict[str, tuple[str, int]], bag: Path, *, json_gt: Any, gt_topic: str,
            predictions_topic: str | None, image_topic: str | None, depth_topic: str, info_topic: str
            ) -> dict[str, Any]:
    """The topics (or file) each input comes from, checked against the bag (``inputs`` of the report)."""
    from .bagio import require_topic

    inputs: dict[str, Any] = {}
    if json_gt is None:
        require_topic(available, gt_topic, "--gt-topic", (INSTANCE_ARRAY,), bag, " (or pass --gt-json FILE)")
        inputs["ground_truth"] = gt_topic
    else:
        inputs["ground_truth"] = f"{json_gt.path} ({len(json_gt)} images)"
    if predictions_topic is not None:
        require_topic(available, predictions_topic, "--predictions-topic", (INSTANCE_ARRAY,), bag)
        inputs["predictions"] = predictions_topic
        return inputs
    if image_topic is None:
        image_topic = COMPRESSED_TOPIC if COLOR_TOPIC not in available and COMPRESSED_TOPIC in available \
            else COLOR_TOPIC
    image_type = require_topic(available, image_topic, "--image-topic", (IMAGE, COMPRESSED), bag)
    require_topic(available, depth_topic, "--depth-topic", (IMAGE,), bag)
    require_topic(available, info_topic, "--info-topic", (CAMERA_INFO,), bag)
    inputs.update(image=image_topic, image_format="compressed" if image_type == COMPRESSED else "raw",
                  depth=depth_topic, camera_info=info_topic)
    return inputs


def _replay(reader: Any, run: Any, segmenter: Any, config: Any, inputs: dict[str, Any], gt_topic: str | None, *,
            seed: int, log: Callable[[str], None], max_frames: int | None, bar: Any) -> dict[str, Any]:
    """Pipeline mode: the bag through ``segmenter`` (built and loaded, seeded, when None); returns the report's
    ``model``."""
    from .cli_config import seeded_segmenter
    from .eval_replay import PipelineReplay
    from .eval_report import model_info

    seg = segmenter if segmenter is not None else seeded_segmenter(config, seed, log)
    model = model_info(seg)
    PipelineReplay(run, seg, config, inputs, gt_topic).replay(reader, max_frames, bar)
    if run.frame_hw is not None:
        h, w = run.frame_hw
        lo, hi = seg.predictor.input_size(h, w)
        model["frame"] = f"{w}x{h} (width x height)"
        model["network_input"] = f"short side {lo}, long side at most {hi}"
    return model


def _report(bag: Path, available: dict[str, tuple[str, int]], inputs: dict[str, Any], mode: str,
            model: dict[str, Any] | None, config: Any, seed: int, run: Any, wall_s: float) -> dict[str, Any]:
    """The ``metrics.json`` document of a finished run."""
    from ..core.eval_metrics import distribution
    from .bagio import storage_of

    metrics = run.scorer.summarize()
    metrics.pop("frames")  # the count of scored frames: frames.evaluated below
    fps, latency_note = _rate(mode, run)
    tracking = _tracking(mode, config, run, inputs)
    return {
        "tool": "isr eval",
        "mode": mode,
        "bag": {"path": str(bag), "storage": storage_of(bag),
                "topics": {t: {"type": typ, "messages": n} for t, (typ, n) in available.items()}},
        "inputs": inputs,
        "model": model,
        "config": config.to_flat(),
        "seed": int(seed),
        "frames": {
            "messages": run.messages,
            "frame_step": run.frame_step,
            "skipped": len(run.skipped_stamps),
            "evaluated": len(run.per_frame),
            "rejected": int(sum(run.rejected.values())),
            "rejected_by_reason": dict(run.rejected),
            "rejected_examples": dict(run.examples),
            "notes": dict(run.notes),
        },
        **metrics,
        "tracking": tracking,
        "latency_ms": {k: distribution(v) for k, v in run.latency.items()},
        "latency_note": latency_note,
        "fps": fps,
        "wall_s": wall_s,
        "per_frame": run.per_frame,
    }


def _tracking(mode: str, config: Any, run: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """The report's ``tracking``: where the ids come from, the MOT figures (:func:`~.eval_replay.mot_summary`) and,
    in pipeline mode, the tracker's cost per frame and its counters."""
    from ..core.eval_metrics import distribution
    from .eval_replay import mot_summary

    if mode == "predictions":
        ids_from = f"the recorded track_id of {inputs['predictions']}"
    elif config.tracking.enabled:
        ids_from = "the tracker (tracking.*), over the evaluated frames in stamp order"
    else:
        ids_from = "none: tracking.enabled is false"
    out = {"ids_from": ids_from, "iou_threshold": run.scorer.iou_threshold, "frame_step": run.frame_step,
           **mot_summary(run.id_frames, run.scorer.iou_threshold)}
    if mode == "pipeline" and not config.tracking.enabled:
        out["status"] = "tracking disabled (tracking.enabled is false)"
    ms = run.latency.get("tracking")
    out["tracker_update_ms"] = distribution(ms) if ms else None
    out["tracker"] = run.tracker_stats
    return out


def _rate(mode: str, run: Any) -> tuple[float, str]:
    """Frames per second and the note saying what the latency figures measure."""
    if mode == "pipeline":
        e2e = run.latency.get("end_to_end", [])
        fps = len(e2e) / (sum(e2e) / 1e3) if e2e and sum(e2e) > 0 else math.nan
        return fps, ("pipeline stages on this machine (ms); decode = color + depth + camera_info to numpy; "
                     "tracking = Tracker.update; end_to_end = decode + Segmenter.process + tracking; "
                     "fps = frames / sum(end_to_end)")
    stamps = sorted(r["stamp_ns"] for r in run.per_frame)
    span = (stamps[-1] - stamps[0]) / 1e9 if len(stamps) >= 2 else 0.0
    fps = (len(stamps) - 1) * run.frame_step / span if span > 0 else math.nan
    return fps, ("recorded = bag receive time - header stamp of each prediction (the live node's latency "
                 "when the recorder ran on its machine); fps = prediction rate by stamp (evaluated predictions "
                 "x --frame-step)")


def _bar(progress: bool, total: int, max_frames: int | None):
    from tqdm import tqdm

    n = min(total, max_frames) if max_frames else total
    return tqdm(total=n, desc="isr eval", unit="frame", disable=not progress, file=sys.stderr)


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
                        help="config / ROS params file (default: built-in defaults, with the bundled model)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one parameter, e.g. --set model.score_threshold=0.7 (repeatable)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output directory for report.md, metrics.json and the plots (default: <bag>_eval)")
    parser.add_argument("--iou", type=float, default=0.5,
                        help="visible-mask IoU of a match for recall, centroid, occlusion, cloud and tracking figures "
                             "(0.5)")
    parser.add_argument("--cloud-tolerance", type=float, default=0.01,
                        help="meters: a predicted point this close to its object's true cloud is on it (0.01)")
    parser.add_argument("--max-frames", type=int, default=None,
                        help="read at most this many frames (color or prediction messages, before --frame-step)")
    parser.add_argument("--frame-step", type=int, default=1, metavar="N",
                        help="evaluate every N-th synchronized frame (or prediction message) only; the others are "
                             "skipped before the pipeline and the tracker, so 2 = every other frame dropped (1)")
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
    if args.frame_step != 1:
        parts += ["--frame-step", str(args.frame_step)]
    parts += ["--seed", str(args.seed)]
    if args.quiet:
        parts.append("--quiet")
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from ..core.config import ConfigError
    from ..core.model import WeightsError
    from .bagio import BagError
    from .cli_config import build_config, parse_set
    from .eval_report import write_outputs

    if (args.bag is None) == (args.frames is None):
        print("isr eval: error: give a bag (isr eval BAG) or a folder of frames (isr eval --frames DIR), "
              "not both and not neither.", file=sys.stderr)
        return 2
    if args.frames is not None:
        if args.frame_step != 1:
            print("isr eval: error: --frame-step applies to bags only.", file=sys.stderr)
            return 2
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
        config, notes = build_config(args.params, parse_set(args.set))
        for n in notes:
            log(n)
        report = evaluate(
            args.bag, config=config, image_topic=args.image_topic, depth_topic=args.depth_topic,
            info_topic=args.info_topic, gt_topic=args.gt_topic, gt_json=args.gt_json,
            predictions_topic=args.predictions_topic, iou_threshold=args.iou, cloud_tolerance=args.cloud_tolerance,
            max_frames=args.max_frames, frame_step=args.frame_step, seed=args.seed, progress=not args.quiet, log=log,
        )
    except (EvalError, ConfigError, BagError, GroundTruthError, WeightsError) as exc:
        print(f"isr eval: error: {exc}", file=sys.stderr)
        return 2
    report["command"] = command
    if invoked is not None and invoked != command:
        report["invoked_as"] = invoked
    report["config_notes"] = notes
    paths = write_outputs(report, args.out)
    f = report["frames"]
    c = report["coco"]
    t = report["tracking"]
    ids = (f"IDF1 {_pct(t['idf1'])} ({_pct(t['idf1_detected'])} on detected objects), MOTA {_pct(t['mota'])}, "
           f"{t['id_switches']} ID switches" if t["status"] == "ok"
           else f"tracking: {t['status']}")
    print(f"isr eval: {f['evaluated']} of {f['messages']} frames evaluated, {f['rejected']} rejected; "
          f"mask AP {_pct(c['mask_ap'])}, AP50 {_pct(c['mask_ap50'])}, amodal AP {_pct(c['amodal_ap'])}; {ids}; "
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
