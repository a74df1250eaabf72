"""Outputs of ``isr eval --frames``: ``report.md``, ``metrics.json`` and ``contact_sheet.png`` from the report dict
of :func:`~instance_seg_ros.tools.eval_frames.evaluate_frames`."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SHEET", "contact_sheet", "format_frames_markdown", "headline_rows", "write_frames_outputs"]

SHEET = "contact_sheet.png"
_TILE_W = 320


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
    from .eval_report import markdown_table as _table

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
