"""Instance masks + registered depth to per-instance point clouds, all instances in one pass.

The geometry follows image_pipeline's ``convertDepth``: a pixel ``(u, v)`` with depth ``z`` (meters)
becomes ``x = (u - cx) * z / fx``, ``y = (v - cy) * z / fy``, ``z`` in the camera optical frame
(REP 103: x right, y down, z forward). Invalid depth (NaN, out of ``[depth_min, depth_max]``,
flying pixels) never becomes a point.

:func:`lift_instances` works on torch tensors on the masks' device (CUDA included): one validity
mask, one batched erosion, one ``nonzero`` over all instances, one projection; only the final
points, colors and per-instance counts travel to the host. On the host (numpy) each mask is lifted
inside its own box, from a validity mask computed in bands of rows. Mask boxes and crops are
:mod:`.masks`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import kernels
from .types import FrameError, Intrinsics

__all__ = [
    "LiftedCloud",
    "filter_cloud",
    "label_image",
    "lift_instances",
    "valid_depth_mask",
]


@dataclass
class LiftedCloud:
    """The 3D points of one instance.

    Attributes:
        points (np.ndarray[N, 3] float32): meters, camera optical frame. The clouds of one
            :func:`lift_instances` call are views into one shared array.
        colors (np.ndarray[N, 3] uint8 | None): RGB of each point (None when no color was given).
        n_mask_pixels (int): pixels of the visible mask (before erosion).
        depth_coverage (float): share of the mask's pixels whose depth is finite and within
            ``[depth_min, depth_max]``, measured before erosion and flying-pixel removal (so it
            describes the sensor, not our filtering); 0.0 for an empty mask.
    """

    points: np.ndarray
    colors: np.ndarray | None
    n_mask_pixels: int
    depth_coverage: float

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])


# ---------------------------------------------------------------------------------------- inputs
# Two backends with the same semantics: numpy for host arrays (torch's CPU kernels for bool
# reductions, nonzero and max_pool2d are 5-50x slower than numpy's here) and torch for arrays on an
# accelerator (no host round trip of the [N, H, W] masks).


def _on_accelerator(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type != "cpu"


def _np(x: Any, name: str) -> np.ndarray:
    """numpy view of a numpy array or CPU tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise FrameError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}.")


