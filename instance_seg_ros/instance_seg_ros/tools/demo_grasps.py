"""``isr demo --grasps``: Contact-GraspNet's grasps on what the demo received (the optional grasp extra).

The demo's client keeps the camera's depth images, its camera_info and the node's debug images by stamp while it
collects; afterwards :func:`plan_frames` runs :class:`~instance_seg_ros.grasp.ContactGraspNet` (the planner as
shipped) on the last ``--grasps-frames`` outputs: each one's label image (rebuilt from the InstanceArray's masks),
the depth image of the same stamp and the intrinsics. :func:`grasp_cell` fills the instance table's grasps column,
:func:`draw_overlay` draws the top grasps into the debug image of the same stamp, :func:`write_json` writes
``grasps.json``. Without the extra, :func:`plan_frames` says so and returns None; the demo goes on without grasps.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["KEEP", "draw_overlay", "grasp_cell", "keep_by_stamp", "plan_frames", "write_json"]

#: messages kept per topic (by stamp) while collecting; the oldest are dropped
KEEP = 40


def keep_by_stamp(store: dict[int, Any], msg: Any) -> None:
    """Store ``msg`` under its header stamp, keeping the newest :data:`KEEP`."""
    from ..core.msg_codec import stamp_ns

    store[stamp_ns(msg)] = msg
    while len(store) > KEEP:
        store.pop(min(store))


def plan_frames(results: list[tuple[float, Any]], depths: dict[int, Any], infos: list[Any], frames: int,
                overlays: dict[int, Any] | None = None, top_k: int = 5) -> dict[int, dict[str, Any]] | None:
    """Grasps on the last ``frames`` outputs that have a depth image of their stamp (and a debug image, when any of
    those are in ``overlays``, so the overlay can show them).

    Returns:
        ``{output frame number: {"stamp": ns, "K": Intrinsics, "grasps": {index: [Grasp]}, "ms": float}}``, or
        None (with a message on stderr) when the extra is missing or nothing could be planned.
    """
    from ..core.images import depth_from_msg, intrinsics_from_camera_info
    from ..core.msg_codec import frame_result_from_instance_array, stamp_ns
    from ..grasp import ContactGraspNet, GraspExtraMissing

    try:
        planner = ContactGraspNet()
    except GraspExtraMissing as e:
        print(f"isr demo: --grasps skipped: {e}", file=sys.stderr)
        return None
    if not infos:
        print("isr demo: --grasps skipped: no camera_info was received.", file=sys.stderr)
        return None
    K = intrinsics_from_camera_info(infos[-1])
    out: dict[int, dict[str, Any]] = {}
    todo = [k for k, (_, m) in enumerate(results)
            if stamp_ns(m) in depths and (not overlays or stamp_ns(m) in overlays)][-frames:]
    for k in todo:
        msg = results[k][1]
        stamp = stamp_ns(msg)
        depth = depth_from_msg(depths[stamp])
        label = frame_result_from_instance_array(msg).label_image
        if depth.shape != (K.height, K.width) or label.shape != depth.shape:
            continue
        t = time.perf_counter()
        grasps = planner.plan(depth, K, label, max_grasps=top_k)
        out[k] = {"stamp": stamp, "K": K, "grasps": grasps, "ms": (time.perf_counter() - t) * 1e3}
        print(f"isr demo: grasps on output frame {k}: {sum(len(g) for g in grasps.values())} for "
              f"{sum(bool(g) for g in grasps.values())} of {len(grasps)} instances in {out[k]['ms']:.0f} ms",
              flush=True)
    if not out:
        print("isr demo: --grasps: no output frame had its depth image; nothing planned.", file=sys.stderr)
        return None
    return out


def grasp_cell(planned: dict[int, dict[str, Any]] | None, frame: int, index: int) -> str:
    """The instance table's grasps cell: ``count, best score``; ``-`` where the frame was not planned."""
    if not planned or frame not in planned:
        return "-"
    gs = planned[frame]["grasps"].get(index, [])
    return f"{len(gs)}, {gs[0].score:.2f}" if gs else "0"


def draw_overlay(overlay_rgb: np.ndarray, planned: dict[int, dict[str, Any]], frame: int, per_instance: int = 3
                 ) -> np.ndarray:
    """The debug image with the best ``per_instance`` grasps of each instance of ``frame`` drawn in."""
    from ..grasp.draw import draw_grasps

    entry = planned[frame]
    best = [g for gs in entry["grasps"].values() for g in gs[:per_instance]]
    return draw_grasps(overlay_rgb, best, entry["K"])


def write_json(path: Path, planned: dict[int, dict[str, Any]]) -> None:
    """``grasps.json``: per planned frame its stamp, planning ms and, per instance index, the grasps (score,
    width m, pose 4x4 gripper -> optical frame, contact m)."""
    frames = [{
        "frame": k, "stamp_ns": e["stamp"], "ms": e["ms"],
        "instances": {str(i): [{"score": g.score, "width": g.width, "pose": np.round(g.pose, 6).tolist(),
                                "contact": np.round(g.contact, 6).tolist()} for g in gs]
                      for i, gs in e["grasps"].items()},
    } for k, e in sorted(planned.items())]
    path.write_text(json.dumps({"convention": "Contact-GraspNet / Panda: pose maps gripper -> camera optical frame; "
                                              "z approach, x closing, origin the gripper base 0.1034 m behind the "
                                              "finger-contact midpoint",
                                "frames": frames}, indent=2) + "\n")
