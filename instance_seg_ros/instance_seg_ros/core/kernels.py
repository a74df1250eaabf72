"""Compiled per-point loops (numba) for the hottest CPU steps outside the network, each with its numpy fallback.

A numpy expression over a cloud takes one pass over memory per operation: the octagon prefilter of the support
boxes (:mod:`.geometry`) made about 60 passes over each footprint. These loops make one pass (or one per octagon
edge, over memory that stays in cache) and do **the same float32 operations in the same order** as the numpy
code, so the results are the same bit for bit; ``test_kernels.py`` checks that on random and degenerate inputs.
The loops: the support boxes' octagon edge tests, footprint projection and point selection (:mod:`.geometry`);
lifting with its depth-validity and flying-pixel tests (:mod:`.lifting`); the geometric proposals' foreground
(:mod:`.geometric_proposals`); mask ownership's keep loop and pairwise settling (:mod:`.model.predictor`).
Not here: steps that go through BLAS (the RANSAC scores, the support-plane check's heights), whose FMA kernels
round differently from a plain loop.

numba compiles each loop on first use (about a second, then cached on disk next to this file or in numba's
per-user cache). :func:`warm_up` compiles them all on tiny inputs; the :class:`~.pipeline.Segmenter` calls it when
it loads, so a node's first frame does not pay it. Without numba, or with ``ISR_NUMBA=0`` in the environment, the
numpy versions run (:data:`ENABLED`).

Nothing here imports ROS.
"""

from __future__ import annotations

import os
import time

import numpy as np

__all__ = [
    "ENABLED",
    "alive",
    "cluster_foreground",
    "edge_tests",
    "lift_boxes",
    "project",
    "select_pairs",
    "settle_pairs",
    "warm_up",
]

try:  # pragma: no cover - depends on the install
    import numba

    ENABLED = os.environ.get("ISR_NUMBA", "1").strip() not in ("0", "false", "no", "off")
except ImportError:  # pragma: no cover
    numba = None
    ENABLED = False


def _edge_tests_np(x: np.ndarray, y: np.ndarray, ax: np.ndarray, ay: np.ndarray, vx: np.ndarray, vy: np.ndarray,
                   tol: float, keep: np.ndarray, t1: np.ndarray, t2: np.ndarray, c: np.ndarray) -> None:
    """numpy :func:`edge_tests` in the points' dtype (float32 or float64): one call per operation and edge, in the
    scratch rows ``t1``, ``t2`` (floats) and ``c`` (bool) of the points' length."""
    for k in range(ax.shape[0]):
        # keep |= vx * (y - ay) - vy * (x - ax) <= tol
        np.subtract(y, ay[k], out=t1)
        np.multiply(vx[k], t1, out=t1)
        np.subtract(x, ax[k], out=t2)
        np.multiply(vy[k], t2, out=t2)
        np.subtract(t1, t2, out=t1)
        if k == 0:
            np.less_equal(t1, tol, out=keep)
        else:
            keep |= np.less_equal(t1, tol, out=c)


def _edge_tests_loop(x, y, ax, ay, vx, vy, tol, keep):  # pragma: no cover - compiled by numba
    n = x.shape[0]
    for i in range(n):
        keep[i] = False
    for k in range(ax.shape[0]):
        a_x, a_y, v_x, v_y = ax[k], ay[k], vx[k], vy[k]
        for i in range(n):  # one pass per edge over memory in cache; vectorized by LLVM
            t1 = y[i] - a_y
            t1 = v_x * t1
            t2 = x[i] - a_x
            t2 = v_y * t2
            t1 = t1 - t2
            keep[i] |= t1 <= tol