def _tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    """numpy or torch to a tensor on ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, np.ndarray):
        # torch.from_numpy refuses negative strides and warns on read-only arrays: copy those
        a = x if x.flags.writeable and all(s >= 0 for s in x.strides) else np.array(x)
        return torch.from_numpy(a).to(device, non_blocking=True)
    raise FrameError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}.")


def _check_params(depth_min: float, depth_max: float, flying_pixel_threshold: float) -> None:
    if not (np.isfinite(depth_min) and np.isfinite(depth_max) and 0 <= depth_min < depth_max):
        raise ValueError(f"depth_min ({depth_min}) and depth_max ({depth_max}) must satisfy 0 <= min < max.")
    if not (np.isfinite(flying_pixel_threshold) and flying_pixel_threshold >= 0):
        raise ValueError(f"flying_pixel_threshold must be >= 0 (0 disables), got {flying_pixel_threshold}.")


def _check_depth(shape: tuple[int, ...], floating: bool, dtype: Any) -> None:
    if len(shape) != 2:
        raise FrameError(f"depth must have shape [H, W], got {list(shape)}.")
    if not floating:
        raise FrameError(
            f"depth must be float meters (NaN = invalid), got dtype {dtype}; decode 16UC1 with decode_depth first."
        )


def _depth_np(depth: Any) -> np.ndarray:
    d = _np(depth, "depth")
    _check_depth(d.shape, np.issubdtype(d.dtype, np.floating), d.dtype)
    return d.astype(np.float32, copy=False)


def _depth_torch(depth: Any, device: torch.device) -> torch.Tensor:
    d = _tensor(depth, "depth", device)
    _check_depth(tuple(d.shape), d.is_floating_point(), d.dtype)
    return d.float()


def _masks_np(masks: Any) -> np.ndarray:
    m = _np(masks, "masks")
    if m.ndim != 3:
        raise FrameError(f"masks must have shape [N, H, W], got {list(m.shape)}.")
    if m.dtype != np.bool_:
        m = m > 0.5 if np.issubdtype(m.dtype, np.floating) else m != 0
    return m


def _masks_torch(masks: Any, device: torch.device) -> torch.Tensor:
    m = _tensor(masks, "masks", device)
    if m.ndim != 3:
        raise FrameError(f"masks must have shape [N, H, W], got {list(m.shape)}.")
    if m.dtype != torch.bool:
        m = m > 0.5 if m.is_floating_point() else m != 0
    return m


# rows of about this many pixels at a time: the work arrays stay small (a fresh multi-megabyte temporary costs its
# page faults on every call) and in cache
_VALID_CHUNK = 32768


def _valid_rows(
    d: np.ndarray, y0: int, y1: int, depth_min: float, depth_max: float, thr: float
) -> tuple[np.ndarray, np.ndarray]:
    """(in_range, valid) bool [y1 - y0, W] of the image rows ``y0:y1``: the rows of :func:`_valid_np`.

    Bands of whole rows with reused work arrays, each step one numpy call over a contiguous 1D run of pixels: the
    horizontal neighbours are ``i`` and ``i + 1`` (NaN'd where a row wraps to the next one), the vertical ones
    ``i`` and ``i + W``.
    """
    h, w = d.shape
    in_range = np.empty((y1 - y0, w), bool)
    valid = np.empty_like(in_range) if thr > 0 else in_range
    if in_range.size == 0:
        return in_range, valid
    step = max(1, _VALID_CHUNK // w)
    n = (min(step, y1 - y0) + 2) * w
    td = np.result_type(thr, d)  # the dtype of thr * d (a Python float keeps float32)
    t_buf = np.empty(n, td)
    dx_buf = np.empty(n, d.dtype)
    f_buf = np.empty(n, bool)
    c_buf = np.empty(n, bool)
    check_pos = not depth_min > 1e-30  # else d >= depth_min > 0 implies d > 0
    with np.errstate(invalid="ignore"):
        for a in range(y0, y1, step):
            b = min(a + step, y1)
            ir = in_range[a - y0 : b - y0].reshape(-1)
            di = d[a:b].reshape(-1)
            # finite, > 0, in range: NaN compares False, +-inf fall outside the finite range
            np.greater_equal(di, depth_min, out=ir)
            c = c_buf[: ir.size]
            ir &= np.less_equal(di, depth_max, out=c)
            if check_pos:
                ir &= np.greater(di, 0, out=c)
            if thr <= 0:
                continue
            ga, gb = max(a - 1, 0), min(b + 1, h)
            dd = d[ga:gb].reshape(-1)  # rows ga:gb, one more on each side for the vertical neighbours
            m = dd.size
            t = np.multiply(thr, dd, out=t_buf[:m])
            fly = f_buf[:m]
            # a NaN neighbour compares False: holes are not discontinuities we can measure
            dx = np.subtract(dd[1:], dd[:-1], out=dx_buf[: m - 1])
            np.abs(dx, out=dx)
            dx[w - 1 :: w] = np.nan  # pairs across a row end are no neighbours
            np.greater(dx, t[:-1], out=fly[:-1])
            fly[-1] = False
            c = c_buf[: m - 1]
            fly[1:] |= np.greater(dx, t[1:], out=c)
            if m > w:
                dy = np.subtract(dd[w:], dd[:-w], out=dx_buf[: m - w])
                np.abs(dy, out=dy)
                c = c_buf[: m - w]
                fly[:-w] |= np.greater(dy, t[:-w], out=c)
                fly[w:] |= np.greater(dy, t[w:], out=c)
            # valid = in range and not flying
            np.greater(ir, fly[(a - ga) * w : (b - ga) * w], out=valid[a - y0 : b - y0].reshape(-1))
    return in_range, valid


def _valid_np(d: np.ndarray, depth_min: float, depth_max: float, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """(in_range [H, W], valid [H, W]) bool; valid = in range and not a flying pixel."""
    return _valid_rows(d, 0, d.shape[0], depth_min, depth_max, thr)


def _valid_torch(d: torch.Tensor, depth_min: float, depth_max: float, thr: float) -> tuple[torch.Tensor, torch.Tensor]:
    in_range = torch.isfinite(d) & (d > 0) & (d >= depth_min) & (d <= depth_max)
    if thr <= 0:
        return in_range, in_range
    fly = torch.zeros_like(in_range)
    dx = (d[:, 1:] - d[:, :-1]).abs()
    fly[:, :-1] |= dx > thr * d[:, :-1]
    fly[:, 1:] |= dx > thr * d[:, 1:]
    dy = (d[1:, :] - d[:-1, :]).abs()
    fly[:-1, :] |= dy > thr * d[:-1, :]
    fly[1:, :] |= dy > thr * d[1:, :]
    return in_range, in_range & ~fly


def valid_depth_mask(
    depth: np.ndarray | torch.Tensor, *, depth_min: float, depth_max: float, flying_pixel_threshold: float
) -> np.ndarray | torch.Tensor:
    """Pixels whose depth can become a 3D point.

    A pixel is valid when its depth is finite, positive, within ``[depth_min, depth_max]``, and it is not a
    flying pixel: no 4-neighbour differs from it by more than ``flying_pixel_threshold`` times its
    own depth (0 disables the test; NaN neighbours are ignored). At a depth step this removes the
    one-pixel ring on both sides of the edge, which holds the interpolated "flying" points.

    Args:
        depth: [H, W] float meters, NaN = invalid (numpy or torch, any device).

    Returns:
        [H, W] bool: numpy for numpy input, a tensor on the same device for torch input.
    """
    _check_params(depth_min, depth_max, flying_pixel_threshold)
    if _on_accelerator(depth):
        return _valid_torch(_depth_torch(depth, depth.device), depth_min, depth_max, flying_pixel_threshold)[1]
    valid = _valid_np(_depth_np(depth), depth_min, depth_max, flying_pixel_threshold)[1]
    return torch.from_numpy(valid) if isinstance(depth, torch.Tensor) else valid


def _erode_np(m: np.ndarray, px: int) -> np.ndarray:
    """Erode [N, H, W] bool masks by a (2px+1)^2 square (separable; in-place ANDs of shifted views).

    Outside the image counts as neither in nor out: a mask touching the border is not eroded from it.
    """
    tmp = m.copy()
    for s in range(1, px + 1):
        tmp[..., :-s] &= m[..., s:]
        tmp[..., s:] &= m[..., :-s]
    out = tmp.copy()
    for s in range(1, px + 1):
        out[..., :-s, :] &= tmp[..., s:, :]
        out[..., s:, :] &= tmp[..., :-s, :]
    return out


def _erode_torch(m: torch.Tensor, px: int) -> torch.Tensor:
    """As :func:`_erode_np`, with two separable max-pools of the complement."""
    inv = (~m).to(torch.float16 if m.is_cuda else torch.float32).unsqueeze(1)  # [N, 1, H, W], 1 = background
    k = 2 * px + 1
    inv = F.max_pool2d(inv, (1, k), stride=1, padding=(0, px))
    inv = F.max_pool2d(inv, (k, 1), stride=1, padding=(px, 0))
    return inv[:, 0] == 0


def lift_instances(
    depth: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    K: Intrinsics,
    *,
    color: np.ndarray | torch.Tensor | None = None,
    depth_min: float,
    depth_max: float,
    flying_pixel_threshold: float = 0.03,
    erode_px: int = 0,
    boxes: np.ndarray | None = None,
) -> list[LiftedCloud]:
    """Lift every instance mask to its point cloud in one vectorized pass.

    Args:
        depth: [H, W] float32 meters, NaN = invalid (numpy, or a torch tensor on any device).
        masks: [N, H, W] bool visible masks (numpy or torch; other dtypes: ``!= 0``, floats ``> 0.5``).
            When the masks (or the depth) live on an accelerator the work happens there and only
            the points, colors and per-instance counts come back to the host.
        K: intrinsics of the (registered) color camera; ``K.width, K.height`` must equal ``W, H``.
        color: optional [H, W, 3] uint8 RGB image (numpy or torch) for the point colors.
        depth_min, depth_max: valid depth range, meters.
        flying_pixel_threshold: see :func:`valid_depth_mask`; 0 disables.
        erode_px: erode each mask by this many pixels (square structuring element) before lifting.
        boxes: optional [N, 4] int ``(x, y, w, h)``: each mask's tight box (:func:`~.masks.mask_bboxes`; zeros
            for an empty mask), when the caller has them already; the numpy path then does not look for them.

    Returns:
        One :class:`LiftedCloud` per mask, in mask order; each cloud's points in row-major pixel order.

    Raises:
        FrameError: wrong shapes/dtypes, or intrinsics that do not match the depth image.
        ValueError: bad parameters.
    """
    _check_params(depth_min, depth_max, flying_pixel_threshold)
    if isinstance(erode_px, bool) or not isinstance(erode_px, (int, np.integer)) or erode_px < 0:
        raise ValueError(f"erode_px must be an integer >= 0, got {erode_px!r}.")
    erode_px = int(erode_px)
    if _on_accelerator(masks) or _on_accelerator(depth):
        device = masks.device if _on_accelerator(masks) else depth.device
        m_t = _masks_torch(masks, device)
        d_t = _depth_torch(depth, device)
        c_t = None if color is None else _tensor(color, "color", device)
        _check_shapes(tuple(m_t.shape), tuple(d_t.shape), K, None if c_t is None else (tuple(c_t.shape), c_t.dtype))
        if m_t.shape[0] == 0:
            return []
        stats, pts, cols = _lift_torch(d_t, m_t, c_t, K, depth_min, depth_max, flying_pixel_threshold, erode_px)
    else:
        m = _masks_np(masks)
        d = _depth_np(depth)
        c = None if color is None else _np(color, "color")
        _check_shapes(m.shape, d.shape, K, None if c is None else (c.shape, c.dtype))
        if m.shape[0] == 0:
            return []
        if boxes is not None and np.shape(boxes) != (m.shape[0], 4):
            raise FrameError(f"boxes must have shape [{m.shape[0]}, 4] (one per mask), got {list(np.shape(boxes))}.")
        stats, pts, cols = _lift_np(d, m, c, K, depth_min, depth_max, flying_pixel_threshold, erode_px, boxes)
    n = stats.shape[1]
    split = np.cumsum(stats[2])[:-1]
    p_parts = np.split(pts, split)
    c_parts = np.split(cols, split) if cols is not None else [None] * n
    out = []
    for i in range(n):
        npx = int(stats[0, i])
        out.append(LiftedCloud(p_parts[i], c_parts[i], npx, float(stats[1, i]) / npx if npx else 0.0))
    return out


def _check_shapes(ms: tuple[int, ...], ds: tuple[int, ...], K: Intrinsics, cs: tuple[tuple[int, ...], Any] | None):
    _, h, w = ms
    if (h, w) != ds:
        raise FrameError(f"masks are {w}x{h} but depth is {ds[1]}x{ds[0]}; they must be the same size.")
    if (K.width, K.height) != (w, h):
        raise FrameError(
            f"intrinsics are for {K.width}x{K.height} but depth is {w}x{h}; camera_info must belong to this image."
        )
    if cs is not None and (tuple(cs[0]) != (h, w, 3) or str(cs[1]) not in ("uint8", "torch.uint8")):
        raise FrameError(f"color must be a [{h}, {w}, 3] uint8 image, got {list(cs[0])} {cs[1]}.")


def _project(pix: Any, z: Any, w: int, K: Intrinsics, xp: Any) -> Any:
    """[M] flat pixel indices and depths to [M, 3] float32 points."""
    v = pix // w
    u = pix - v * w
    if xp is np:
        z = z.astype(np.float32, copy=False)
        out = np.empty((len(z), 3), np.float32)
        out[:, 0] = (u.astype(np.float32) - np.float32(K.cx)) * (z / np.float32(K.fx))
        out[:, 1] = (v.astype(np.float32) - np.float32(K.cy)) * (z / np.float32(K.fy))
        out[:, 2] = z
        return out
    uu, vv = u.to(torch.float32), v.to(torch.float32)
    return torch.stack([(uu - K.cx) * (z / K.fx), (vv - K.cy) * (z / K.fy), z], dim=1)


def _lift_np(
    d: np.ndarray, m: np.ndarray, c: np.ndarray | None, K: Intrinsics, dmin: float, dmax: float, thr: float, px: int,
    tight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """numpy backend: (stats [3, N] = mask pixels, covered pixels, points; points [M, 3]; colors).

    Each mask is handled inside its own tight box (grown by the erosion radius to erode it), so the work scales with
    the masks' boxes, not N times their union; the depth validity is computed once, over the rows the boxes span.
    Points come out as :func:`_project` makes them (same float32 operations), grouped by instance, row-major.
    """
    n, h, w = m.shape
    stats = np.zeros((3, n), np.int64)
    boxes = []  # (i, y0, y1, x0, x1) tight box of each non-empty mask
    if tight is not None:  # the caller's (x, y, w, h)
        for i, (x, y, bw, bh) in enumerate(np.asarray(tight).tolist()):
            if bw > 0 and bh > 0:
                boxes.append((i, int(y), int(y + bh), int(x), int(x + bw)))
    else:
        occ = m.any(axis=2)  # [N, H]
        full = np.flatnonzero(occ.any(axis=1))
        occ = occ[full]
        ys0 = occ.argmax(axis=1)
        ys1 = h - occ[:, ::-1].argmax(axis=1)
        for i, y0, y1 in zip(full.tolist(), ys0.tolist(), ys1.tolist(), strict=True):
            cols = m[i, y0:y1].any(axis=0)
            boxes.append((i, y0, y1, int(cols.argmax()), w - int(cols[::-1].argmax())))
    if not boxes:
        return stats, np.zeros((0, 3), np.float32), (np.zeros((0, 3), np.uint8) if c is not None else None)
    # (u - cx), (v - cy) and the focal lengths as _project computes with them (float32)
    ucx = np.arange(w).astype(np.float32) - np.float32(K.cx)
    vcy = np.arange(h).astype(np.float32) - np.float32(K.cy)
    fx, fy = np.float32(K.fx), np.float32(K.fy)
    if kernels.ENABLED and px == 0 and d.dtype == np.float32:  # compiled: depth validity only at mask pixels
        pts, cols_out = kernels.lift_boxes(d, m, np.array(boxes, np.int64).reshape(-1, 5), dmin, dmax, thr,
                                           ucx, vcy, fx, fy, c, stats)
        return stats, pts, cols_out
    # depth validity of the rows the boxes span (whole rows: contiguous passes beat skipping a few columns)
    uy0, uy1 = min(bx[1] for bx in boxes), max(bx[2] for bx in boxes)
    in_range, valid = _valid_rows(d, uy0, uy1, dmin, dmax, thr)
    sels = []
    for i, y0, y1, x0, x1 in boxes:
        mb = m[i, y0:y1, x0:x1]
        ir = in_range[y0 - uy0 : y1 - uy0, x0:x1]
        stats[0, i] = np.count_nonzero(mb)
        stats[1, i] = np.count_nonzero(mb & ir)
        if px > 0:  # erode inside the box grown by the radius: the same as eroding the whole mask, then cropping
            ey0, ey1, ex0, ex1 = max(y0 - px, 0), min(y1 + px, h), max(x0 - px, 0), min(x1 + px, w)
            mb = _erode_np(m[i, ey0:ey1, ex0:ex1], px)[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0]
        sel = mb & valid[y0 - uy0 : y1 - uy0, x0:x1]
        stats[2, i] = np.count_nonzero(sel)
        sels.append(sel)
    total = int(stats[2].sum())
    pts = np.empty((total, 3), np.float32)
    cols_out = np.empty((total, 3), np.uint8) if c is not None else None
    if total == 0:
        return stats, pts, cols_out
    # the gathers below are boolean masks of 2D views (row-major, no index arrays): depth, (u - cx) and (v - cy), and
    # the color pixels as 3-byte items
    z32 = d if d.dtype == np.float32 else d.astype(np.float32)
    if c is not None:
        if c.strides[-1] != 1:
            c = np.ascontiguousarray(c)
        cv = c.view(np.dtype((np.void, 3)))[..., 0]  # [H, W] items of 3 bytes
        cv_out = cols_out.view(np.dtype((np.void, 3)))[:, 0]
    tmp = np.empty(int(stats[2].max()), np.float32)
    o = 0
    for (i, y0, y1, x0, x1), sel in zip(boxes, sels, strict=True):
        k = int(stats[2, i])
        if k == 0:
            continue
        seg = pts[o : o + k]
        z = z32[y0:y1, x0:x1][sel]
        t = tmp[:k]
        np.divide(z, fx, out=t)
        np.multiply(np.broadcast_to(ucx[x0:x1], sel.shape)[sel], t, out=seg[:, 0])
        np.divide(z, fy, out=t)
        np.multiply(np.broadcast_to(vcy[y0:y1, None], sel.shape)[sel], t, out=seg[:, 1])
        seg[:, 2] = z
        if c is not None:
            cv_out[o : o + k] = cv[y0:y1, x0:x1][sel]
        o += k
    return stats, pts, cols_out


def _lift_torch(
    d: torch.Tensor,
    m: torch.Tensor,
    c: torch.Tensor | None,
    K: Intrinsics,
    dmin: float,
    dmax: float,
    thr: float,
    px: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """torch backend (accelerator): same outputs as :func:`_lift_np`, on the host."""
    n, h, w = m.shape
    with torch.no_grad():
        in_range, valid = _valid_torch(d, dmin, dmax, thr)
        n_pix = m.sum(dim=(1, 2))
        n_cov = (m & in_range).sum(dim=(1, 2))
        me = _erode_torch(m, px) if px > 0 else m
        inst, pix = (me & valid).view(n, h * w).nonzero(as_tuple=True)  # row-major: grouped by instance
        counts = torch.bincount(inst, minlength=n)
        pts = _project(pix, d.reshape(-1)[pix], w, K, torch)
        cols = c.reshape(-1, 3)[pix] if c is not None else None
        stats = torch.stack([n_pix, n_cov, counts]).cpu().numpy()
        return stats, pts.cpu().numpy(), (cols.cpu().numpy() if cols is not None else None)


# ---------------------------------------------------------------------------------------- filtering
def filter_cloud(
    points: np.ndarray,
    colors: np.ndarray | None = None,
    *,
    voxel_size: float = 0.0,
    outlier_removal: bool = False,
    neighbors: int = 20,
    std_ratio: float = 2.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Voxel downsampling and statistical outlier removal with Open3D.

    Args:
        points: [N, 3] float meters. colors: [N, 3] uint8 or None.
        voxel_size: voxel edge in meters; 0 disables (points in a voxel are averaged, colors too).
        outlier_removal: drop points whose mean distance to their ``neighbors`` nearest neighbours is
            more than ``std_ratio`` standard deviations above the cloud's average. Skipped for
            clouds of fewer than 3 points (no statistics).

    Returns:
        (points [M, 3] float32, colors [M, 3] uint8 or None). The inputs unchanged (no copy) when both
        steps are disabled.
    """
    if not (np.isfinite(voxel_size) and voxel_size >= 0):
        raise ValueError(f"voxel_size must be >= 0 meters (0 disables), got {voxel_size}.")
    if neighbors < 1 or not (np.isfinite(std_ratio) and std_ratio > 0):
        raise ValueError(f"neighbors must be >= 1 and std_ratio > 0, got {neighbors} and {std_ratio}.")
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {list(p.shape)}.")
    if colors is not None and np.asarray(colors).shape != p.shape:
        raise ValueError(f"colors must have the shape of points {list(p.shape)}, got {list(np.shape(colors))}.")
    do_voxel = voxel_size > 0 and len(p) > 1
    do_outlier = outlier_removal and len(p) >= 3
    if not (do_voxel or do_outlier):
        return p, colors

    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p.astype(np.float64)))
    if colors is not None:
        pc.colors = o3d.utility.Vector3dVector(np.asarray(colors, np.float64) / 255.0)
    if do_voxel:
        pc = pc.voxel_down_sample(float(voxel_size))
    if do_outlier and len(pc.points) >= 3:
        pc, _ = pc.remove_statistical_outlier(nb_neighbors=int(neighbors), std_ratio=float(std_ratio))
    out_p = np.asarray(pc.points, dtype=np.float32).reshape(-1, 3)
    out_c = None
    if colors is not None:
        out_c = np.clip(np.rint(np.asarray(pc.colors) * 255.0), 0, 255).astype(np.uint8).reshape(-1, 3)
    return out_p, out_c


