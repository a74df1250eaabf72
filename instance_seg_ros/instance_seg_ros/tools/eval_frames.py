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

__all__ = ["METHODS", "evaluate_frames", "run_frames", "write_frames_outputs"]

#: method keys -> the names the report shows
METHODS = {"model": "model", "model_no_plane_check": "model, no plane check", "plane": "plane + clusters baseline"}

SHEET = "contact_sheet.png"
_TILE_W = 320


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
    from ..core.eval_metrics import ScoreError
    from ..core.images import FrameError
    from .evaluate import EvalError, ground_truth_result
    from .frames import FramesError, find_frames, load_frame

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
    seg = segmenter
    if seg is None:
        import torch

        from ..core.pipeline import Segmenter

        torch.manual_seed(int(seed))
        seg = Segmenter(config, log=log)
        seg.load()
    plane_check = config.filter.support_plane != "off"
    try:
        methods = {"model": _Method("model", iou_threshold, cloud_tolerance)}
        if plane_check:
            methods["model_no_plane_check"] = _Method("model_no_plane_check", iou_threshold, cloud_tolerance)
        if baseline == "plane":
            methods["plane"] = _Method("plane", iou_threshold, cloud_tolerance)
    except ScoreError as exc:
        raise EvalError(str(exc)) from exc
    base = None
    if baseline == "plane":
        from .plane_baseline import PlaneClusterBaseline

        base = PlaneClusterBaseline(seed=int(seed))

    rejected: Counter[str] = Counter()
    examples: dict[str, str] = {}
    per_frame: list[dict[str, Any]] = []
    sheet: list[dict[str, Any]] = []
    layouts: Counter[str] = Counter()
    check = {"frames": 0, "frames_with_plane": 0, "plane_support": [], "dropped": 0, "dropped_matching_gt": 0,
             "dropped_matching_gt_examples": []}
    amodal_frames = 0
    t_start = time.perf_counter()
    from tqdm import tqdm

    for ref in tqdm(refs, desc="isr eval", unit="frame", disable=not progress, file=sys.stderr):
        t0 = time.perf_counter()
        try:
            frame = load_frame(ref, depth_scale=config.depth.scale_16uc1)
        except FramesError as exc:
            rejected["frame not readable"] += 1
            examples.setdefault("frame not readable", f"{ref.name}: {exc}")
            continue
        load_ms = (time.perf_counter() - t0) * 1e3
        layouts[frame.layout] += 1
        gt = gt_labels = None
        if frame.visible is not None:
            gt = ground_truth_result(frame.visible, frame.amodal, depth=frame.depth, K=frame.K,
                                     depth_min=config.depth.min, depth_max=config.depth.max,
                                     occlusion_threshold=config.occlusion.threshold)
            gt_labels = gt.label_image
            amodal_frames += frame.amodal is not None
        rec: dict[str, Any] = {"name": frame.name, "layout": frame.layout,
                               "gt": None if gt is None else len(gt.instances),
                               "amodal_gt": frame.amodal is not None, "notes": list(getattr(frame, "notes", []))}
        try:
            t1 = time.perf_counter()
            result = seg.process(frame.color, frame.depth, frame.K)
            t2 = time.perf_counter()
        except FrameError as exc:
            rejected["frame refused by the pipeline"] += 1
            examples.setdefault("frame refused by the pipeline", f"{ref.name}: {exc}")
            continue
        lat = {"load": load_ms, **result.timings, "end_to_end": (t2 - t1) * 1e3}
        methods_rec = {"model": methods["model"].add(result, gt, gt_labels, lat)}
        if plane_check:
            full = _with_dropped(result)
            methods_rec["model_no_plane_check"] = methods["model_no_plane_check"].add(
                full, gt, gt_labels, {k: v for k, v in lat.items() if k != "support_plane"})
            plane = result.support_plane
            check["frames"] += 1
            check["frames_with_plane"] += plane is not None
            if plane is not None:
                check["plane_support"].append(float(plane.support))
            check["dropped"] += len(result.dropped)
            hit = [d for d in result.dropped if gt is not None and _matches_gt(d, gt, iou_threshold)]
            check["dropped_matching_gt"] += len(hit)
            check["dropped_matching_gt_examples"] += [f"{frame.name} #{d.index} score {d.score:.2f}" for d in hit]
            rec["support_plane"] = {"found": plane is not None,
                                    "support": None if plane is None else round(float(plane.support), 3),
                                    "dropped": len(result.dropped), "dropped_matching_gt": len(hit)}
        base_result = None
        if base is not None:
            t1 = time.perf_counter()
            base_result = base.process(frame.color, frame.depth, frame.K)
            e2e = (time.perf_counter() - t1) * 1e3
            methods_rec["plane"] = methods["plane"].add(
                base_result, gt, gt_labels, {"load": load_ms, **base_result.timings, "end_to_end": e2e})
        rec["methods"] = methods_rec
        per_frame.append(rec)
        if len(sheet) < keep_sheet:
            sheet.append({"name": frame.name, "color": frame.color, "gt": gt, "model": result, "plane": base_result,
                          "rec": rec})
        log(f"{frame.name}: " + "; ".join(
            f"{METHODS[k]} {r.get('matched', '-')}/{rec['gt'] if rec['gt'] is not None else '-'} found, "
            f"{r.get('unmatched', r['pred'])} unmatched" for k, r in methods_rec.items()))
    wall_s = time.perf_counter() - t_start

    from ..core.eval_metrics import distribution

    supports = check.pop("plane_support")
    check["plane_support"] = distribution(supports)
    if plane_check:
        before = methods["model_no_plane_check"].scorer.summarize()["matching"]
        after = methods["model"].scorer.summarize()["matching"]
        check["unmatched_removed"] = before["unmatched"] - after["unmatched"]
        check["matched_lost"] = before["matched"] - after["matched"]
    labelled = sum(1 for r in per_frame if r["gt"] is not None)
    from .evaluate import _model_info

    model = _model_info(seg)
    if per_frame:
        h, w = sheet[0]["color"].shape[:2] if sheet else (0, 0)
        if h:
            lo, hi = seg.predictor.input_size(h, w)
            model["network_input"] = f"short side {lo}, long side at most {hi} (for {w}x{h} frames)"
    report = {
        "tool": "isr eval",
        "mode": "frames",
        "frames_root": str(root),
        "layouts": dict(layouts),
        "model": model,
        "baseline": baseline,
        "config": config.to_flat(),
        "seed": int(seed),
        "iou_threshold": float(iou_threshold),
        "frames": {"found": len(refs), "evaluated": len(per_frame), "labelled": labelled,
                   "with_amodal_gt": amodal_frames, "rejected": int(sum(rejected.values())),
                   "rejected_by_reason": dict(rejected), "rejected_examples": examples},
        "methods": {k: {"name": METHODS[k], **m.summary()} for k, m in methods.items()},
        "support_plane_check": check if plane_check else None,
        "wall_s": wall_s,
        "per_frame": per_frame,
    }
    return report, sheet


