"""Object proposals from geometry: boxes around the clusters of depth that rise above the support plane.

The classical tabletop pipeline (RANSAC plane, then Euclidean clusters of what is above it) finds most isolated
objects on any camera, whatever their print; what it cannot do is split objects that touch, or say where a hidden
part is. The network does those, but its region proposal network (RPN) can miss a whole object whose appearance it
has not learned. :func:`cluster_boxes` gives the network the classical pipeline's candidates as extra proposals:
the network's own box head still scores and refines each one, its mask heads still draw the visible and amodal
masks, and non-maximum suppression merges them with the RPN's. Nothing is added that the network rejects.

Clusters are 4-connected components, on a subsampled grid, of the pixels higher than ``min_height`` above the plane,
cut wherever neighbouring depths jump by more than ``jump`` (relative), so a can in front of a box is its own
cluster. The cost is a few milliseconds at 640x480 (grid stride 2).
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .support_plane import SupportPlane
from .types import Intrinsics

__all__ = ["cluster_boxes"]


def cluster_boxes(
    depth: np.ndarray,
    K: Intrinsics,
    plane: SupportPlane,
    *,
    stride: int = 2,
    min_height: float = 0.015,
    jump: float = 0.03,
    min_area: float = 2e-4,
    max_area: float = 0.5,
    max_boxes: int = 50,
    pad: float = 0.04,
) -> np.ndarray:
    """Boxes ``float32[N, 4]`` (x0, y0, x1, y1, full-resolution pixels) around the clusters of depth above ``plane``.

    Args:
        depth (np.ndarray[H, W] float): meters, NaN / 0 = invalid, registered to the color image of ``K``.
        K: the camera's intrinsics.
        plane: the support plane in the same camera frame (:func:`~.support_plane.fit_support_plane`).
        stride: grid subsampling (1 = every pixel).
        min_height: meters above the plane a pixel must rise to belong to a cluster.
        jump: neighbouring pixels whose depths differ by more than this fraction of their depth are not connected.
        min_area, max_area: clusters covering less / more than this share of the image are not proposed (specks;
            the table edge or a wall).
        max_boxes: at most this many boxes (the largest clusters).
        pad: each box grows by this share of its size on every side (the box head regresses it back).
    """
    import cv2

    d = np.asarray(depth, dtype=np.float32)[::stride, ::stride]
    h, w = d.shape
    xs = (np.arange(w, dtype=np.float32) * stride - K.cx) / K.fx
    ys = (np.arange(h, dtype=np.float32) * stride - K.cy) / K.fy
    n = plane.normal.astype(np.float32)
    if kernels.ENABLED:  # the same foreground in one compiled pass
        fg = kernels.cluster_foreground(d, xs, ys, n, plane.offset, min_height, jump)
    else:
        valid = np.isfinite(d) & (d > 0)
        z = np.where(valid, d, 0.0)
        height = z * (n[0] * xs[None, :] + n[1] * ys[:, None] + n[2]) + np.float32(plane.offset)
        fg = valid & (height > min_height)
        # cut at depth discontinuities: both pixels of a jumping pair leave the foreground
        cut = np.zeros_like(fg)
        with np.errstate(invalid="ignore"):
            jx = np.abs(z[:, 1:] - z[:, :-1]) > jump * np.minimum(z[:, 1:], z[:, :-1])
            jy = np.abs(z[1:, :] - z[:-1, :]) > jump * np.minimum(z[1:, :], z[:-1, :])
        cut[:, 1:] |= jx
        cut[:, :-1] |= jx
        cut[1:, :] |= jy
        cut[:-1, :] |= jy
        fg = (fg & ~cut).view(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=4)
    if count <= 1:
        return np.zeros((0, 4), np.float32)
    st = stats[1:].astype(np.float32)
    area = st[:, cv2.CC_STAT_AREA] / float(h * w)
    keep = (area >= min_area) & (area <= max_area)
    st, area = st[keep], area[keep]
    st = st[np.argsort(-area, kind="stable")[:max_boxes]]
    x0, y0 = st[:, cv2.CC_STAT_LEFT], st[:, cv2.CC_STAT_TOP]
    bw, bh = st[:, cv2.CC_STAT_WIDTH], st[:, cv2.CC_STAT_HEIGHT]
    boxes = np.stack([x0 - pad * bw, y0 - pad * bh, x0 + bw * (1 + pad), y0 + bh * (1 + pad)], axis=1) * stride
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, K.width - 1)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, K.height - 1)
    return boxes.astype(np.float32)