# ---------------------------------------------------------------------------------------- masks
def label_image(masks: np.ndarray | torch.Tensor, scores: Any = None) -> np.ndarray:
    """Paint visible masks into one label image.

    Args:
        masks: [N, H, W] bool (numpy or torch on any device); instance ``i`` gets the value ``i + 1``.
        scores: optional [N] scores deciding overlaps (the higher score wins, ties: the lower index).
            Without scores the masks are taken to be sorted by descending score (lower index wins),
            which is the order of ``FrameResult.instances``.

    Returns:
        np.ndarray[H, W] uint16: 0 = background, else ``i + 1``.
    """
    acc = _on_accelerator(masks)
    m = _masks_torch(masks, masks.device) if acc else _masks_np(masks)
    n, h, w = m.shape
    if n > 65535:
        raise ValueError(f"label_image holds at most 65535 instances (uint16), got {n}.")
    if n == 0:
        return np.zeros((h, w), np.uint16)
    if scores is None:
        order = np.arange(n)
    else:
        s = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
        if s.shape != (n,):
            raise ValueError(f"scores must have shape [{n}] (one per mask), got {list(s.shape)}.")
        order = np.argsort(-s.astype(np.float64), kind="stable")
    # priority n for the winner-most instance ... 1 for the last; the max over the stack is the winner
    dtype = np.int16 if n < 32767 else np.int32
    prio = np.empty(n, dtype)
    prio[order] = np.arange(n, 0, -1, dtype=dtype)
    lut = np.zeros(n + 1, np.uint16)
    lut[prio] = np.arange(1, n + 1, dtype=np.uint16)
    if acc:
        p = torch.from_numpy(prio).to(m.device)
        best = (m.to(p.dtype) * p[:, None, None]).amax(dim=0)  # [H, W], 0 = background
        return lut[best.cpu().numpy()]
    best = (m * prio[:, None, None]).max(axis=0)
    return lut[best]
