"""Output of ``isr eval``: ``report.md``, ``metrics.json`` and the PNG plots, from the evaluator's report dict.

Plots (matplotlib's Agg canvas, no pyplot state): ``pr_visible.png`` and ``pr_amodal.png`` (COCOeval's
interpolated precision over its 101 recall points at IoU 0.5, 0.75 and the mean over 0.5:0.95),
``latency_hist.png`` (per-frame end-to-end and inference time, or the recorded latency in predictions mode) and
``occlusion_error.png`` (mean absolute occlusion error of the matched instances per ground-truth occlusion level).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PLOTS", "format_markdown", "markdown_table", "model_info", "to_json", "write_outputs"]

PLOTS = ("pr_visible.png", "pr_amodal.png", "latency_hist.png", "occlusion_error.png")


def to_json(o: Any) -> Any:
    """``o`` with NaN/inf as None, numpy scalars and arrays as Python numbers and lists (strict JSON)."""
    if isinstance(o, dict):
        return {str(k): to_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [to_json(v) for v in o]
    if isinstance(o, np.ndarray):
        return to_json(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def model_info(seg: Any) -> dict[str, Any]:
    """The report's ``model``: weights, backbone, input mode, classes, device, precision, torch threads."""
    import torch

    meta, pred = seg.meta, seg.predictor
    return {"weights": seg.config.model.weights, "backbone": meta.backbone, "input_mode": meta.input_mode,
            "classes": list(meta.classes), "device": str(pred.device), "precision": pred.precision,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def write_outputs(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Write ``report.md``, ``metrics.json`` and :data:`PLOTS` into ``out`` (created); returns their paths,
    ``report.md`` first."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(report)
    report["plots"] = list(PLOTS)
    (out / "metrics.json").write_text(json.dumps(to_json(report), indent=1) + "\n")
    _pr_plot(report, "visible", out / PLOTS[0])
    _pr_plot(report, "amodal", out / PLOTS[1])
    _latency_plot(report, out / PLOTS[2])
    _occlusion_plot(report, out / PLOTS[3])
    (out / "report.md").write_text(format_markdown(report))
    return [out / "report.md", out / "metrics.json", *(out / p for p in PLOTS)]


# ---------------------------------------------------------------------------------------- markdown
def _f(v: Any, digits: int = 3, scale: float = 1.0) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, (int, np.integer)) and scale == 1.0:
        return str(int(v))
    return f"{float(v) * scale:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table (``|`` in cells escaped, newlines flattened), then an empty line."""

    def esc(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return lines + [""]


def format_markdown(report: dict[str, Any]) -> str:
    """The ``report.md`` text of a report dict (see :func:`~instance_seg_ros.tools.evaluate.evaluate`)."""
    r = report
    L: list[str] = ["# isr eval report", ""]
    L += ["Command:", "", "```", r.get("command", "(called from Python)"), "```", ""]
    if r.get("invoked_as"):
        L += [f"Invoked as: `{r['invoked_as']}`", ""]
    for section in (_md_input, _md_model, _md_frames, _md_accuracy, _md_tracking, _md_latency, _md_definitions):
        L += section(r)
    return "\n".join(L)


def _md_input(r: dict[str, Any]) -> list[str]:
    bag = r["bag"]
    L = ["## Input", ""]
    rows = [["bag", f"{bag['path']} ({bag.get('storage') or 'unknown storage'})"], ["mode", r["mode"]]]
    rows += [[k.replace("_", " "), v] for k, v in r["inputs"].items()]
    L += markdown_table(["", ""], rows)
    L += markdown_table(["topic in the bag", "type", "messages"],
                        [[t, v["type"], v["messages"]] for t, v in bag["topics"].items()])
    return L


def _md_model(r: dict[str, Any]) -> list[str]:
    L = ["## Model and parameters", ""]
    if r.get("model"):
        L += markdown_table(["model", ""], [[k.replace("_", " "), ", ".join(map(str, v)) if isinstance(v, list) else v]
                                            for k, v in r["model"].items()])
    else:
        L += [f"Recorded predictions from `{r['inputs'].get('predictions')}`: the node's own parameters are not in "
              "the bag; the values below only set the stamp pairing (`sync.slop`) and, for JSON ground truth, the "
              "`occlusion.threshold` of its `is_occluded` flags.", ""]
    for n in r.get("config_notes") or []:
        L += [f"- note: {n}"]
    if r.get("config_notes"):
        L += [""]
    L += markdown_table(["parameter", "value"], [[k, v] for k, v in r["config"].items()])
    return L


def _md_frames(r: dict[str, Any]) -> list[str]:
    fr = r["frames"]
    L = ["## Frames", ""]
    read = "frames in the bag (" + ("color" if r["mode"] == "pipeline" else "prediction") + " messages read)"
    rows = [[read, fr["messages"]]]
    if fr.get("frame_step", 1) != 1:
        rows.append([f"skipped (--frame-step {fr['frame_step']}: one frame in {fr['frame_step']} evaluated)",
                     fr["skipped"]])
    L += markdown_table(["", "count"], [*rows, ["evaluated", fr["evaluated"]], ["rejected", fr["rejected"]]])
    if fr["rejected_by_reason"]:
        L += markdown_table(["rejected because", "frames", "first example"],
                            [[k, n, fr["rejected_examples"].get(k, "")] for k, n in fr["rejected_by_reason"].items()])
    if fr.get("notes"):
        L += markdown_table(["other input notes", "count"], [[k, n] for k, n in fr["notes"].items()])
    return L


def _md_accuracy(r: dict[str, Any]) -> list[str]:
    c, m, o = r["coco"], r["matching"], r["occlusion"]
    ce, cp = r["centroid_error_mm"], r["cloud_precision"]
    iou = _f(m["iou_threshold"], 2)
    L = ["## Accuracy", ""]
    rows = [
        ["mask AP (visible)", _f(c["mask_ap"])], ["mask AP50 (visible)", _f(c["mask_ap50"])],
        ["mask AP75 (visible)", _f(c["mask_ap75"])],
        ["mask AP small / medium / large", " / ".join(_f(c[k]) for k in ("mask_ap_small", "mask_ap_medium",
                                                                          "mask_ap_large"))],
        ["mask AR@100 (visible)", _f(c["mask_ar100"])],
        ["amodal AP", _f(c["amodal_ap"])], ["amodal AP50", _f(c["amodal_ap50"])],
        ["amodal AP75", _f(c["amodal_ap75"])], ["amodal AR@100", _f(c["amodal_ar100"])],
        ["occlusion MAE (COCO matches at IoU 0.5)", _f(o["mae_coco"])],
        [f"occlusion MAE (matches at IoU {iou})", _f(o["mae"])],
        [f"is_occluded accuracy (matches at IoU {iou})", _f(o["is_occluded_accuracy"])],
        ["ground-truth objects / predictions", f"{m['num_gt']} / {m['num_pred']}"],
        [f"matched at visible IoU >= {iou}", m["matched"]],
        [f"recall at IoU {iou}", _f(m["recall"])], [f"precision at IoU {iou}", _f(m["precision"])],
        ["mean IoU of the matches", _f(m["mean_iou"])],
        ["3D centroid error, mm: mean / p50 / p90 / max",
         " / ".join(_f(ce[k], 1) for k in ("mean", "p50", "p90", "max")) + f" (n = {ce['count']})"],
        [f"point-cloud precision (points within {_f(cp['tolerance_m'] * 1e3, 1)} mm of the true object): "
         "mean over instances / over all points",
         f"{_f(cp['mean'])} / {_f(cp['pointwise'])} ({cp['instances']} instances, {cp['points']} points)"],
    ]
    L += markdown_table(["metric", "value"], rows)
    L += ["Occlusion error per ground-truth occlusion level (matched instances):", ""]
    L += markdown_table(["occlusion", "instances", "MAE", "is_occluded accuracy"],
                        [[f"{b['low']:.1f}-{b['high']:.1f}", b["count"], _f(b["mae"]), _f(b["is_occluded_accuracy"])]
                         for b in o["by_level"]])
    return L


def _md_tracking(r: dict[str, Any]) -> list[str]:
    t = r.get("tracking")
    if t is None:  # a report written before the tracking figures
        return []
    L = ["## Tracking", "", f"Track ids from {t['ids_from']}; matched to the ground truth's ids at visible-mask IoU "
         f">= {_f(t['iou_threshold'], 2)}.", ""]
    if t["status"] != "ok":
        return L + [f"No tracking figures: {t['status']}.", ""]
    L += markdown_table(["metric", "value"], [
        ["IDF1", _f(t["idf1"])], ["IDP / IDR", f"{_f(t['idp'])} / {_f(t['idr'])}"],
        ["IDF1 on detected objects (detector misses and false positives left out)", _f(t.get("idf1_detected"))],
        ["MOTA", _f(t["mota"])], ["MOTP (mean IoU of the matches)", _f(t["motp"])],
        ["ID switches", f"{t['id_switches']} ({_f(t['id_switches_per_100'], 2)} per 100 ground-truth object-frames)"],
        ["frames counted", t["frames"]],
        ["ground-truth object-frames / identities", f"{t['gt_objects']} / {t['gt_ids']}"],
        ["tracked predictions (object-frames) / track ids", f"{t['predictions']} / {t['pred_ids']}"],
        ["matches / misses / false positives", f"{t['matches']} / {t['misses']} / {t['false_positives']}"],
    ])
    ms, st = t.get("tracker_update_ms"), t.get("tracker")
    if ms:
        L += [f"Tracker update per frame: median {_f(ms['p50'], 2)} ms, p90 {_f(ms['p90'], 2)} ms, max "
              f"{_f(ms['max'], 2)} ms ({ms['count']} frames)."
              + (f" Ids issued: {st['ids_issued']}; tracker resets: {st['resets']}." if st else ""), ""]
    for note, n in t.get("notes", {}).items():
        L += [f"- {note}: {n}"]
    return L + ([""] if t.get("notes") else [])


def _md_latency(r: dict[str, Any]) -> list[str]:
    L = ["## Latency", "", r.get("latency_note", ""), ""]
    L += markdown_table(["stage (ms)", "p50", "p90", "p99", "mean", "max", "frames"],
                        [[s, *(_f(d[k], 2) for k in ("p50", "p90", "p99", "mean", "max")), d["count"]]
                         for s, d in r["latency_ms"].items()])
    L += [f"Frames per second: {_f(r['fps'], 2)}. Wall time of the whole evaluation: {_f(r['wall_s'], 1)} s.", ""]
    L += ["## Plots", ""]
    return L + [f"![{p}]({p})" for p in PLOTS] + [""]


def _md_definitions(r: dict[str, Any]) -> list[str]:
    iou = _f(r["matching"]["iou_threshold"], 2)
    return ["## Definitions", "",
            "- AP, AP50, AP75, AR@100: pycocotools `COCOeval(iouType='segm')`, class-agnostic, on the visible masks "
            "and, separately, on the amodal masks (ground-truth area = amodal area).",
            "- Matching (recall, precision, occlusion, centroid, point-cloud figures): greedy one-to-one in descending "
            f"score at visible-mask IoU >= {iou}.",
            "- Occlusion MAE: mean |predicted - true occluded fraction|; is_occluded accuracy: share of matches whose "
            "flag equals the ground truth's.",
            "- 3D centroid error: |predicted - true centroid| (camera optical frame), for matches where both are "
            "known.",
            "- Point-cloud precision: share of an instance's points within the tolerance of the nearest point of its "
            "matched ground-truth object's cloud.",
            "- Tracking (CLEAR MOT, IDF1; `core/mot_metrics.py`): per frame in stamp order, ground-truth ids against "
            f"the predictions' track ids (track id 0 left out) at visible-mask IoU >= {iou}. MOTA = 1 - (misses + "
            "false positives + ID switches) / ground-truth object-frames; MOTP = mean IoU of the matches; an ID "
            "switch is a ground-truth object matched to another track id than at its previous match; IDF1 = "
            "2 IDTP / (2 IDTP + IDFP + IDFN) with one track id per ground-truth identity over the whole sequence.",
            ""]


# ---------------------------------------------------------------------------------------- plots
def _figure(w: float = 6.0, h: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _pr_plot(report: dict[str, Any], kind: str, path: Path) -> None:
    fig, ax = _figure()
    pr = report["pr_curves"]
    curves = pr.get(kind)
    ap = report["coco"]["mask_ap" if kind == "visible" else "amodal_ap"]
    if not curves:
        _no_data(ax, "no detections or no ground truth")
    else:
        recall = np.asarray(pr["recall"], dtype=float)
        for key, label in (("iou50", "IoU 0.50"), ("iou75", "IoU 0.75"), ("mean", "mean IoU 0.50:0.95")):
            p = np.asarray([np.nan if v is None else v for v in curves[key]], dtype=float)
            ax.plot(recall, p, label=label)
        ax.legend(loc="lower left")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated)")
    ax.set_title(f"{kind} masks: precision-recall (AP {_f(ap)})")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _latency_plot(report: dict[str, Any], path: Path) -> None:
    fig, ax = _figure()
    keys = ("end_to_end", "inference") if report["mode"] == "pipeline" else ("recorded",)
    series = {k: [f["latency_ms"][k] for f in report["per_frame"] if k in f.get("latency_ms", {})] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if series:
        n = max(len(v) for v in series.values())
        bins = np.histogram_bin_edges(np.concatenate([np.asarray(v) for v in series.values()]),
                                      bins=min(30, max(5, n // 2)))
        for k, v in series.items():
            ax.hist(v, bins=bins, alpha=0.6, label=f"{k} (p50 {np.median(v):.1f} ms)")
        ax.legend()
    else:
        _no_data(ax, "no evaluated frames")
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("frames")
    ax.set_title("latency per frame")
    _save(fig, path)


def _occlusion_plot(report: dict[str, Any], path: Path) -> None:
    fig, ax = _figure()
    levels = report["occlusion"]["by_level"]
    x = np.array([(b["low"] + b["high"]) / 2 for b in levels])
    mae = np.array([np.nan if b["mae"] is None else b["mae"] for b in levels], dtype=float)
    counts = [b["count"] for b in levels]
    if np.isfinite(mae).any():
        ax.bar(x, np.nan_to_num(mae), width=0.08)
        for xi, mi, n in zip(x, mae, counts, strict=True):
            if n:
                ax.text(xi, (mi if np.isfinite(mi) else 0) + 0.005, f"n={n}", ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, max(float(np.nanmax(mae)), 0.01) * 1.15)
    else:
        _no_data(ax, "no matched instances")
    ax.set_xlim(0, 1)
    ax.set_xlabel("ground-truth occluded fraction")
    ax.set_ylabel("mean |predicted - true| occlusion")
    ax.set_title("occlusion error vs occlusion level")
    _save(fig, path)
