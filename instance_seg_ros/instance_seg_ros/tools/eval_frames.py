"""``isr eval --frames DIR``: the pipeline on folders of real RGB-D frames, scored as unseen-object papers score.

::

    isr eval --frames ../shared/realdata [--baseline plane] [--params config/X.yaml] [--set K=V] [--out DIR]

Every frame under DIR (our layout, OSD or OCID: :mod:`~instance_seg_ros.tools.frames`) goes through the same
:class:`~instance_seg_ros.core.pipeline.Segmenter` the node runs, with the same config. Each *method* is scored on
the same frames with the same code:

- ``model``: the pipeline as configured (``filter.support_plane`` included);
- ``model, no plane check``: the same detections before the support-plane check dropped any (only when the check is
  on): the two columns side by side show what the check removes;
- ``plane``: (``--baseline plane``) the classical pipeline a ROS user would reach for instead, RANSAC support plane
  and Euclidean clusters of the points above it (:mod:`~instance_seg_ros.tools.plane_baseline`).

Figures per method, overall and per frame: COCO mask AP / AP50 / AP75 (visible; amodal where the frames have
amodal masks), recall and precision at visible IoU >= 0.5 with one-to-one matching, unmatched predictions per
frame, Overlap and Boundary precision / recall / F-measure with Hungarian matching and F@.75 (UOIS-Net's
definitions, :mod:`~instance_seg_ros.core.uois_metrics`; per-frame values averaged over frames as the papers do),
mean IoU of the visible and of the amodal masks of matched objects, occlusion error, 3D centroid error against the
labelled mask lifted with the frame's depth, and the per-stage latency.

Outputs in ``--out``: ``report.md``, ``metrics.json`` (every figure and the per-frame records; NaN as null) and
``contact_sheet.png`` (a row per frame: ground truth, the model's visible contours solid and amodal contours dashed
with the detections the support-plane check dropped in grey, and the baseline).
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.types import FrameResult, InstanceResult, Intrinsics

__all__ = ["METHODS", "evaluate_frames", "run_frames"]

#: method keys -> the names the report shows
METHODS = {"model": "model", "model_no_plane_check": "model, no plane check", "plane": "plane + clusters baseline"}


class _Method:
    """Scorers and timings of one method over the frames."""

    def __init__(self, key: str, iou_threshold: float, cloud_tolerance: float) -> None:
        from ..core.eval_metrics import FrameScorer
        from ..core.uois_metrics import UoisAccumulator

        self.key = key
        self.scorer = FrameScorer(iou_threshold=iou_threshold, cloud_tolerance=cloud_tolerance)
        self.uois = UoisAccumulator()
        self.latency: dict[str, list[float]] = {}

    def add(self, pred: FrameResult, gt: FrameResult | None, gt_labels: np.ndarray | None,
            latency: dict[str, float]) -> dict[str, Any]:
        for k, v in latency.items():
            self.latency.setdefault(k, []).append(float(v))
        rec: dict[str, Any] = {"pred": len(pred.instances)}
        if gt is None:
            return rec
        from ..core.uois_metrics import labels_from_masks

        s = self.scorer.add(pred, gt)
        h, w = gt.height, gt.width
        masks = np.zeros((len(pred.instances), h, w), bool)
        for i, inst in enumerate(pred.instances):  # sorted by descending score: the better one owns an overlap
            masks[i] = inst.full_mask(h, w)
        u = self.uois.add(labels_from_masks(masks), gt_labels)
        rec.update(matched=s["matched"], unmatched=s["unmatched"], mean_iou=s["mean_iou"],
                   overlap_f=u["overlap_f"], boundary_f=u["boundary_f"], f75=u["f75"])
        return rec

    def summary(self) -> dict[str, Any]:
        from ..core.eval_metrics import distribution

        m = self.scorer.summarize()
        m.pop("frames")
        m["uois"] = self.uois.summarize() if len(self.scorer) else None
        m["latency_ms"] = {k: distribution(v) for k, v in self.latency.items()}
        e2e = self.latency.get("end_to_end", [])
        m["fps"] = len(e2e) / (sum(e2e) / 1e3) if e2e and sum(e2e) > 0 else math.nan
        return m


def _with_dropped(result: FrameResult) -> FrameResult:
    """``result`` as it was before the support-plane check: kept and dropped instances by descending score."""
    insts = sorted([*result.instances, *result.dropped], key=lambda i: -i.score)
    return FrameResult(width=result.width, height=result.height, instances=insts, label_image=result.label_image,
                       timings=result.timings)


def _matches_gt(inst: InstanceResult, gt: FrameResult, iou_threshold: float) -> bool:
    from ..core.matching import crop_iou_matrix

    return bool(gt.instances) and float(crop_iou_matrix([inst], gt.instances).max()) >= iou_threshold


def evaluate_frames(
    root: str | Path,
    *,
    config: Any = None,
    layout: str = "auto",
    baseline: str | None = None,
    segmenter: Any = None,
    intrinsics: Intrinsics | None = None,
    iou_threshold: float = 0.5,
    cloud_tolerance: float = 0.01,
    max_frames: int | None = None,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    keep_sheet: int = 24,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate every frame under ``root``; returns ``(metrics.json document, contact-sheet rows)``.

    Args:
        root: a folder of frames (see :mod:`~instance_seg_ros.tools.frames` for the layouts).
        config: :class:`~instance_seg_ros.core.config.Config` (``None``: the defaults with the bundled model).
        layout: ``auto`` | ``folder`` | ``osd`` | ``ocid``. intrinsics: override for layouts without a K file.
        baseline: ``None`` or ``"plane"`` (the RANSAC-plane + Euclidean-clusters pipeline, scored alongside).
        segmenter: a loaded :class:`~instance_seg_ros.core.pipeline.Segmenter` to reuse (else built from config).
        iou_threshold, cloud_tolerance: as for the bag evaluation (:mod:`~instance_seg_ros.core.eval_metrics`).
        max_frames: evaluate at most this many frames (in name order). keep_sheet: contact-sheet rows kept.

    Raises:
        EvalError: bad arguments, or no frames under ``root`` (the message names the layouts looked for).
        ConfigError / WeightsError: the model cannot be built from ``config``.
    """
    from ..core.config import Config
    from .eval_errors import EvalError
    from .frames import FramesError, find_frames

    log = log or (lambda _m: None)
    if baseline not in (None, "plane"):
        raise EvalError(f"--baseline must be 'plane' (or left out), got {baseline!r}.")
    if max_frames is not None and int(max_frames) < 1:
        raise EvalError(f"--max-frames must be >= 1, got {max_frames}.")
    try:
        refs = find_frames(root, layout=layout, intrinsics=intrinsics)
    except FramesError as exc:
        raise EvalError(str(exc)) from exc
    if max_frames is not None:
        refs = refs[: int(max_frames)]
    if config is None:
        config = segmenter.config if segmenter is not None else Config()
    if segmenter is None:
        from .cli_config import seeded_segmenter

        segmenter = seeded_segmenter(config, seed, log)
    run = _FramesRun(config, segmenter, baseline, iou_threshold, cloud_tolerance, seed, log, keep_sheet)
    from tqdm import tqdm

    t_start = time.perf_counter()
    for ref in tqdm(refs, desc="isr eval", unit="frame", disable=not progress, file=sys.stderr):
        run.frame(ref)
    report = run.report(root, refs, time.perf_counter() - t_start)
    return report, run.sheet


