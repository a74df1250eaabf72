"""The classical tabletop pipeline a ROS user reaches for instead of a learned model, to score beside ours.

RANSAC support plane + Euclidean clusters of the points above it (the PCL ``tabletop`` recipe:
``SACSegmentation`` + ``EuclideanClusterExtraction``), on depth only; ``isr eval --frames ... --baseline plane``
runs it beside the model. Per frame:

1. **plane** (:func:`~instance_seg_ros.core.support_plane.fit_support_plane`): the dominant plane of the depth
   image, seeded RANSAC on a subsampled grid. The valid pixels (in ``[depth_min, depth_max]``, no flying pixels,
   :func:`~instance_seg_ros.core.lifting.valid_depth_mask`) whose height above it exceeds
   ``min_height * max(1, z / 1 m)**2`` (the noise of a structured-light camera grows with the square of the depth,
   like the plane's inlier band) and is at most ``max_height`` are the *object pixels*. Points below the plane
   (the floor past the table's edge) never are. **Without a plane** (none holds ``plane_min_support`` of the
   depth: a bin, a shelf, a wall) every valid pixel is an object pixel, so whole surfaces become clusters: the
   baseline has nothing better to offer there, and it shows.
2. **cluster**: the object pixels on a ``stride`` grid are clustered with Open3D's DBSCAN (radius
   ``cluster_eps``; ``cluster_min_neighbors`` points within it make a core point), Euclidean clustering with a
   small density guard. ``cluster_stride = 0`` picks the grid so that neighbouring samples lie about
   ``cluster_eps / 3`` apart at the median object depth (about 28 samples within ``cluster_eps`` of a point of a
   surface facing the camera), which keeps the cost about the same at any resolution and distance.
   Clusters of fewer than ``min_cluster_points`` samples are dropped.
3. **masks**: every object pixel takes the cluster of the nearest (in depth) of the four grid samples around it
   that belongs to a cluster and lies within ``cluster_eps`` in depth; pixels with none stay unassigned. Each
   cluster's mask is closed morphologically (``closing_px``; only pixels no other cluster holds are added, so
   masks never overlap), and masks under ``min_pixels`` are dropped.

Each cluster becomes an :class:`~instance_seg_ros.core.types.InstanceResult`: visible mask and box, amodal =
visible (no amodal estimate), ``occlusion = 0``, ``class_name = "object"`` (``class_id = 1``), ``points`` = the
3-D points of its object pixels (colors from the image), geometry from
:func:`~instance_seg_ros.core.pipeline.attach_geometry`. The **score** is ``A / (A + score_area)`` with ``A`` the
cluster's visible surface area in m² (each pixel counts ``z² / (fx fy)``): bigger surfaces rank higher, the same
object scores the same at any distance or resolution, and a ``score_area`` (10 cm x 10 cm) face scores 0.5. The
baseline has no other evidence of objectness; COCO AP needs a ranking. Instances are sorted by descending score
(ties: the cluster found first); masks are disjoint, so the label image holds every mask whole.

Timings (ms): ``plane``, ``cluster`` (object pixels, sampling, DBSCAN), ``masks`` (assignment, closing, crops,
points, geometry) and ``total``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import cv2
import numpy as np

from ..core.images import FrameError, check_frame
from ..core.lifting import valid_depth_mask
from ..core.pipeline import attach_geometry
from ..core.support_plane import fit_support_plane
from ..core.types import FrameResult, InstanceResult, Intrinsics

__all__ = ["PlaneBaselineConfig", "PlaneBaselineError", "PlaneClusterBaseline"]

#: the most samples a grid step may skip when ``cluster_stride`` is automatic
MAX_AUTO_STRIDE = 8


class PlaneBaselineError(ValueError):
    """A bad :class:`PlaneBaselineConfig` value; the message names the field and what is allowed."""


@dataclass(frozen=True)
class PlaneBaselineConfig:
    """Settings of :class:`PlaneClusterBaseline` (metres, pixels). The defaults follow from the sensor and the
    objects, not from any frame: a structured-light camera (noise ~1-2 % of depth, 1-2 mm at 1 m) and tabletop
    objects at least 3 cm tall, seen from 0.4-2 m.

    Attributes:
        depth_min, depth_max: valid depth range (0.1, 5.0: the node's ``depth.min`` / ``depth.max``).
        flying_pixel_threshold: drop pixels whose depth differs from a 4-neighbour by more than this share of
            their own (0.03, the node's ``depth.flying_pixel_threshold``): the interpolated points at an object's
            silhouette would otherwise bridge it to the table or to the object behind.
        plane_tolerance: RANSAC inlier band at 1 m, growing with depth² (0.01, see ``core.support_plane``).
        plane_min_support: the plane must hold this share of the valid depth (0.2; below it: no plane).
        plane_stride, plane_iterations: RANSAC grid step and hypotheses (4, 200: a few ms per 640x480 frame).
        min_height: object pixels rise more than this above the plane at 1 m (0.01: the plane's inlier band;
            scaled by ``max(1, z)²`` like it). Objects lower than this are invisible to the baseline.
        max_height: ... and at most this (1.0: no tabletop object is taller; walls and people beyond the table
            are not objects on it).
        cluster_eps: Euclidean clustering radius (0.015: two objects closer than 1.5 cm merge; larger than the
            sample spacing and the noise, so one object's surface stays one cluster).
        cluster_stride: grid step of the clustered samples; 0 = automatic (spacing about ``cluster_eps / 3`` at
            the median object depth, at most :data:`MAX_AUTO_STRIDE`).
        cluster_min_neighbors: DBSCAN core-point minimum, the point itself included (4: a surface point has
            ~28 samples within ``cluster_eps`` at the automatic spacing, still ~7 at twice the median depth; a pair
            or triplet of stray samples cannot grow a cluster or bridge two).
        min_cluster_points: clusters with fewer samples are dropped (10: about a 2 cm x 2 cm patch at the
            automatic spacing).
        min_pixels: masks with fewer pixels are dropped (100: a 3 cm x 3 cm face at 1.5 m covers ~110 pixels
            with a 525 px focal length, the VGA Kinect / Xtion).
        closing_px: radius of the morphological closing of each mask (2: a 5x5 square fills the one- or
            two-pixel holes of invalid depth and of the sampling; 0 disables).
        score_area: visible area in m² that scores 0.5 (0.01: a 10 cm x 10 cm face).
        min_points: least 3-D points for an oriented box (10, the node's ``cloud.min_points``).
    """

    depth_min: float = 0.1
    depth_max: float = 5.0
    flying_pixel_threshold: float = 0.03
    plane_tolerance: float = 0.01
    plane_min_support: float = 0.2
    plane_stride: int = 4
    plane_iterations: int = 200
    min_height: float = 0.01
    max_height: float = 1.0
    cluster_eps: float = 0.015
    cluster_stride: int = 0
    cluster_min_neighbors: int = 4
    min_cluster_points: int = 10
    min_pixels: int = 100
    closing_px: int = 2
    score_area: float = 0.01
    min_points: int = 10

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
                raise PlaneBaselineError(f"{f.name} must be an integer, got {v!r}.")
            if f.type == "float" and (isinstance(v, bool) or not isinstance(v, (int, float, np.number))
                                      or not math.isfinite(v)):
                raise PlaneBaselineError(f"{f.name} must be a finite number, got {v!r}.")
        if not 0 <= self.depth_min < self.depth_max:
            raise PlaneBaselineError(
                f"depth_min ({self.depth_min}) and depth_max ({self.depth_max}) must satisfy 0 <= min < max."
            )
        if not 0 <= self.flying_pixel_threshold <= 1:
            raise PlaneBaselineError(
                f"flying_pixel_threshold must be in [0, 1] (0 disables), got {self.flying_pixel_threshold}."
            )
        positive = ("plane_tolerance", "cluster_eps", "score_area", "max_height")
        for name in positive:
            if getattr(self, name) <= 0:
                raise PlaneBaselineError(f"{name} must be > 0, got {getattr(self, name)}.")
        if not 0 < self.plane_min_support <= 1:
            raise PlaneBaselineError(f"plane_min_support must be in (0, 1], got {self.plane_min_support}.")
        if self.min_height < 0 or self.min_height >= self.max_height:
            raise PlaneBaselineError(
                f"min_height ({self.min_height}) must be >= 0 and below max_height ({self.max_height})."
            )
        for name in ("plane_stride", "plane_iterations", "cluster_min_neighbors", "min_cluster_points"):
            if getattr(self, name) < 1:
                raise PlaneBaselineError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("cluster_stride", "min_pixels", "closing_px", "min_points"):
            if getattr(self, name) < 0:
                raise PlaneBaselineError(f"{name} must be >= 0, got {getattr(self, name)}.")


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


class PlaneClusterBaseline:
    """RANSAC support plane + Euclidean clusters above it (see the module docstring).

    Args:
        config: the settings; the documented defaults when None.
        seed: seeds the RANSAC draw; the same frame and seed give the same result.

    :meth:`process` has the :class:`~instance_seg_ros.core.pipeline.Segmenter` signature.
    """

    def __init__(self, config: PlaneBaselineConfig | None = None, *, seed: int = 0) -> None:
        if config is None:
            config = PlaneBaselineConfig()
        if not isinstance(config, PlaneBaselineConfig):
            raise PlaneBaselineError(f"config must be a PlaneBaselineConfig, got {type(config).__name__}.")
        self.config = config
        self.seed = int(seed)
        import open3d  # noqa: F401  (its first import costs ~0.5 s: pay it here, not in the first frame's timings)

    def process(self, color: np.ndarray, depth: np.ndarray, K: Intrinsics) -> FrameResult:
        """Segment one frame.

        Args:
            color (np.ndarray[H, W, 3] uint8): RGB image (only for the points' colors).
            depth (np.ndarray[H, W] float32): registered depth in metres, NaN where invalid.
            K: intrinsics of the color camera (size must match the images).

        Returns:
            FrameResult: instances by descending score (``index = position + 1``), label image uint16 (0 =
            background), timings in ms (``plane``, ``cluster``, ``masks``, ``total``), ``support_plane`` (the
            :class:`~instance_seg_ros.core.support_plane.SupportPlane`, or None when none was found).

        Raises:
            FrameError: malformed frame (sizes, intrinsics, depth not float metres).
        """
        check_frame(color, depth, K)
        if not np.issubdtype(np.asarray(depth).dtype, np.floating):
            raise FrameError(
                f"depth must be float metres (NaN = invalid), got dtype {np.asarray(depth).dtype}; decode 16UC1 with "
                "decode_depth first."
            )
        cfg = self.config
        h, w = depth.shape
        t_start = time.perf_counter()
        d = np.ascontiguousarray(depth, dtype=np.float32)

        # -- plane
        t0 = time.perf_counter()
        plane = fit_support_plane(
            d, K, tolerance=cfg.plane_tolerance, min_support=cfg.plane_min_support, stride=cfg.plane_stride,
            iterations=cfg.plane_iterations, seed=self.seed, depth_min=cfg.depth_min, depth_max=cfg.depth_max,
        )
        t_plane = _ms(t0)

        # -- cluster: object pixels, their samples on the grid, DBSCAN
        t0 = time.perf_counter()
        xr = ((np.arange(w, dtype=np.float32) - np.float32(K.cx)) / np.float32(K.fx))[None, :]  # x / z per column
        yr = ((np.arange(h, dtype=np.float32) - np.float32(K.cy)) / np.float32(K.fy))[:, None]  # y / z per row
        obj = valid_depth_mask(d, depth_min=cfg.depth_min, depth_max=cfg.depth_max,
                               flying_pixel_threshold=cfg.flying_pixel_threshold)
        if plane is not None:
            n = plane.normal.astype(np.float32)
            with np.errstate(invalid="ignore"):
                height = d * (n[0] * xr + n[1] * yr + n[2]) + np.float32(plane.offset)
                zz = np.maximum(d, np.float32(1.0))
                obj &= (height > np.float32(cfg.min_height) * zz * zz) & (height <= np.float32(cfg.max_height))
        stride = cfg.cluster_stride or self._auto_stride(d, obj, K)
        grid_obj = obj[::stride, ::stride]
        gr, gc = np.nonzero(grid_obj)
        gz = d[::stride, ::stride][gr, gc]
        samples = np.stack([xr[0, gc * stride] * gz, yr[gr * stride, 0] * gz, gz], axis=1).astype(np.float64)
        labels = self._dbscan(samples)  # [S] int, -1 = none
        if labels.size:
            sizes = np.bincount(labels[labels >= 0], minlength=int(labels.max()) + 1)
            keep = sizes >= cfg.min_cluster_points
            remap = np.where(keep, np.cumsum(keep), 0)  # cluster -> 1-based kept id (in the order found), 0 = dropped
            labels = np.where(labels >= 0, remap[np.maximum(labels, 0)], 0)
            n_clusters = int(keep.sum())
        else:
            n_clusters = 0
        grid_lab = np.zeros(grid_obj.shape, np.int32)
        grid_lab[gr, gc] = labels
        t_cluster = _ms(t0)

        # -- masks: every object pixel to a cluster, closing, instances
        t0 = time.perf_counter()
        instances: list[InstanceResult] = []
        label_img = np.zeros((h, w), np.uint16)
        if n_clusters:
            assigned = self._assign(d, obj, grid_lab, stride)
            instances = self._instances(color, d, K, assigned, n_clusters, xr, yr)
            for inst in instances:
                x, y, bw, bh = inst.bbox
                label_img[y : y + bh, x : x + bw][inst.mask] = inst.index
        t_masks = _ms(t0)
        timings = {"plane": t_plane, "cluster": t_cluster, "masks": t_masks, "total": _ms(t_start)}
        return FrameResult(width=w, height=h, instances=instances, label_image=label_img, timings=timings,
                           support_plane=plane)

    # ------------------------------------------------------------------ steps
    def _auto_stride(self, d: np.ndarray, obj: np.ndarray, K: Intrinsics) -> int:
        """Grid step whose sample spacing is about ``cluster_eps / 3`` at the median object depth."""
        z = d[::4, ::4][obj[::4, ::4]]
        if z.size == 0:
            return 1
        pixel = float(np.median(z)) / math.sqrt(K.fx * K.fy)  # metres per pixel there
        return int(min(MAX_AUTO_STRIDE, max(1, math.floor(self.config.cluster_eps / 3.0 / pixel))))

    def _dbscan(self, samples: np.ndarray) -> np.ndarray:
        """[S] int64 DBSCAN labels of [S, 3] float64 points (-1 = noise); empty for no points."""
        if samples.shape[0] == 0:
            return np.zeros(0, np.int64)
        import open3d as o3d

        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(samples))
        lab = pc.cluster_dbscan(eps=self.config.cluster_eps, min_points=self.config.cluster_min_neighbors,
                                print_progress=False)
        return np.asarray(lab, np.int64)

    def _assign(self, d: np.ndarray, obj: np.ndarray, grid_lab: np.ndarray, s: int) -> np.ndarray:
        """[H, W] int32 cluster id per pixel (0 = none): of the four grid samples around an object pixel, the
        labelled one nearest in depth, if within ``cluster_eps``."""
        h, w = d.shape
        gh, gw = grid_lab.shape
        grid_z = d[::s, ::s]
        r0 = np.minimum(np.arange(h) // s, gh - 1)
        c0 = np.minimum(np.arange(w) // s, gw - 1)
        best_lab = np.zeros((h, w), np.int32)
        best_dz = np.full((h, w), np.float32(self.config.cluster_eps))
        for rr in (r0, np.minimum(r0 + 1, gh - 1)):
            for cc in (c0, np.minimum(c0 + 1, gw - 1)):
                lab = grid_lab[np.ix_(rr, cc)]
                with np.errstate(invalid="ignore"):
                    dz = np.abs(d - grid_z[np.ix_(rr, cc)])
                    better = (lab > 0) & (dz <= best_dz)
                best_lab[better] = lab[better]
                best_dz[better] = dz[better]
        best_lab[~obj] = 0
        return best_lab

    def _instances(
        self, color: np.ndarray, d: np.ndarray, K: Intrinsics, assigned: np.ndarray, n_clusters: int,
        xr: np.ndarray, yr: np.ndarray,
    ) -> list[InstanceResult]:
        cfg = self.config
        h, w = d.shape
        # per cluster: its box and its visible area (m²) from the assigned pixels, in one pass
        ys, xs = np.nonzero(assigned)
        ids = assigned[ys, xs]
        zs = d[ys, xs]
        area = np.bincount(ids, weights=(zs.astype(np.float64) ** 2) / (K.fx * K.fy), minlength=n_clusters + 1)
        count = np.bincount(ids, minlength=n_clusters + 1)
        big = np.iinfo(np.int64).max
        x0 = np.full(n_clusters + 1, big)
        y0 = np.full(n_clusters + 1, big)
        x1 = np.full(n_clusters + 1, -1)
        y1 = np.full(n_clusters + 1, -1)
        np.minimum.at(x0, ids, xs)
        np.minimum.at(y0, ids, ys)
        np.maximum.at(x1, ids, xs)
        np.maximum.at(y1, ids, ys)
        score = area / (area + cfg.score_area)
        order = [k for k in np.argsort(-score[1:], kind="stable") + 1 if count[k] > 0]
        pad = cfg.closing_px
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * pad + 1, 2 * pad + 1)) if pad else None
        final = assigned.copy()  # closing adds free pixels to clusters in score order
        out: list[InstanceResult] = []
        for k in order:
            bx0, by0 = max(int(x0[k]) - pad, 0), max(int(y0[k]) - pad, 0)
            bx1, by1 = min(int(x1[k]) + pad + 1, w), min(int(y1[k]) + pad + 1, h)
            region = final[by0:by1, bx0:bx1]
            m = region == k
            if kernel is not None:
                closed = cv2.morphologyEx(m.view(np.uint8), cv2.MORPH_CLOSE, kernel,
                                          borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)
                m = closed & ((region == 0) | m)
                region[m] = k
            n_px = int(np.count_nonzero(m))
            if n_px < cfg.min_pixels:
                region[m] = 0
                continue
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            ty0, ty1, tx0, tx1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            crop = np.ascontiguousarray(m[ty0:ty1, tx0:tx1])
            bbox = (bx0 + int(tx0), by0 + int(ty0), int(tx1 - tx0), int(ty1 - ty0))
            # points: the cluster's object pixels (valid depth, above the plane), not the pixels the closing added
            py, px = np.nonzero(assigned[by0:by1, bx0:bx1] == k)
            py, px = py + by0, px + bx0
            z = d[py, px]
            pts = np.stack([xr[0, px] * z, yr[py, 0] * z, z], axis=1).astype(np.float32)
            covered = np.isfinite(d[by0:by1, bx0:bx1][m]) & (d[by0:by1, bx0:bx1][m] >= cfg.depth_min) \
                & (d[by0:by1, bx0:bx1][m] <= cfg.depth_max)
            inst = InstanceResult(
                index=len(out) + 1, class_id=1, class_name="object", score=float(score[k]),
                bbox=bbox, mask=crop, amodal_bbox=bbox, amodal_mask=crop.copy(), occlusion=0.0, is_occluded=False,
                points=pts, colors=np.ascontiguousarray(color[py, px]), depth_coverage=float(covered.mean()),
            )
            attach_geometry(inst, cfg.min_points)
            out.append(inst)
        return out
