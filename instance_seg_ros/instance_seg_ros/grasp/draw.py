"""Grasps drawn into an image: each gripper projected as four lines (stem, palm bar, two fingers), colored by score.

Pure numpy + OpenCV, no ROS. Colors run from red (score 0.5 and below) through yellow to green (score 1).
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from ..core.types import Intrinsics
from .planner import Grasp
from .quality import gripper_lines

__all__ = ["draw_grasps", "score_color"]


def score_color(score: float, low: float = 0.5) -> tuple[int, int, int]:
    """RGB of a score: red at ``low`` and below, yellow half way, green at 1."""
    t = float(np.clip((score - low) / max(1.0 - low, 1e-6), 0.0, 1.0))
    return (int(255 * min(1.0, 2 * (1 - t))), int(255 * min(1.0, 2 * t)), 0)


def draw_grasps(
    image: np.ndarray,
    grasps: Iterable[Grasp],
    K: Intrinsics,
    *,
    width: float | None = None,
    thickness: int = 2,
    low: float = 0.5,
) -> np.ndarray:
    """A copy of ``image`` (RGB uint8 [H, W, 3]) with ``grasps`` (optical frame) drawn, worst first so the best are
    on top. ``width``: draw every gripper at this opening instead of its predicted one (the pose kept); segments
    behind the camera are skipped."""
    out = np.ascontiguousarray(image.copy())
    for g in sorted(grasps, key=lambda g: g.score):
        seg = gripper_lines(g.pose, g.width if width is None else width)
        if np.any(seg[..., 2] <= 1e-3):
            continue
        uv = np.stack([K.fx * seg[..., 0] / seg[..., 2] + K.cx, K.fy * seg[..., 1] / seg[..., 2] + K.cy], axis=-1)
        if not np.all(np.isfinite(uv)) or np.abs(uv).max() > 1e5:
            continue
        color = score_color(g.score, low)
        for a, b in np.round(uv).astype(np.int64):
            cv2.line(out, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), (0, 0, 0), thickness + 2, cv2.LINE_AA)
            cv2.line(out, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), color, thickness, cv2.LINE_AA)
        c = g.contact
        if c[2] > 1e-3:
            at = (int(round(K.fx * c[0] / c[2] + K.cx)), int(round(K.fy * c[1] / c[2] + K.cy)))
            cv2.circle(out, at, thickness + 1, (255, 255, 255), -1, cv2.LINE_AA)
    return out
