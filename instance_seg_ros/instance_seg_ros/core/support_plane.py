"""The dominant support plane (table, floor) of a depth image, and which instances lie on it.

:func:`fit_support_plane` subsamples the depth image on a ``stride`` grid, back-projects the valid pixels
(pinhole model, camera optical frame: x right, y down, z forward, metres) and runs a seeded, vectorized RANSAC:
all ``iterations`` point triplets are drawn at once, their planes are scored against the subsampled points in
chunks (one matrix product per chunk), and the best one is refined by least squares (the smallest eigenvector of
the inliers' scatter matrix, twice, re-selecting the inliers in between). It takes a few milliseconds for a
640x480 frame on one CPU core.

Depth-dependent tolerance. A structured-light camera (Kinect v1, Asus Xtion, RealSense D4xx) measures disparity,
so its depth noise and quantisation step grow with the square of the depth (about 1.5 mm at 1 m and 6 mm at 2 m
for a Kinect v1 / Xtion; a few mm more of low-frequency distortion over a table). The inlier band of a point at
depth ``z`` is therefore ``tolerance * max(1, z / 1 m)**2`` (:func:`plane_tolerance`): ``tolerance`` at 1 m and
nearer (where calibration and registration errors of a few mm, not the disparity noise, dominate), 4x at 2 m.

:func:`on_support_plane` flags instances whose points do not rise above the plane: print, paper, reflections,
a mask that leaked onto the table, or the floor beyond the table's edge (below the plane).

Nothing here imports ROS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import Config
from .types import InstanceResult, Intrinsics

__all__ = [
    "HEIGHT_QUANTILE",
    "MIN_VALID_POINTS",
    "SupportPlane",
    "SupportPlaneError",
    "fit_plane",
    "fit_support_plane",
    "on_support_plane",
    "plane_tolerance",
    "renumber_instances",
    "support_plane_check",
    "support_without",
]

#: Fewer valid subsampled depth pixels than this and :func:`fit_support_plane` returns None (no evidence).
MIN_VALID_POINTS = 50

#: :func:`on_support_plane` compares this quantile of an instance's point heights with ``min_height``: high enough
#: that the object's top decides (its bottom edge and a mask that leaked onto the table sit at height ~0), low
#: enough that a few flying pixels or outliers above a flat sheet do not lift it off the plane.
HEIGHT_QUANTILE = 0.9

# RANSAC hypotheses are scored against at most this many of the subsampled points (evenly strided): the inlier
# share of each is then known to about +-1 %, plenty to pick the best; 4x less work than all 19,200 of a 640x480
# frame at stride 4
_SCORE_POINTS = 4096
# hypotheses scored per matrix product: [_CHUNK, _SCORE_POINTS] float32 residuals, 1 MB
_CHUNK = 64


class SupportPlaneError(ValueError):
    """A bad argument to the support-plane functions; the message names the argument and what is allowed."""


@dataclass(frozen=True)
class SupportPlane:
    """A plane ``normal · p + offset = 0`` in the camera optical frame (metres).

    Attributes:
        normal (np.ndarray[3] float64): unit normal, oriented towards the camera (the camera origin has positive
            height, i.e. ``offset >= 0``).
        offset (float): metres; the camera's height above the plane.
        support (float): share of the valid subsampled depth pixels within the (depth-dependent) tolerance of the
            plane, 0..1.
        inliers (int): number of those pixels.
    """

    normal: np.ndarray
    offset: float
    support: float
    inliers: int

    def height(self, points: np.ndarray) -> np.ndarray:
        """Signed height of points above the plane.

        Args:
            points (np.ndarray[N, 3] float): metres, camera optical frame.

        Returns:
            np.ndarray[N] float64: metres; positive on the camera's side, negative behind / below the plane
            (NaN for non-finite points).
        """
        p = np.asarray(points)
        if p.ndim != 2 or p.shape[1] != 3:
            raise SupportPlaneError(f"points must have shape [N, 3], got {list(p.shape)}.")
        return p.astype(np.float64, copy=False) @ self.normal + self.offset


def plane_tolerance(z: np.ndarray | float, tolerance: float) -> np.ndarray:
    """The inlier band (metres) of a point at depth ``z`` (metres): ``tolerance * max(1, z)**2``.

    Structured-light depth noise grows with the square of the depth (see the module docstring); ``tolerance`` is
    the band at 1 m and nearer.

    Returns:
        np.ndarray (shape of ``z``) float32.
    """
    zz = np.maximum(np.asarray(z, dtype=np.float32), np.float32(1.0))
    return np.float32(tolerance) * zz * zz


def _check_fit_args(
    depth: np.ndarray, K: Intrinsics, tolerance: float, min_support: float, stride: int, iterations: int,
    depth_min: float, depth_max: float,
) -> np.ndarray:
    if not isinstance(K, Intrinsics):
        raise SupportPlaneError(f"K must be an Intrinsics, got {type(K).__name__}.")
    d = np.asarray(depth)
    if d.ndim != 2:
        raise SupportPlaneError(f"depth must be a 2-D [H, W] image in metres, got shape {list(d.shape)}.")
    if d.shape != (K.height, K.width):
        raise SupportPlaneError(
            f"depth is {d.shape[1]}x{d.shape[0]} but K is for {K.width}x{K.height}; the intrinsics must belong to "
            "the depth image."
        )
    if not np.issubdtype(d.dtype, np.floating):
        raise SupportPlaneError(
            f"depth must be float metres (NaN = invalid), got dtype {d.dtype}; decode 16UC1 with decode_depth first."
        )
    if not (np.isfinite(tolerance) and tolerance > 0):
        raise SupportPlaneError(f"tolerance must be a positive distance in metres (e.g. 0.01), got {tolerance!r}.")
    if not (np.isfinite(min_support) and 0 < min_support <= 1):
        raise SupportPlaneError(f"min_support must be a share in (0, 1], got {min_support!r}.")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise SupportPlaneError(f"stride must be an integer >= 1 (1 = every pixel), got {stride!r}.")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise SupportPlaneError(f"iterations must be an integer >= 1, got {iterations!r}.")
    if not (np.isfinite(depth_min) and np.isfinite(depth_max) and 0 <= depth_min < depth_max):
        raise SupportPlaneError(
            f"depth_min ({depth_min!r}) and depth_max ({depth_max!r}) must satisfy 0 <= depth_min < depth_max."
        )
    return d


def _subsampled_points(d: np.ndarray, K: Intrinsics, stride: int, dmin: float, dmax: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``([M, 3] float32 points, bool [h, w] valid)`` of the valid pixels on the ``stride`` grid (rows and columns
    0, stride, ...); the points are the grid's valid pixels in row-major order."""
    sub = d[::stride, ::stride].astype(np.float32, copy=False)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(sub) & (sub > 0) & (sub >= dmin) & (sub <= dmax)
    r, c = np.nonzero(valid)
    z = sub[r, c]
    pts = np.empty((z.size, 3), np.float32)
    pts[:, 0] = (c.astype(np.float32) * stride - np.float32(K.cx)) * (z / np.float32(K.fx))
    pts[:, 1] = (r.astype(np.float32) * stride - np.float32(K.cy)) * (z / np.float32(K.fy))
    pts[:, 2] = z
    return pts, valid