class _PlaneCheck:
    """What the support-plane check did over the frames: planes found, detections dropped, labelled ones among them."""

    def __init__(self, iou_threshold: float) -> None:
        self.iou_threshold = iou_threshold
        self.frames = self.with_plane = self.dropped = self.dropped_gt = 0
        self.supports: list[float] = []
        self.examples: list[str] = []

    def add(self, name: str, result: FrameResult, gt: FrameResult | None) -> dict[str, Any]:
        plane = result.support_plane
        self.frames += 1
        self.with_plane += plane is not None
        if plane is not None:
            self.supports.append(float(plane.support))
        self.dropped += len(result.dropped)
        hit = [d for d in result.dropped if gt is not None and _matches_gt(d, gt, self.iou_threshold)]
        self.dropped_gt += len(hit)
        self.examples += [f"{name} #{d.index} score {d.score:.2f}" for d in hit]
        return {"found": plane is not None, "support": None if plane is None else round(float(plane.support), 3),
                "dropped": len(result.dropped), "dropped_matching_gt": len(hit)}

    def summary(self, methods: dict[str, _Method]) -> dict[str, Any]:
        from ..core.eval_metrics import distribution

        before = methods["model_no_plane_check"].scorer.summarize()["matching"]
        after = methods["model"].scorer.summarize()["matching"]
        return {"frames": self.frames, "frames_with_plane": self.with_plane,
                "plane_support": distribution(self.supports), "dropped": self.dropped,
                "dropped_matching_gt": self.dropped_gt,
                "dropped_matching_gt_examples": self.examples,
                "unmatched_removed": before["unmatched"] - after["unmatched"],
                "matched_lost": before["matched"] - after["matched"]}


