"""The human-readable table of an ``isr bench`` report (:func:`format_report`): per-stage median and p99, ours
beside the baseline with their ratio, frames per second, time outside the network, memory, agreement with the
reference path and the node-level latency."""

from __future__ import annotations

from typing import Any

import numpy as np

from .bench_stats import STAGES

__all__ = ["format_report"]


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    return f"{v:.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of a :func:`bench` report."""
    o, b, r = report["ours"], report.get("baseline"), report.get("ratio")
    m = report["machine"]
    lines = [
        f"isr bench: {report['model']['backbone']} ({report['model']['weights']} weights, network input "
        f"{report['model']['network_input'][0]}/{report['model']['network_input'][1]} px) on {report['device']} "
        f"{report['precision']}, {m['torch_threads']} torch threads, {m['cpu']}"
        + (f", load average {m['load_average'][0]}" if "load_average" in m else ""),
        f"frame {report['frame']['width']}x{report['frame']['height']}: {o['instances']} instances, "
        f"{o['points']} points; {report['runs']} runs after {report['warmup']} warm-up; times in ms",
    ]
    loads = [x for k in ("load_average", "load_average_end") for x in m.get(k, [])[:1]]
    if loads and m.get("cores") and max(loads) > m["cores"] - 0.5:
        lines.append(f"warning: the machine was busy (load average up to {max(loads):.1f} on {m['cores']} cores): "
                     "other processes took CPU time, so the timings are pessimistic and noisy")
    lines += [
        "",
        f"{'stage':<14}{'median':>9}{'p99':>9}" + (f"{'baseline':>11}{'p99':>9}{'ours/base':>11}" if b else ""),
    ]
    for s in (*STAGES, "end_to_end"):
        so = o["end_to_end"] if s == "end_to_end" else o["stages"][s]
        row = f"{s:<14}{_fmt(so['median'], 2):>9}{_fmt(so['p99'], 2):>9}"
        if b:
            sb = b["end_to_end"] if s == "end_to_end" else b["stages"][s]
            row += f"{_fmt(sb['median'], 2):>11}{_fmt(sb['p99'], 2):>9}{_fmt(r.get(s), 3):>11}"
        lines.append(row)
    lines.append("")
    row = f"{'fps':<14}{_fmt(o['fps'], 2):>9}{'':>9}"
    if b:
        row += f"{_fmt(b['fps'], 2):>11}{'':>9}{_fmt(o['fps'] / b['fps'] if b['fps'] else None, 2):>10}x"
    lines.append(row)
    row = f"{'outside net':<14}{_fmt(o['outside_network_ms'], 2):>9}{_fmt(100 * o['outside_network_fraction']):>8}%"
    if b:
        row += f"{_fmt(b['outside_network_ms'], 2):>11}{_fmt(100 * b['outside_network_fraction']):>8}%"
        row += f"{_fmt(r.get('outside_network'), 3):>11}"
    lines.append(row)
    row = f"{'peak RSS MB':<14}{_fmt(o['peak_rss_mb'], 0):>9}{'':>9}"
    if b:
        row += f"{_fmt(b['peak_rss_mb'], 0):>11}"
    lines.append(row + "   (process; growth during runs: "
                 f"ours {_fmt(o['rss_growth_mb'], 0)}" + (f", baseline {_fmt(b['rss_growth_mb'], 0)})" if b else ")"))
    if o.get("cuda_peak_mb") is not None:
        row = f"{'CUDA peak MB':<14}{_fmt(o['cuda_peak_mb'], 0):>9}{'':>9}"
        if b:
            row += f"{_fmt(b['cuda_peak_mb'], 0):>11}"
        lines.append(row)
    g = report.get("message_ground_truth")
    if g:
        lines.append(f"message of the scene's ground truth ({g['instances']} instances, {g['points']} points): "
                     f"median {_fmt(g['time']['median'], 2)} ms, p99 {_fmt(g['time']['p99'], 2)} ms")
    a = report.get("agreement")
    if a:
        lines.append(
            f"fast vs reference path: {a['instances']} vs {a['reference_instances']} instances, "
            f"{a['matched_iou_0.99']} matched at mask IoU >= 0.99, min IoU {a['min_mask_iou']:.4f} "
            f"(amodal {a['min_amodal_iou']:.4f}), max centroid difference {a['max_centroid_mm']:.3f} mm"
        )
    n = report.get("node")
    if n:
        if "skipped" in n:
            lines.append(f"node: skipped: {n['skipped']}")
        else:
            lat = n["latency"]
            lines.append(
                f"node (publish color -> receive instances, other process): median {_fmt(lat['median'], 2)} ms, "
                f"p99 {_fmt(lat['p99'], 2)} ms over {n['frames']} frames ({n['lost']} lost); "
                f"node minus in-process end to end: {_fmt(n.get('overhead_vs_in_process_ms'), 2)} ms"
            )
    return "\n".join(lines)