def support_without(depth: np.ndarray, K: Intrinsics, plane: SupportPlane, label_image: np.ndarray, count: int, *,
                    tolerance: float = 0.01, stride: int = 4, depth_min: float = 0.1, depth_max: float = 5.0
                    ) -> np.ndarray:
    """The plane's support without each instance's pixels: ``float64[count]``, entry ``i`` for label ``i + 1``.

    The share of the valid subsampled depth pixels within the inlier band of ``plane`` that do not belong to the
    instance. An instance that *is* the plane (a box face or a wall filling the view, found as the dominant plane
    because it holds most of the depth) leaves little support behind; a detection on a real table leaves the rest
    of the table.

    Args:
        depth (np.ndarray[H, W] float): metres, NaN invalid. label_image (np.ndarray[H, W] int): 0 = background, else
            the instance's 1-based index. count: the number of instances.
    """
    d = _check_fit_args(depth, K, tolerance, 0.5, stride, 1, depth_min, depth_max)
    lab = np.asarray(label_image)
    if lab.shape != d.shape:
        raise SupportPlaneError(f"label_image is {lab.shape[1]}x{lab.shape[0]} but depth is {d.shape[1]}x{d.shape[0]}.")
    pts, valid = _subsampled_points(d, K, stride, depth_min, depth_max)
    if pts.shape[0] == 0:
        return np.zeros(int(count))
    inl = np.abs(plane.height(pts)) <= plane_tolerance(pts[:, 2], tolerance)
    owners = lab[::stride, ::stride][valid].astype(np.int64)
    per = np.bincount(np.clip(owners[inl], 0, int(count)), minlength=int(count) + 1)
    return (int(inl.sum()) - per[1:]) / pts.shape[0]