# ---------------------------------------------------------------------------------------- outputs
def write_frames_outputs(report: dict[str, Any], sheet: list[dict[str, Any]], out: str | Path) -> list[Path]:
    """Write ``report.md``, ``metrics.json`` and ``contact_sheet.png`` into ``out``; returns the paths."""
    import json

    from .eval_report import to_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(report)
    report["contact_sheet"] = SHEET if sheet else None
    (out / "metrics.json").write_text(json.dumps(to_json(report), indent=1) + "\n")
    paths = [out / "report.md", out / "metrics.json"]
    if sheet:
        contact_sheet(sheet, out / SHEET)
        paths.append(out / SHEET)
    (out / "report.md").write_text(format_frames_markdown(report))
    return paths


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}f}"


def headline_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The summary table of a frames report: a column per method, a row per figure."""
    ms = report["methods"]
    keys = list(ms)
    amodal = report["frames"]["with_amodal_gt"] > 0

    def row(label: str, get: Callable[[dict[str, Any]], Any], digits: int = 3) -> list[str]:
        vals = []
        for k in keys:
            try:
                vals.append(_f(get(ms[k]), digits))
            except (KeyError, TypeError):
                vals.append("n/a")
        return [label, *vals]

    iou = _f(report["iou_threshold"], 2)

    def uois(kind: str) -> list[str]:
        return [" / ".join(_f((ms[k].get("uois") or {}).get(f"{kind}_{x}")) for x in ("precision", "recall", "f"))
                for k in keys]

    rows = [
        [f"objects found (visible IoU >= {iou}, one-to-one) / labelled",
         *(f"{ms[k]['matching']['matched']} / {ms[k]['matching']['num_gt']}" for k in keys)],
        row(f"recall at IoU {iou}", lambda m: m["matching"]["recall"]),
        row("unmatched detections per frame", lambda m: m["matching"]["unmatched_per_frame"], 2),
        row(f"precision at IoU {iou}", lambda m: m["matching"]["precision"]),
        ["Overlap P / R / F", *uois("overlap")],
        ["Boundary P / R / F", *uois("boundary")],
        row("F@.75 (share of objects with overlap F > 0.75)", lambda m: m["uois"]["f75"]),
        row("mask AP (visible)", lambda m: m["coco"]["mask_ap"]),
        row("mask AP50 (visible)", lambda m: m["coco"]["mask_ap50"]),
    ]
    if amodal:
        rows += [row("amodal AP", lambda m: m["coco"]["amodal_ap"]),
                 row("amodal AP50", lambda m: m["coco"]["amodal_ap50"]),
                 row("amodal IoU of matched objects (mean)", lambda m: m["matching"]["mean_amodal_iou"]),
                 row("occlusion MAE of matched objects", lambda m: m["occlusion"]["mae"])]
    rows += [row("visible IoU of matched objects (mean)", lambda m: m["matching"]["mean_iou"]),
             row("3D centroid error of matched objects, mm (median)", lambda m: m["centroid_error_mm"]["p50"], 1),
             row("end-to-end ms per frame (median)", lambda m: m["latency_ms"]["end_to_end"]["p50"], 1)]
    return ["figure", *(ms[k]["name"] for k in keys)], rows


def format_frames_markdown(report: dict[str, Any]) -> str:
    """The ``report.md`` text of a frames report."""
    from .eval_report import _table

    r = report
    fr = r["frames"]
    L = ["# isr eval report: RGB-D frames", "", "Command:", "", "```", r.get("command", "(called from Python)"), "```",
         ""]
    L += [f"Frames: {fr['evaluated']} of {fr['found']} evaluated under `{r['frames_root']}` "
          f"({', '.join(f'{n} {k}' for k, n in r['layouts'].items()) or 'none'}); {fr['labelled']} labelled, "
          f"{fr['with_amodal_gt']} with amodal masks; {fr['rejected']} rejected.", ""]
    if fr["rejected_by_reason"]:
        L += _table(["rejected because", "frames", "first example"],
                    [[k, n, fr["rejected_examples"].get(k, "")] for k, n in fr["rejected_by_reason"].items()])
    L += ["## Summary", ""]
    header, rows = headline_rows(r)
    L += _table(header, rows)
    c = r.get("support_plane_check")
    if c:
        L += ["## Support-plane check (`filter.support_plane: auto`)", ""]
        L += _table(["", "value"], [
            ["frames with a support plane found", f"{c['frames_with_plane']} of {c['frames']}"],
            ["plane support (share of valid depth): median / min",
             f"{_f(c['plane_support']['p50'])} / {_f(_min_of(r))}"],
            ["detections dropped", c["dropped"]],
            [f"of which matched a labelled object (IoU >= {_f(r['iou_threshold'], 2)})", c["dropped_matching_gt"]],
            ["unmatched detections removed", c.get("unmatched_removed", "n/a")],
            ["labelled objects lost (matched before, not after)", c.get("matched_lost", "n/a")],
        ])
        if c["dropped_matching_gt_examples"]:
            L += ["Dropped detections that matched a labelled object: "
                  + ", ".join(c["dropped_matching_gt_examples"][:20]), ""]
    L += ["## Per frame", "", "found / labelled, unmatched detections, overlap F, for each method.", ""]
    keys = list(r["methods"])
    rows = []
    for rec in r["per_frame"]:
        cells = [rec["name"], rec["gt"] if rec["gt"] is not None else "-"]
        for k in keys:
            m = rec["methods"].get(k, {})
            cells.append(f"{m.get('matched', '-')}, {m.get('unmatched', m.get('pred', '-'))}, "
                         f"{_f(m.get('overlap_f'), 2)}")
        if c:
            sp = rec.get("support_plane") or {}
            cells.append(f"{'yes' if sp.get('found') else 'no'} {_f(sp.get('support'), 2)}, dropped "
                         f"{sp.get('dropped', 0)}")
        rows.append(cells)
    L += _table(["frame", "labelled", *(r["methods"][k]["name"] for k in keys),
                 *(["plane (support), dropped"] if c else [])], rows)
    L += ["## Latency", "", "Per stage (ms) on this machine: load = reading the PNG files; end_to_end = the method "
          "on one frame (for the model: `Segmenter.process`).", ""]
    for k, m in r["methods"].items():
        if k == "model_no_plane_check":
            continue
        L += [f"**{m['name']}** ({_f(m['fps'], 2)} fps)", ""]
        L += _table(["stage", "p50", "p90", "max", "frames"],
                    [[s, _f(d["p50"], 1), _f(d["p90"], 1), _f(d["max"], 1), d["count"]]
                     for s, d in m["latency_ms"].items() if s != "total"])
    if r.get("model"):
        L += ["## Model", ""]
        L += _table(["", ""], [[k.replace("_", " "), ", ".join(map(str, v)) if isinstance(v, list) else v]
                               for k, v in r["model"].items()])
    if r.get("contact_sheet"):
        L += ["## Contact sheet", "", "Each row a frame: ground truth; the model (visible contours solid, amodal "
              "dashed, detections dropped by the support-plane check grey); the baseline.", "",
              f"![contact sheet]({r['contact_sheet']})", ""]
    L += ["## Definitions", "",
          "- Found / recall / precision / unmatched: greedy one-to-one matching in descending score at visible-mask "
          f"IoU >= {_f(r['iou_threshold'], 2)}; unlabelled clutter (a keyboard, cables) counts as unmatched.",
          "- Overlap and Boundary P/R/F, F@.75: UOIS-Net (Xie et al. 2021) definitions on label images (the "
          "higher-scored detection owns an overlap), Hungarian matching on the overlap F-measure, boundary tolerance "
          "0.3 % of the image diagonal; computed per frame and averaged over frames.",
          "- AP: pycocotools `COCOeval(iouType='segm')`, class-agnostic, visible masks; amodal masks where the frames "
          "have them (ground-truth amodal = its amodal silhouette united with its visible mask).",
          "- 3D centroid error: against the mean of the labelled visible mask lifted with the frame's depth.",
          "- The support-plane check's row counts use the same matching on the detections before and after it.",
          ""]
    L += ["## Parameters", ""]
    L += _table(["parameter", "value"], [[k, v] for k, v in r["config"].items()])
    return "\n".join(L)


def _min_of(report: dict[str, Any]) -> float | None:
    vals = [rec["support_plane"]["support"] for rec in report["per_frame"]
            if rec.get("support_plane") and rec["support_plane"]["support"] is not None]
    return min(vals) if vals else None


def contact_sheet(rows: list[dict[str, Any]], path: Path) -> Path:
    """A PNG with one row per frame: ground truth | model | baseline (when run), each tile 320 px wide."""
    import cv2

    from ..core.visualize import draw_overlay

    tiles_per_row = 2 + any(r["plane"] is not None for r in rows)
    out_rows = []
    for r in rows:
        color = r["color"]
        h, w = color.shape[:2]
        tiles = []
        gt = r["gt"]
        t = draw_overlay(color, gt, labels=False, alpha=0.3) if gt is not None else color.copy()
        tiles.append(_caption(t, f"{r['name']}  ground truth: {r['rec']['gt'] if gt is not None else 'none'}"))
        res = r["model"]
        t = draw_overlay(color, res, labels=False, alpha=0.3)
        for d in res.dropped:
            x, y, _, _ = d.bbox
            cs, _ = cv2.findContours(np.ascontiguousarray(d.mask, np.uint8), cv2.RETR_EXTERNAL,
                                     cv2.CHAIN_APPROX_NONE, offset=(int(x), int(y)))
            cv2.drawContours(t, cs, -1, (150, 150, 150), 2, cv2.LINE_AA)
        m = r["rec"]["methods"]["model"]
        tiles.append(_caption(t, f"model: {m.get('matched', '-')} found, {m.get('unmatched', m['pred'])} unmatched, "
                                 f"{len(res.dropped)} dropped"))
        if tiles_per_row == 3:
            b = r["plane"]
            if b is None:
                tiles.append(_caption(np.zeros_like(color), "baseline not run"))
            else:
                t = draw_overlay(color, b, labels=False, alpha=0.3, amodal=False)
                m = r["rec"]["methods"]["plane"]
                tiles.append(_caption(t, f"plane baseline: {m.get('matched', '-')} found, "
                                         f"{m.get('unmatched', m['pred'])} unmatched"))
        th = int(round(h * _TILE_W / w))
        out_rows.append(np.hstack([cv2.resize(x, (_TILE_W, th), interpolation=cv2.INTER_AREA) for x in tiles]))
    width = max(x.shape[1] for x in out_rows)
    sheet = np.vstack([np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0))) for x in out_rows])
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return path


def _caption(img: np.ndarray, text: str) -> np.ndarray:
    import cv2

    out = np.ascontiguousarray(img).copy()
    scale = max(0.5, out.shape[1] / 900)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    cv2.rectangle(out, (0, 0), (min(out.shape[1], tw + 8), th + base + 8), (0, 0, 0), cv2.FILLED)
    cv2.putText(out, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 2, cv2.LINE_AA)
    return out


# ---------------------------------------------------------------------------------------- CLI
def run_frames(args: Any) -> int:
    """``isr eval --frames DIR`` (called by :func:`~instance_seg_ros.tools.evaluate.run`)."""
    import shlex

    from ..core.config import ConfigError
    from ..core.model import WeightsError
    from .bench import BenchError, _parse_set, build_config
    from .evaluate import EvalError

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
        config, notes = build_config(args.params, _parse_set(args.set))
        for n in notes:
            log(n)
        report, sheet = evaluate_frames(
            args.frames, config=config, layout=args.layout, baseline=args.baseline, intrinsics=K,
            iou_threshold=args.iou, cloud_tolerance=args.cloud_tolerance, max_frames=args.max_frames, seed=args.seed,
            progress=not args.quiet, log=log)
    except (EvalError, ConfigError, BenchError, WeightsError) as exc:
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
    from .evaluate import EvalError

    try:
        fx, fy, cx, cy, w, h = (float(v) for v in text.split(","))
        return Intrinsics(fx, fy, cx, cy, int(w), int(h))
    except ValueError as exc:
        raise EvalError(f"--intrinsics must be 'fx,fy,cx,cy,width,height' (six numbers), got {text!r}.") from exc