def _project_np(p: np.ndarray, b: np.ndarray, out: np.ndarray, t: np.ndarray) -> None:
    """numpy :func:`project`, with the scratch row ``t`` (float32) of the points' length."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    for k in range(3):  # coordinate along b[:, k]: x * b0k + y * b1k + z * b2k
        r = np.multiply(x, b[0, k], out=out[k])
        r += np.multiply(y, b[1, k], out=t)
        r += np.multiply(z, b[2, k], out=t)


def _project_loop(p, b, out):  # pragma: no cover - compiled by numba
    b00, b10, b20 = b[0, 0], b[1, 0], b[2, 0]
    b01, b11, b21 = b[0, 1], b[1, 1], b[2, 1]
    b02, b12, b22 = b[0, 2], b[1, 2], b[2, 2]
    for i in range(p.shape[0]):
        x, y, z = p[i, 0], p[i, 1], p[i, 2]
        r = x * b00
        r = r + y * b10
        out[0, i] = r + z * b20
        r = x * b01
        r = r + y * b11
        out[1, i] = r + z * b21
        r = x * b02
        r = r + y * b12
        out[2, i] = r + z * b22


def _select_pairs_loop(x, y, keep, out):  # pragma: no cover - compiled by numba
    k = 0
    for i in range(x.shape[0]):
        if keep[i]:
            out[k, 0] = x[i]
            out[k, 1] = y[i]
            k += 1
    return k


def _lift_codes_loop(d, m, boxes, dmin, dmax, check_pos, thr, stats, point):  # pragma: no cover - numba
    """Per box pixel (boxes in order, row-major): ``point`` = in the mask, depth in range and not a flying pixel;
    the counts of mask pixels, of those with depth in range and of points into ``stats``."""
    h, w = d.shape
    o = 0
    for b in range(boxes.shape[0]):
        i, y0, y1, x0, x1 = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3], boxes[b, 4]
        n_pix = 0
        n_cov = 0
        n_pts = 0
        for y in range(y0, y1):
            mrow = m[i, y]
            drow = d[y]
            up = d[y - 1] if y > 0 else drow
            down = d[y + 1] if y + 1 < h else drow
            for x in range(x0, x1):
                ok = False
                if mrow[x]:
                    n_pix += 1
                    z = drow[x]
                    if z >= dmin and z <= dmax and (not check_pos or z > 0):  # NaN compares False
                        n_cov += 1
                        ok = True
                        if thr > 0:  # a 4-neighbour more than thr * z away (NaN neighbours compare False)
                            t = thr * z
                            if ((x > 0 and abs(drow[x - 1] - z) > t) or (x + 1 < w and abs(drow[x + 1] - z) > t)
                                    or abs(up[x] - z) > t or abs(down[x] - z) > t):
                                ok = False
                        n_pts += ok
                point[o] = ok
                o += 1
        stats[0, i] = n_pix
        stats[1, i] = n_cov
        stats[2, i] = n_pts


def _lift_gather_loop(d, boxes, point, ucx, vcy, fx, fy, color, pts, cols):  # pragma: no cover - numba
    o = 0
    j = 0
    with_color = cols.shape[0] > 0
    for b in range(boxes.shape[0]):
        y0, y1, x0, x1 = boxes[b, 1], boxes[b, 2], boxes[b, 3], boxes[b, 4]
        for y in range(y0, y1):
            v = vcy[y]
            drow = d[y]
            crow = color[y] if with_color else color[0]
            for x in range(x0, x1):
                if point[j]:
                    z = drow[x]
                    t = z / fx
                    pts[o, 0] = ucx[x] * t
                    t = z / fy
                    pts[o, 1] = v * t
                    pts[o, 2] = z
                    if with_color:
                        cols[o, 0] = crow[x, 0]
                        cols[o, 1] = crow[x, 1]
                        cols[o, 2] = crow[x, 2]
                    o += 1
                j += 1


def _cluster_fg_loop(d, xs, ys, n0, n1, n2, off, min_height, jump, z, fg):  # pragma: no cover - numba
    h, w = d.shape
    for y in range(h):
        for x in range(w):
            v = d[y, x]
            z[y, x] = v if (np.isfinite(v) and v > 0) else np.float32(0.0)
    for y in range(h):
        for x in range(w):
            zz = z[y, x]
            keep = False
            if zz > 0:  # valid: finite and positive
                inner = n0 * xs[x] + n1 * ys[y]
                inner = inner + n2
                height = zz * inner + off
                keep = height > min_height
            if keep:  # cut where a 4-neighbour's depth jumps by more than jump x the smaller of the two
                for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0)):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w:
                        q = z[yy, xx]
                        if abs(q - zz) > jump * min(q, zz):
                            keep = False
                            break
            fg[y, x] = keep


def _settle_pairs_loop(out, qk, pairs, lo, hi, stride):  # pragma: no cover - numba
    for p in range(pairs.shape[0]):
        i, j = pairs[p, 0], pairs[p, 1]
        for y in range(lo[p, 1], hi[p, 1]):
            cy = y // stride
            for x in range(lo[p, 0], hi[p, 0]):
                if out[i, y, x] and out[j, y, x]:
                    cx = x // stride
                    if qk[j, cy, cx] > qk[i, cy, cx]:
                        out[i, y, x] = False
                    else:
                        out[j, y, x] = False


def _alive_loop(q, limit, alive):  # pragma: no cover - numba
    n, m = q.shape
    area = np.zeros(n, np.int64)
    claimants = np.zeros(m, np.int64)
    for i in range(n):
        for c in range(m):
            if q[i, c] > 0:
                area[i] += 1
                claimants[c] += 1
    n_contested = 0
    for c in range(m):
        n_contested += claimants[c] >= 2
    work = np.empty((n, n_contested), np.float32)
    sole = area.copy()
    k = 0
    for c in range(m):
        if claimants[c] >= 2:
            for i in range(n):
                v = q[i, c]
                work[i, k] = v
                sole[i] -= v > 0
            k += 1
    owned = np.empty(n, np.int64)
    for i in range(n):
        alive[i] = True
    for _ in range(n):
        owned[:] = sole
        for c in range(n_contested):
            best = 0
            bv = work[0, c]
            for i in range(1, n):
                if work[i, c] > bv:  # the first of equal maxima owns the cell
                    bv = work[i, c]
                    best = i
            if bv > 0:
                owned[best] += 1
        drop = -1
        for i in range(n):
            share = np.float32(1.0) if area[i] == 0 else np.float32(owned[i]) / np.float32(area[i])
            if alive[i] and share < limit:
                drop = i  # the last (lowest-scored) loser
        if drop < 0:
            break
        alive[drop] = False
        for c in range(n_contested):
            work[drop, c] = 0.0


if numba is not None:  # pragma: no branch
    _edge_tests_nb = numba.njit(cache=True, nogil=True)(_edge_tests_loop)
    _project_nb = numba.njit(cache=True, nogil=True)(_project_loop)
    _select_pairs_nb = numba.njit(cache=True, nogil=True)(_select_pairs_loop)
    _lift_codes_nb = numba.njit(cache=True, nogil=True)(_lift_codes_loop)
    _lift_gather_nb = numba.njit(cache=True, nogil=True)(_lift_gather_loop)
    _cluster_fg_nb = numba.njit(cache=True, nogil=True)(_cluster_fg_loop)
    _settle_pairs_nb = numba.njit(cache=True, nogil=True)(_settle_pairs_loop)
    _alive_nb = numba.njit(cache=True, nogil=True)(_alive_loop)


def edge_tests(x: np.ndarray, y: np.ndarray, ax: np.ndarray, ay: np.ndarray, vx: np.ndarray, vy: np.ndarray,
               tol: float, keep: np.ndarray, t1: np.ndarray, t2: np.ndarray, c: np.ndarray) -> None:
    """``keep`` (bool [N]) = the points ``(x, y)`` ([N], float32 or float64) on or outside at least one of the edges
    ``(ax[k], ay[k])`` + t ``(vx[k], vy[k])`` ([E] of that dtype, E >= 1): ``vx * (y - ay) - vy * (x - ax) <=
    tol``, every step rounded to the points' dtype as numpy does it (float32 points: compiled; float64: numpy).
    ``t1``, ``t2`` ([N], the points' dtype) and ``c`` (bool [N]) are scratch for the numpy version."""
    if ENABLED and x.dtype == np.float32:
        _edge_tests_nb(x, y, ax, ay, vx, vy, np.float32(tol), keep)
    else:
        _edge_tests_np(x, y, ax, ay, vx, vy, tol, keep, t1, t2, c)


def project(p: np.ndarray, b: np.ndarray, out: np.ndarray, t: np.ndarray) -> None:
    """``out[k] = p @ b[:, k]`` for k = 0, 1, 2, as ``x * b0k + y * b1k + z * b2k`` rounded to float32 step by step.

    Args:
        p (np.ndarray[N, 3] float32), b (np.ndarray[3, 3] float32): points and basis (columns).
        out (np.ndarray[3, N] float32): the result rows (may be views of larger rows).
        t (np.ndarray[N] float32): scratch for the numpy version.
    """
    if ENABLED:
        _project_nb(p, b, out)
    else:
        _project_np(p, b, out, t)


def select_pairs(x: np.ndarray, y: np.ndarray, keep: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The points ``(x[i], y[i])`` with ``keep[i]``, in order, as rows of ``out`` (float32 [>= N, 2]): returns the
    C-contiguous view ``out[:k]`` (``np.compress`` and a transposed copy without numba)."""
    if ENABLED:
        return out[: _select_pairs_nb(x, y, keep, out)]
    return np.ascontiguousarray(np.compress(keep, np.stack([x, y]), axis=1).T)


def lift_boxes(d: np.ndarray, m: np.ndarray, boxes: np.ndarray, dmin: float, dmax: float, thr: float,
               ucx: np.ndarray, vcy: np.ndarray, fx: np.float32, fy: np.float32, color: np.ndarray | None,
               stats: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The compiled body of :func:`~.lifting.lift_instances`' numpy path (``erode_px = 0``, float32 depth): one
    pass over the boxes' pixels classifies each (mask, depth in range, flying pixel) and counts, a second gathers
    the points. Same rules and float32 operations as :func:`~.lifting._valid_rows` and the numpy gathers: depth
    range and flying-pixel threshold compared in float32, points ``(ucx[u] * (z / fx), vcy[v] * (z / fy), z)``.
    Only with :data:`ENABLED`.

    Args:
        d (float32 [H, W]): depth. m (bool [N, H, W]): masks. boxes (int64 [B, 5]): ``(i, y0, y1, x0, x1)`` of each
            non-empty mask. ucx, vcy (float32 [W], [H]): ``u - cx``, ``v - cy``. color (uint8 [H, W, 3] | None).
            stats (int64 [3, N]): filled with the mask pixels, those with depth in range, the points.

    Returns:
        points float32 [M, 3] and colors uint8 [M, 3] (None without color), mask by mask in ``boxes`` order,
        row-major inside each box.
    """
    d = np.ascontiguousarray(d)  # one compiled layout (no copy for the pipeline's arrays)
    color = None if color is None else np.ascontiguousarray(color)
    area = int(((boxes[:, 2] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 3])).sum()) if boxes.shape[0] else 0
    point = np.empty(area, bool)
    _lift_codes_nb(d, m, boxes, np.float32(dmin), np.float32(dmax), not dmin > 1e-30, np.float32(thr), stats, point)
    total = int(stats[2].sum())
    pts = np.empty((total, 3), np.float32)
    cols = np.empty((total if color is not None else 0, 3), np.uint8)
    _lift_gather_nb(d, boxes, point, ucx, vcy, fx, fy, np.zeros((1, 1, 3), np.uint8) if color is None else color,
                    pts, cols)
    return pts, (cols if color is not None else None)


def cluster_foreground(d: np.ndarray, xs: np.ndarray, ys: np.ndarray, normal: np.ndarray, offset: float,
                       min_height: float, jump: float) -> np.ndarray:
    """The compiled foreground of :func:`~.geometric_proposals.cluster_boxes` (``uint8 [h, w]``, 1 = foreground):
    valid depth (finite, > 0) higher than ``min_height`` above the plane, not at a depth jump; the same float32
    operations as its numpy code. ``d`` (float32 [h, w], any strides) is the subsampled depth, ``xs`` / ``ys``
    (float32) the grid's normalized image coordinates, ``normal`` (float32 [3]) and ``offset`` the plane's. Only
    with :data:`ENABLED`."""
    z = np.empty(d.shape, np.float32)
    fg = np.empty(d.shape, np.uint8)
    n = np.asarray(normal, np.float32)
    _cluster_fg_nb(d, xs, ys, n[0], n[1], n[2], np.float32(offset), np.float32(min_height), np.float32(jump), z, fg)
    return fg


def settle_pairs(out: np.ndarray, qk: np.ndarray, pairs: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 stride: int) -> None:
    """The compiled loop of :func:`~.model.predictor._settle_pairs_np`: for each pair ``(i, j)`` of ``pairs``
    (int64 [P, 2], in order) the pixels both masks of ``out`` (bool [K, H, W], any strides) claim inside ``lo`` ..
    ``hi`` (int64 [P, 2] ``(x, y)``, end exclusive) go to the higher ``qk`` (float32 [K, H / stride, W / stride])
    there, ties to ``i``. Only with :data:`ENABLED`."""
    _settle_pairs_nb(out, qk, pairs, lo, hi, int(stride))


def alive(q: np.ndarray, threshold: float) -> np.ndarray:
    """The compiled :func:`~.model.predictor._alive_np` (bool [N]): the same counts, float32 shares and tie rule.
    ``q`` (float32 [N, cells], C-contiguous) is not changed. Only with :data:`ENABLED`."""
    out = np.empty(q.shape[0], bool)
    _alive_nb(np.ascontiguousarray(q, np.float32), np.float32(1.0 - threshold), out)
    return out


def warm_up() -> float:
    """Compile (or load from numba's cache) every loop here on tiny inputs of the types the pipeline passes;
    returns the seconds it took (0 without numba)."""
    if not ENABLED:
        return 0.0
    t0 = time.perf_counter()
    f = np.zeros(4, np.float32)
    edge_tests(f, f, f[:1], f[:1], f[:1], f[:1], np.float32(0), np.zeros(4, bool), f, f, np.zeros(4, bool))
    work = np.zeros((3, 8), np.float32)
    project(np.zeros((4, 3), np.float32), np.eye(3, dtype=np.float32), work[:, 2:6], f)
    select_pairs(work[0, :4], work[1, :4], np.ones(4, bool), np.zeros((4, 2), np.float32))
    depth = np.ones((4, 4), np.float32)
    for masks in (np.zeros((2, 2, 4, 4), bool)[:, 0], np.zeros((2, 4, 4), bool)):  # the paste's strided stack, and C
        for color in (np.zeros((4, 4, 3), np.uint8), None):
            lift_boxes(depth, masks, np.array([[0, 0, 1, 0, 1]], np.int64), 0.1, 5.0, 0.03, f, f, np.float32(1),
                       np.float32(1), color, np.zeros((3, 2), np.int64))
    cluster_foreground(depth[::2, ::2], f[:2], f[:2], np.ones(3, np.float32), 0.0, 0.01, 0.03)
    alive(np.zeros((2, 3), np.float32), 0.5)
    pair = np.zeros((1, 2), np.int64)
    for masks in (np.zeros((2, 2, 4, 4), bool)[:, 0], np.zeros((2, 4, 4), bool)):
        settle_pairs(masks, np.zeros((2, 1, 1), np.float32), pair, pair, pair, 4)
    return time.perf_counter() - t0
