"""``isr grasps``' outputs: the figures of :mod:`.grasps`' records as ``metrics.json``, ``report.md`` and a picture."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from ..grasp.quality import GraspCheck, summarize_checks
from .grasps import VARIANTS, Collected, dump_json

__all__ = ["summarize", "write_outputs"]

_CHECK_FIELDS = {f.name for f in fields(GraspCheck)}


def _dist(values: list[float]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"median": None, "p90": None}
    return {"median": float(np.median(v)), "p90": float(np.percentile(v, 90))}


def _checks_summary(rows: list[dict], key: str, variant: str, top_k: int) -> dict[str, Any]:
    by_instance: dict[tuple[str, int], list[GraspCheck]] = {}
    for r in sorted(rows, key=lambda r: r["rank"]):
        c = r[key][variant]
        by_instance.setdefault((r["frame"], r["instance"]), []).append(
            GraspCheck(**{k: v for k, v in c.items() if k in _CHECK_FIELDS}))
    s = summarize_checks(by_instance, top_k=sorted({1, top_k}))
    return {k: v for k, v in s.items() if k.startswith("top")}


def summarize(got: Collected, top_k: int, *, surfaces: bool = True) -> dict[str, dict[str, Any]]:
    """Per ``source/input_frame``: objects, objects with grasps, check rates per width variant for the top-1 and
    top-k grasps, widths, approach directions and planning cost. ``surfaces``: the checks had whole object surfaces
    (simulation), so the width the object needs along the closing line is measured; not on visible surfaces only,
    where the line meets no far side."""
    out: dict[str, dict[str, Any]] = {}
    keys = sorted({(i["source"], i["input_frame"]) for i in got.instances})
    for source, frame_in in keys:
        inst = [i for i in got.instances if (i["source"], i["input_frame"]) == (source, frame_in)]
        rows = [g for g in got.grasps if (g["source"], g["input_frame"]) == (source, frame_in)]
        frames = [f for f in got.frames if (f["source"], f["input_frame"]) == (source, frame_in)]
        res: dict[str, Any] = {"objects": len(inst), "objects_with_grasps": sum(i["grasps"] > 0 for i in inst),
                               "grasps": len(rows)}
        res["objects_with_grasps_fraction"] = res["objects_with_grasps"] / len(inst) if inst else None
        res["contact_on_object"] = float(np.mean([r["target"] > 0 for r in rows])) if rows else None
        for key in ("checks", "checks_scene"):
            if key == "checks" or any(key in g for g in got.grasps):
                res[key] = {v: _checks_summary(rows, key, v, top_k) for v in VARIANTS}
        widths = [r["width"] for r in rows]
        needed = [r["t_max"] - r["t_min"] if surfaces else float("nan") for r in rows]
        both = [(w, n) for w, n in zip(widths, needed, strict=True) if np.isfinite(n) and n > 0.002]
        plus = [r["t_max"] > -r["t_min"] for r in rows if surfaces and np.isfinite(r["t_max"])]
        res["width"] = {
            "predicted_m": _dist(widths),
            "zero_fraction": float(np.mean([w <= 0 for w in widths])) if widths else None,
            "needed_m": _dist(needed),
            "predicted_over_needed": _dist([w / n for w, n in both]),
            "object_on_closing_side": float(np.mean(plus)) if plus else None,
        }
        ups = [r["approach_up"] for r in rows if r["approach_up"] is not None]
        res["approach"] = {"up_dot": _dist(ups), "from_above": float(np.mean([u < 0 for u in ups])) if ups else None}
        res["cost_ms"] = {"frame": _dist([f["ms"] for f in frames]), "instance": _dist([i["ms"] for i in inst])}
        out[f"{source}/{frame_in}"] = res
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _mm(x: float | None) -> str:
    return "-" if x is None else f"{1000 * x:.1f}"


def _ms(d: dict[str, float | None]) -> str:
    return "-" if d["median"] is None else f"{d['median']:.0f} / {d['p90']:.0f}"


def _report(metrics: dict[str, Any], got: Collected) -> str:
    real = metrics["kind"] == "real"
    k = metrics["top_k"]
    lines = [f"# isr grasps: {'real frames' if real else 'simulated scenes'}", ""]
    if real:
        lines += [f"{metrics['frames']} frames from `{metrics['source']}`, our model's instances (default config). "
                  "No object meshes: checks use the depth cloud (visible surfaces only). `collides`: a gripper part "
                  "holds points of another instance; `collides (scene)`: of anything but the target (table, "
                  "background, clutter too).", ""]
    else:
        lines += [f"{metrics['frames']} random table scenes (seed {metrics['seed']}, {metrics['size']}, noise-free "
                  "depth). Grasps checked against the true object and table surfaces.", ""]
    lines += [f"Planner: Contact-GraspNet (cgn-pytorch) on {metrics['device']}, score >= {metrics['score_threshold']}, "
              f"top {k} per instance. Width variants: as predicted; `max_width`: opened to 0.08 m about the same "
              "pose; `max_width_contact`: opened to 0.08 m with one finger kept on the contact point. "
              "`success` = closing region holds the object, no collision, gripper not in the object itself.", ""]
    for name, res in metrics["results"].items():
        lines += [f"## {name}", "",
                  f"objects with grasps: {res['objects_with_grasps']} / {res['objects']} "
                  f"({_pct(res['objects_with_grasps_fraction'])}); grasps checked: {res['grasps']}, their contact on "
                  f"an object: {_pct(res['contact_on_object'])}", ""]
        for key, title in (("checks", ""), ("checks_scene", " (scene)")):
            if key not in res:
                continue
            lines += ["| variant | grasps | contains | collides" + title + " | in own object | "
                      "contains & no collision | success |", "|---|---|---|---|---|---|---|"]
            for variant, tops in res[key].items():
                for top, r in tops.items():
                    lines.append(f"| {variant} {top} | {r['grasps']} | {_pct(r['contains'])} | {_pct(r['collides'])} | "
                                 f"{_pct(r['hits_target'])} | {_pct(r['contains_no_collision'])} | "
                                 f"{_pct(r['success'])} |")
            lines.append("")
        w, a = res["width"], res["approach"]
        ratio = w["predicted_over_needed"]["median"]
        lines += [f"widths (mm): predicted median {_mm(w['predicted_m']['median'])}, p90 "
                  f"{_mm(w['predicted_m']['p90'])}, {_pct(w['zero_fraction'])} exactly 0"
                  + ("; the object's extent along the closing line and its side are not measurable on visible "
                     "surfaces." if real else
                     f"; the object along the closing line {_mm(w['needed_m']['median'])} (median); predicted / "
                     f"needed median {'-' if ratio is None else round(ratio, 2)}; the object lies on the closing (+x) "
                     f"side of the contact for {_pct(w['object_on_closing_side'])}."),
                  "",
                  f"approach vs up ({'the support plane normal' if real else 'gravity'}): median dot "
                  f"{'-' if a['up_dot']['median'] is None else round(a['up_dot']['median'], 2)}, from above "
                  f"{_pct(a['from_above'])}.", "",
                  f"planning cost (ms, median / p90): per frame {_ms(res['cost_ms']['frame'])}, per instance "
                  f"{_ms(res['cost_ms']['instance'])}.", ""]
    if real:
        lines += ["## Per frame", "", "| frame | input | instances | with grasps | grasps | top-1 contains | "
                  "top-1 collides | top-1 success | ms |", "|---|---|---|---|---|---|---|---|---|"]
        for f in got.frames:
            inst = [i for i in got.instances if (i["frame"], i["input_frame"]) == (f["frame"], f["input_frame"])]
            top1 = [g["checks"]["as_predicted"] for g in got.grasps
                    if (g["frame"], g["input_frame"]) == (f["frame"], f["input_frame"]) and g["rank"] == 0]

            def frac(key: str, top1: list[dict] = top1) -> str:
                return _pct(float(np.mean([c[key] for c in top1])) if top1 else None)

            lines.append(f"| {f['frame']} | {f['input_frame']} | {f['instances']} | "
                         f"{sum(i['grasps'] > 0 for i in inst)} | {sum(i['grasps'] for i in inst)} | "
                         f"{frac('contains')} | {frac('collides')} | {frac('success')} | {f['ms']:.0f} |")
        lines.append("")
    lines += [f"Figure: `{metrics['figure']}` (top grasps as projected grippers at their predicted width, red = score "
              "0.5 to green = 1, white dot = contact).", ""]
    return "\n".join(lines)


def _figure(path: Path, panels: list[tuple[str, str, np.ndarray]], cols: int) -> None:
    import cv2

    if not panels:
        return
    h0, w0 = panels[0][2].shape[:2]
    scale = min(1.0, 360 / w0)
    size = (int(w0 * scale), int(h0 * scale))
    blocks = []
    for frame_in in dict.fromkeys(p[1] for p in panels):
        tiles = []
        for name, fi, img in panels:
            if fi != frame_in:
                continue
            tile = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            cv2.putText(tile, f"{name} [{frame_in}]", (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3,
                        cv2.LINE_AA)
            cv2.putText(tile, f"{name} [{frame_in}]", (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                        cv2.LINE_AA)
            tiles.append(tile)
        while len(tiles) % cols:
            tiles.append(np.full_like(tiles[0], 255))
        blocks += [np.concatenate(tiles[i:i + cols], axis=1) for i in range(0, len(tiles), cols)]
    cv2.imwrite(str(path), np.concatenate(blocks, axis=0)[..., ::-1])


def write_outputs(out: Path, args: argparse.Namespace, got: Collected, frames_in: list[str], seconds: float,
                  device: str) -> dict[str, Any]:
    """Write ``metrics.json``, ``report.md`` and the figure; returns the metrics."""
    real = args.frames is not None
    figure = "grasps_real.png" if real else "grasps_sim.png"
    metrics = {
        "kind": "real" if real else "sim",
        "source": args.frames if real else "sim",
        "frames": len({f["frame"] for f in got.frames}),
        "size": None if real else args.size, "seed": None if real else args.seed,
        "input_frames": frames_in, "top_k": args.top_k, "score_threshold": args.score_threshold,
        "max_instances": args.max_instances, "device": device, "seconds": seconds, "figure": figure,
        "results": summarize(got, args.top_k, surfaces=not real),
    }
    dump_json(out / "metrics.json", {**metrics, "per_frame": got.frames, "per_instance": got.instances,
                                     "per_grasp": got.grasps})
    (out / "report.md").write_text(_report(metrics, got))
    _figure(out / figure, got.panels, 5 if real else max(1, min(4, metrics["frames"])))
    return metrics