class _FramesRun:
    """One ``isr eval --frames`` run: the methods' scorers, the support-plane check, rejections, per-frame records."""

    def __init__(self, config: Any, seg: Any, baseline: str | None, iou_threshold: float, cloud_tolerance: float,
                 seed: int, log: Callable[[str], None], keep_sheet: int) -> None:
        from ..core.eval_metrics import ScoreError
        from .eval_errors import EvalError

        self.config, self.seg, self.log, self.keep_sheet = config, seg, log, keep_sheet
        self.iou_threshold, self.seed, self.baseline = float(iou_threshold), int(seed), baseline
        keys = ["model"]
        self.check = _PlaneCheck(self.iou_threshold) if config.filter.support_plane != "off" else None
        if self.check is not None:
            keys.append("model_no_plane_check")
        self.base = None
        if baseline == "plane":
            from .plane_baseline import PlaneClusterBaseline

            keys.append("plane")
            self.base = PlaneClusterBaseline(seed=self.seed)
        try:
            self.methods = {k: _Method(k, iou_threshold, cloud_tolerance) for k in keys}
        except ScoreError as exc:
            raise EvalError(str(exc)) from exc
        self.rejected: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.per_frame: list[dict[str, Any]] = []
        self.sheet: list[dict[str, Any]] = []
        self.layouts: Counter[str] = Counter()
        self.amodal_frames = 0

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        self.examples.setdefault(reason, detail)

    def _ground_truth(self, frame: Any) -> FrameResult | None:
        from .ground_truth import ground_truth_result

        if frame.visible is None:
            return None
        c = self.config
        self.amodal_frames += frame.amodal is not None
        return ground_truth_result(frame.visible, frame.amodal, depth=frame.depth, K=frame.K, depth_min=c.depth.min,
                                   depth_max=c.depth.max, occlusion_threshold=c.occlusion.threshold)

    def frame(self, ref: Any) -> None:
        """Load, run every method on, and score one frame (or count why it could not be)."""
        from ..core.images import FrameError
        from .frames import FramesError, load_frame

        t0 = time.perf_counter()
        try:
            frame = load_frame(ref, depth_scale=self.config.depth.scale_16uc1)
        except FramesError as exc:
            return self._reject("frame not readable", f"{ref.name}: {exc}")
        load_ms = (time.perf_counter() - t0) * 1e3
        self.layouts[frame.layout] += 1
        gt = self._ground_truth(frame)
        labels = None if gt is None else gt.label_image
        rec: dict[str, Any] = {"name": frame.name, "layout": frame.layout,
                               "gt": None if gt is None else len(gt.instances), "amodal_gt": frame.amodal is not None,
                               "notes": list(getattr(frame, "notes", []))}
        try:
            t1 = time.perf_counter()
            result = self.seg.process(frame.color, frame.depth, frame.K)
            t2 = time.perf_counter()
        except FrameError as exc:
            return self._reject("frame refused by the pipeline", f"{ref.name}: {exc}")
        lat = {"load": load_ms, **result.timings, "end_to_end": (t2 - t1) * 1e3}
        methods = {"model": self.methods["model"].add(result, gt, labels, lat)}
        if self.check is not None:
            methods["model_no_plane_check"] = self.methods["model_no_plane_check"].add(
                _with_dropped(result), gt, labels, {k: v for k, v in lat.items() if k != "support_plane"})
            rec["support_plane"] = self.check.add(frame.name, result, gt)
        base_result = None
        if self.base is not None:
            t1 = time.perf_counter()
            base_result = self.base.process(frame.color, frame.depth, frame.K)
            lat = {"load": load_ms, **base_result.timings, "end_to_end": (time.perf_counter() - t1) * 1e3}
            methods["plane"] = self.methods["plane"].add(base_result, gt, labels, lat)
        rec["methods"] = methods
        self.per_frame.append(rec)
        if len(self.sheet) < self.keep_sheet:
            self.sheet.append({"name": frame.name, "color": frame.color, "gt": gt, "model": result,
                               "plane": base_result, "rec": rec})
        self.log(f"{frame.name}: " + "; ".join(
            f"{METHODS[k]} {r.get('matched', '-')}/{rec['gt'] if rec['gt'] is not None else '-'} found, "
            f"{r.get('unmatched', r['pred'])} unmatched" for k, r in methods.items()))

    def report(self, root: str | Path, refs: list[Any], wall_s: float) -> dict[str, Any]:
        """The ``metrics.json`` document."""
        from .eval_report import model_info as _model_info

        model = _model_info(self.seg)
        if self.sheet:
            h, w = self.sheet[0]["color"].shape[:2]
            lo, hi = self.seg.predictor.input_size(h, w)
            model["network_input"] = f"short side {lo}, long side at most {hi} (for {w}x{h} frames)"
        return {
            "tool": "isr eval",
            "mode": "frames",
            "frames_root": str(root),
            "layouts": dict(self.layouts),
            "model": model,
            "baseline": self.baseline,
            "config": self.config.to_flat(),
            "seed": self.seed,
            "iou_threshold": self.iou_threshold,
            "frames": {"found": len(refs), "evaluated": len(self.per_frame),
                       "labelled": sum(1 for r in self.per_frame if r["gt"] is not None),
                       "with_amodal_gt": self.amodal_frames, "rejected": int(sum(self.rejected.values())),
                       "rejected_by_reason": dict(self.rejected), "rejected_examples": self.examples},
            "methods": {k: {"name": METHODS[k], **m.summary()} for k, m in self.methods.items()},
            "support_plane_check": self.check.summary(self.methods) if self.check is not None else None,
            "wall_s": wall_s,
            "per_frame": self.per_frame,
        }