def _refine(pt: np.ndarray, inl: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Least-squares plane (unit normal, offset) of the points ``pt`` ``[3, M]`` (coordinates as rows) selected by
    ``inl`` ``[M]``; None when fewer than 3 points or degenerate. Rows, not ``[M, 3]`` points: the selection, mean
    and scatter each run along contiguous memory (about 3x cheaper)."""
    q = np.compress(inl, pt, axis=1)
    if q.shape[1] < 3:
        return None
    c = q.mean(axis=1)
    x = q - c[:, None]
    evals, evecs = np.linalg.eigh(x @ x.T)  # ascending: the smallest-variance direction is the normal
    if evals[1] <= 1e-12 * max(evals[2], 1e-30):  # collinear inliers: no unique plane
        return None
    n = evecs[:, 0]
    return n, float(-n @ c)


def fit_support_plane(
    depth: np.ndarray,
    K: Intrinsics,
    *,
    tolerance: float = 0.01,
    min_support: float = 0.2,
    stride: int = 4,
    iterations: int = 200,
    seed: int = 0,
    depth_min: float = 0.1,
    depth_max: float = 5.0,
) -> SupportPlane | None:
    """Fit the dominant plane of a depth image (seeded RANSAC on a subsampled grid + least-squares refinement).

    Args:
        depth (np.ndarray[H, W] float): metres, NaN / 0 / out of ``[depth_min, depth_max]`` = invalid.
        K: intrinsics of the camera the depth is registered to; ``(K.height, K.width)`` must equal ``(H, W)``.
        tolerance: inlier band in metres at 1 m; it grows with depth as :func:`plane_tolerance` (``0.01``: a bit
            more than the noise and distortion of a structured-light camera at 1 m; at 2 m it is 4 cm).
        min_support: the plane must hold at least this share of the valid subsampled pixels (0.2: a table in a
            tabletop view covers a third or more of the image; a single object face or a wall patch rarely 20 %).
        stride: use every ``stride``-th row and column (4: 19,200 samples of a 640x480 frame).
        iterations: RANSAC hypotheses (200: with 40 % inliers the chance to miss an all-inlier triplet is 2e-6;
            at the 20 % minimum it is 0.2).
        seed: seeds the triplet draw; the same inputs and seed give the same plane.
        depth_min, depth_max: valid depth range, metres.

    Returns:
        The :class:`SupportPlane` (normal towards the camera), or None when fewer than :data:`MIN_VALID_POINTS`
        subsampled pixels are valid or no plane holds ``min_support`` of them.

    Raises:
        SupportPlaneError: bad arguments (depth not a 2-D float image of K's size, tolerance <= 0, stride < 1,
            min_support outside (0, 1], iterations < 1, bad depth range).
    """
    d = _check_fit_args(depth, K, tolerance, min_support, stride, iterations, depth_min, depth_max)
    p, _ = _subsampled_points(d, K, int(stride), depth_min, depth_max)
    m = p.shape[0]
    if m < MIN_VALID_POINTS:
        return None
    # all hypotheses at once: [I, 3] normals and [I] offsets from triplets of distinct points
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m, size=(int(iterations), 3))
    a, b, c = (p[idx[:, k]].astype(np.float64) for k in range(3))
    e1, e2 = b - a, c - a
    n = np.cross(e1, e2)
    nn = np.linalg.norm(n, axis=1)
    # near-collinear (or repeated) triplets: sin(angle) < 1e-3 gives no usable normal
    ok = nn > 1e-3 * np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1)
    if not ok.any():
        return None
    n = n[ok] / nn[ok, None]
    off = -(n * a[ok]).sum(axis=1)
    # score on an evenly strided subset of at most _SCORE_POINTS points (the choice of the best hypothesis does
    # not need all of them; its refinement and the reported support use every subsampled point)
    q = p[:: -(-m // _SCORE_POINTS)]
    q_t = np.ascontiguousarray(q.T)  # [3, S]: hypotheses x points, so each count runs along contiguous memory
    q_tol = plane_tolerance(q[:, 2], tolerance)
    counts = np.empty(n.shape[0], np.int64)
    n32, off32 = n.astype(np.float32), off.astype(np.float32)
    within = np.empty((min(_CHUNK, n.shape[0]), q_t.shape[1]), bool)
    for s in range(0, n.shape[0], _CHUNK):
        r = n32[s : s + _CHUNK] @ q_t
        r += off32[s : s + _CHUNK, None]
        np.abs(r, out=r)
        w = np.less_equal(r, q_tol, out=within[: r.shape[0]])
        # counted as uint8 sums: several times cheaper than count_nonzero along an axis
        counts[s : s + _CHUNK] = np.add.reduce(w.view(np.uint8), axis=1, dtype=np.int32)
    best = int(np.argmax(counts))  # the first of equals: deterministic
    normal, offset = n[best], float(off[best])

    pt = np.ascontiguousarray(p.T, dtype=np.float64)  # [3, M]: x, y, z rows
    tol = plane_tolerance(pt[2], tolerance)  # [M] float32
    inl = np.abs(normal @ pt + offset) <= tol
    for _ in range(2):  # least squares on the inliers, then once more on the inliers of the refined plane
        refined = _refine(pt, inl)
        if refined is None:
            break
        normal, offset = refined
        inl = np.abs(normal @ pt + offset) <= tol
    count = int(np.count_nonzero(inl))
    support = count / m
    if support < min_support:
        return None
    if offset < 0:  # orient towards the camera: the origin gets height +offset > 0
        normal, offset = -normal, -offset
    return SupportPlane(normal=np.asarray(normal, np.float64), offset=float(offset), support=float(support),
                        inliers=count)


def on_support_plane(
    points_per_instance: list[np.ndarray],
    plane: SupportPlane,
    *,
    min_height: float = 0.015,
    min_points: int = 10,
) -> np.ndarray:
    """Which instances lie on the support plane or behind / below it.

    An instance is flagged when the :data:`HEIGHT_QUANTILE` (90th percentile) of its points' heights above the
    plane is below ``min_height``: nothing of it rises above the plane (print, paper, a reflection, a mask on the
    table), or it lies beyond / below it (the floor past the table's edge). Instances with fewer than ``min_points``
    finite points are never flagged: there is no evidence either way.

    Args:
        points_per_instance: one np.ndarray[N_i, 3] float per instance (metres, camera optical frame; rows with a
            non-finite coordinate are ignored).
        plane: from :func:`fit_support_plane`.
        min_height: metres (0.015: half the 3 cm of the smallest objects we expect, and above the plane's noise
            band of about 1 cm at 1 m).
        min_points: see above.

    Returns:
        np.ndarray[N] bool, one per instance.

    Raises:
        SupportPlaneError: bad arguments (a points array not [N, 3], min_height not finite, min_points < 1).
    """
    if not isinstance(plane, SupportPlane):
        raise SupportPlaneError(f"plane must be a SupportPlane (from fit_support_plane), got {type(plane).__name__}.")
    if not np.isfinite(min_height):
        raise SupportPlaneError(f"min_height must be a finite height in metres, got {min_height!r}.")
    if isinstance(min_points, bool) or not isinstance(min_points, (int, np.integer)) or min_points < 1:
        raise SupportPlaneError(f"min_points must be an integer >= 1, got {min_points!r}.")
    n_inst = len(points_per_instance)
    if n_inst == 0:
        return np.zeros(0, bool)
    q = np.full(n_inst, np.inf)
    for i, pts in enumerate(points_per_instance):
        p = np.asarray(pts)
        if p.ndim != 2 or p.shape[1] != 3:
            raise SupportPlaneError(
                f"points_per_instance[{i}] must have shape [N, 3], got {list(p.shape)}."
            )
        if p.shape[0] and not np.isfinite(p).all():
            p = p[np.isfinite(p).all(axis=1)]
        n = p.shape[0]
        if n < min_points:
            continue
        # the quantile with linear interpolation (np.quantile's default), by a partial sort: O(n), not a full sort
        h = p.astype(np.float64, copy=False) @ plane.normal + plane.offset
        pos = HEIGHT_QUANTILE * (n - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)
        part = np.partition(h, (lo, hi))
        frac = pos - lo
        q[i] = (1 - frac) * part[lo] + frac * part[hi]
    return q < min_height


# ---------------------------------------------------------------------------------------- the pipeline's check
def fit_plane(config: Config, depth: np.ndarray, K: Intrinsics) -> SupportPlane | None:
    """The support plane of one frame with the ``filter.*`` settings (None when no plane holds enough depth)."""
    f = config.filter
    return fit_support_plane(depth, K, tolerance=f.plane_tolerance, min_support=f.plane_min_support,
                             depth_min=config.depth.min, depth_max=config.depth.max)


def support_plane_check(config: Config, depth: np.ndarray, K: Intrinsics, points: list[np.ndarray],
                        label_image: np.ndarray | None = None, *, plane: SupportPlane | None = None,
                        refit: bool = True) -> tuple[SupportPlane | None, np.ndarray]:
    """The ``filter.*`` support-plane check of one frame: ``(plane or None, bool[N] instance lies on it or behind)``.

    An instance is flagged when its points do not rise ``filter.min_height`` above the plane
    (:func:`~.support_plane.on_support_plane`), unless the plane is mostly that instance (a box face or a wall
    filling the view): without the instance's pixels the plane must still hold ``filter.plane_min_support`` of the
    valid depth (:func:`~.support_plane.support_without`; needs ``label_image``).

    Args:
        depth (np.ndarray[H, W] float32): meters, NaN invalid. points: each instance's lifted points ([M, 3]).
        label_image (np.ndarray[H, W] uint16 | None): the instances' visible masks, 1-based as ``points``.
        plane, refit: with ``refit=False``, ``plane`` is this frame's plane, already fitted (:func:`fit_plane`).
    """
    f = config.filter
    if refit:
        plane = fit_plane(config, depth, K)
    if plane is None or not points:
        return plane, np.zeros(len(points), bool)
    flagged = np.asarray(on_support_plane(points, plane, min_height=f.min_height), bool)
    if flagged.any() and label_image is not None:
        rest = support_without(depth, K, plane, label_image, len(points), tolerance=f.plane_tolerance,
                               depth_min=config.depth.min, depth_max=config.depth.max)
        flagged &= rest >= f.plane_min_support
    return plane, flagged


def renumber_instances(instances: list[InstanceResult], label_image: np.ndarray) -> np.ndarray:
    """Give the kept ``instances`` indices 1..N in order and map ``label_image`` to them (dropped ones become 0)."""
    lut = np.zeros(int(label_image.max(initial=0)) + 1, np.uint16)
    for new, inst in enumerate(instances, start=1):
        if inst.index < lut.size:
            lut[inst.index] = new
        inst.index = new
    return lut[label_image]
