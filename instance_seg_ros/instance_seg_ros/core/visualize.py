"""Debug overlay of a :class:`~instance_seg_ros.core.types.FrameResult` on its color image (numpy + OpenCV).

Each instance gets a stable color (by its index): the visible mask is tinted and outlined with a solid
contour, the amodal (full-shape) mask with a thinner dashed contour, and a label says
``#index class score occlusion``. Used by the node's ``debug_image`` output, the demo and the evaluator.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from .types import FrameResult, InstanceResult

__all__ = ["display_color", "draw_overlay", "instance_color", "instance_label"]

_GOLDEN = 0.618033988749895


def instance_color(index: int) -> tuple[int, int, int]:
    """A bright RGB color for instance ``index``, well separated from its neighbours' (golden-ratio hues)."""
    hue = (0.12 + int(index) * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def display_color(inst: InstanceResult) -> tuple[int, int, int]:
    """The color an instance is drawn in: its track's (the same for the track's whole life) when it is tracked
    (``track_id`` != 0), else its index's."""
    return instance_color(inst.track_id if inst.track_id else inst.index)


def instance_label(inst: InstanceResult) -> str:
    """``"#3 id 17 mug 0.87 occ 25%"``: index, track id (left out while 0, untracked), class name (left out for the
    generic ``object`` class), score, occlusion."""
    track = f" id {inst.track_id}" if inst.track_id else ""
    name = f" {inst.class_name}" if inst.class_name and inst.class_name != "object" else ""
    return f"#{inst.index}{track}{name} {inst.score:.2f} occ {inst.occlusion:.0%}"


def _contours(mask: np.ndarray, offset: tuple[int, int]) -> list[np.ndarray]:
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if m.size == 0 or not m.any():
        return []
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=offset)
    return list(contours)


def _dashed(img: np.ndarray, contour: np.ndarray, color: tuple[int, int, int], thickness: int,
            dash: int, gap: int) -> None:
    """Draw a closed contour as dashes of ``dash`` px separated by ``gap`` px (by arc length)."""
    pts = contour.reshape(-1, 2).astype(np.int32)
    if len(pts) < 2:
        return
    pts = np.vstack([pts, pts[:1]])
    seg = np.linalg.norm(np.diff(pts, axis=0).astype(np.float64), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    on = (arc % (dash + gap)) < dash  # per vertex: inside a dash
    # runs of consecutive "on" vertices become polylines
    edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(np.int8), [0]])))
    runs = [pts[a:b] for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= 2]
    if runs:
        cv2.polylines(img, runs, isClosed=False, color=color, thickness=thickness, lineType=cv2.LINE_AA)


def _text(img: np.ndarray, text: str, org: tuple[int, int], color: tuple[int, int, int], scale: float) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    thick = max(1, int(round(scale * 2)))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    h, w = img.shape[:2]
    x = int(np.clip(org[0], 0, max(0, w - tw - 2)))
    y = int(np.clip(org[1], th + 2, max(th + 2, h - base - 1)))
    cv2.rectangle(img, (x, y - th - 2), (x + tw + 2, y + base), (0, 0, 0), cv2.FILLED)
    cv2.putText(img, text, (x + 1, y), font, scale, color, thick, cv2.LINE_AA)


def draw_overlay(
    rgb: np.ndarray,
    result: FrameResult,
    *,
    alpha: float = 0.35,
    thickness: int = 2,
    font_scale: float | None = None,
    amodal: bool = True,
    labels: bool = True,
) -> np.ndarray:
    """Draw ``result`` on a copy of ``rgb``.

    Args:
        rgb (np.ndarray[H, W, 3] uint8): the color image the result was computed from (any layout;
            read-only views are fine).
        result: instances with crops in the image's pixel grid (``result.width x result.height``).
        alpha: tint strength of the visible masks, 0 (none) .. 1 (solid).
        thickness: visible contour width in pixels (>= 1); the amodal contour is half as thick, dashed.
        font_scale: OpenCV font scale; default grows with the image size.
        amodal: draw the amodal contours.
        labels: draw the ``#index class score occlusion`` text.

    Returns:
        np.ndarray[H, W, 3] uint8, a new contiguous RGB image.

    Raises:
        ValueError: ``rgb`` is not ``[H, W, 3]`` uint8, does not match the result's size, or an option is out
            of range.
    """
    img = np.asarray(rgb)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"draw_overlay needs an RGB uint8 image of shape [H, W, 3], got {img.dtype} {img.shape}.")
    h, w = img.shape[:2]
    if (result.height, result.width) != (h, w):
        raise ValueError(
            f"The result is for a {result.width}x{result.height} image but the image is {w}x{h}; draw on the "
            "image the result was computed from."
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}.")
    if int(thickness) < 1:
        raise ValueError(f"thickness must be at least 1 pixel, got {thickness}.")
    out = np.ascontiguousarray(img).copy()
    if font_scale is None:
        font_scale = max(0.35, min(1.0, h / 900))
    insts = list(result.instances)

    if alpha > 0 and insts:
        # one blend for all tints: a color image of the instances by label, drawn lowest score last
        tint = out.copy()
        covered = np.zeros((h, w), dtype=bool)
        for inst in reversed(insts):
            full = inst.full_mask(h, w)
            tint[full] = display_color(inst)
            covered |= full
        blended = cv2.addWeighted(out, 1.0 - alpha, tint, alpha, 0.0)
        out[covered] = blended[covered]

    thin = max(1, int(thickness) // 2)
    for inst in insts:
        color = display_color(inst)
        if amodal:
            ax, ay, _, _ = inst.amodal_bbox
            for c in _contours(inst.amodal_mask, (int(ax), int(ay))):
                _dashed(out, c, color, thin, dash=6 * thin + 2, gap=4 * thin + 2)
        x, y, _, _ = inst.bbox
        vis = _contours(inst.mask, (int(x), int(y)))
        if vis:
            cv2.drawContours(out, vis, -1, color, int(thickness), cv2.LINE_AA)
    if labels:
        for inst in insts:
            bx, by, bw, bh = inst.bbox if inst.bbox[2] and inst.bbox[3] else inst.amodal_bbox
            _text(out, instance_label(inst), (int(bx), int(by) - 3), display_color(inst), font_scale)
    return out