# ---------------------------------------------------------------------------------------- CLI
def run_frames(args: Any) -> int:
    """``isr eval --frames DIR`` (called by :func:`~instance_seg_ros.tools.evaluate.run`)."""
    import shlex

    from ..core.config import ConfigError
    from ..core.model import WeightsError
    from .cli_config import build_config, parse_set
    from .eval_errors import EvalError
    from .eval_frames_report import _f, write_frames_outputs

    log = (lambda _m: None) if args.quiet else (lambda m: print(f"isr eval: {m}", file=sys.stderr))
    if args.out is None:
        args.out = f"{Path(args.frames).resolve().name or 'frames'}_eval"
    parts = ["isr", "eval", "--frames", str(args.frames), "--layout", args.layout]
    if args.baseline:
        parts += ["--baseline", args.baseline]
    if args.params:
        parts += ["--params", str(args.params)]
    for item in args.set:
        parts += ["--set", item]
    parts += ["--out", str(args.out), "--iou", f"{args.iou:g}"]
    if args.max_frames is not None:
        parts += ["--max-frames", str(args.max_frames)]
    try:
        K = _parse_intrinsics(args.intrinsics) if args.intrinsics else None
        config, notes = build_config(args.params, parse_set(args.set))
        for n in notes:
            log(n)
        report, sheet = evaluate_frames(
            args.frames, config=config, layout=args.layout, baseline=args.baseline, intrinsics=K,
            iou_threshold=args.iou, cloud_tolerance=args.cloud_tolerance, max_frames=args.max_frames, seed=args.seed,
            progress=not args.quiet, log=log)
    except (EvalError, ConfigError, WeightsError) as exc:
        print(f"isr eval: error: {exc}", file=sys.stderr)
        return 2
    report["command"] = shlex.join(parts)
    report["config_notes"] = notes
    paths = write_frames_outputs(report, sheet, args.out)
    f = report["frames"]
    for k, m in report["methods"].items():
        mt = m["matching"]
        u = m.get("uois") or {}
        print(f"isr eval: {METHODS[k]}: {mt['matched']} of {mt['num_gt']} objects found "
              f"(recall {_f(mt['recall'])}), {_f(mt['unmatched_per_frame'], 1)} unmatched per frame, overlap F "
              f"{_f(u.get('overlap_f'))}, boundary F {_f(u.get('boundary_f'))}, F@.75 {_f(u.get('f75'))}, "
              f"mask AP {_f(m['coco']['mask_ap'])}")
    print(f"isr eval: {f['evaluated']} of {f['found']} frames evaluated; report -> {paths[0]}")
    if f["evaluated"] == 0:
        print("isr eval: error: no frame could be evaluated; see the rejection reasons in the report.",
              file=sys.stderr)
        return 1
    return 0


def _parse_intrinsics(text: str) -> Intrinsics:
    from .eval_errors import EvalError

    try:
        fx, fy, cx, cy, w, h = (float(v) for v in text.split(","))
        return Intrinsics(fx, fy, cx, cy, int(w), int(h))
    except ValueError as exc:
        raise EvalError(f"--intrinsics must be 'fx,fy,cx,cy,width,height' (six numbers), got {text!r}.") from exc
