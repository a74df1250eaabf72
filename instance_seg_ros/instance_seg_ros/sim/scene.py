"""Simulated tabletop scenes with free amodal ground truth (PyBullet, DIRECT mode, TinyRenderer).

A :class:`Scene` owns one PyBullet physics client (DIRECT mode, never the GUI) holding an optional
support (a table, or a tray on a table) and objects: meshes from ``pybullet_data/random_urdfs`` and
primitives (boxes, cylinders, spheres) with random size, color (optionally texture) and pose,
dropped and settled by physics so they touch and occlude each other.
:meth:`Scene.render` renders a :class:`Camera` into a :class:`Frame`: color, metric depth, the
visible instance-id image and, per object, its visible and **amodal** masks (the object rendered
alone in the same pose), its occlusion, 6D pose and extent.

Conventions (the same as :mod:`instance_seg_ros.core.types`):

- Camera frames are OpenCV optical frames (x right, y down, z forward); ``world_to_camera`` maps
  world points into that frame. The world is z-up; the table top is at ``TABLE_TOP_Z``.
- The projection matrix is built from the intrinsics exactly (pixel centres at integer
  coordinates), so ``u = fx * x / z + cx`` and ``v = fy * y / z + cy`` hold for rendered pixels.
- Depth is the metric z along the optical axis (not the ray length), NaN where no surface was hit
  (or beyond the far plane).
- An object's *pose* is the pose of the centre of its own bounding box (the box of its mesh or
  primitive in its body frame) and its ``extent`` is that box's edge lengths, so pose + extent is
  the object's oriented 3D bounding box.
- The *ground-truth centroid* of an object (``ObjectGT.centroid``, ``InstanceResult.centroid`` in
  :meth:`Frame.to_frame_result`) is the mean of its visible surface points lifted from the
  noise-free depth: what a perfect segmentation + lifting pipeline would report.

Example::

    with Scene.random(seed=3) as scene:
        frame = scene.render(scene.random_camera(seed=0))
        gt = frame.to_frame_result()

Speed (one core, 640x480, TinyRenderer): a frame costs one full render plus one small render per
object for the amodal masks, each restricted to the window the object's bounding box projects to;
see ``Scene.render``. Per-camera projection matrices and pixel ray grids are cached, so a camera
node can call ``render`` in a loop.
"""

from __future__ import annotations

import functools
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pybullet as pb
import pybullet_data

from ..core.types import FrameResult, InstanceResult, Intrinsics

__all__ = [
    "PRIMITIVES",
    "STATUSES",
    "SUPPORTS",
    "TABLE_SIZE",
    "TABLE_TOP_Z",
    "TRAY_INNER",
    "Camera",
    "Frame",
    "ObjectGT",
    "ObjectSpec",
    "Scene",
    "SceneConfig",
    "SceneError",
    "SceneObject",
    "SensorNoise",
    "d435_intrinsics",
    "lift_mask",
    "mask_bbox",
    "num_random_urdfs",
    "quat_to_matrix",
    "matrix_to_quat",
]

PRIMITIVES = ("box", "cylinder", "sphere")
SUPPORTS = ("none", "table", "tray")
#: object status in a frame: ``ok`` objects are ground truth, the others are reported but excluded
STATUSES = ("ok", "small", "hidden", "outside")
TABLE_TOP_Z = 0.625  # world z of the table top (meters)
TABLE_SIZE = (1.2, 0.8)  # table top, meters (x, y)
TRAY_INNER = (0.46, 0.36)  # tray floor inside its walls, meters (x, y)
_TRAY_FLOOR_Z = TABLE_TOP_Z + 0.01
_DATA = Path(pybullet_data.getDataPath())
_NUM_URDFS = 1000  # pybullet_data ships random_urdfs/000 .. 999
# textures for primitives; off by default (SceneConfig.texture_probability): TinyRenderer's texture sampling is not
# bit-for-bit repeatable (a few pixels change by 1 between identical renders), everything else is
_TEXTURES = ("checker_blue.png", "tex256.png", "uvmap.png", "cube.png", "checker_grid.jpg")


class SceneError(ValueError):
    """A scene, object or camera description is invalid; the message says what to change."""


# ---------------------------------------------------------------------------------------- geometry helpers
def quat_to_matrix(q: Sequence[float]) -> np.ndarray:
    """Rotation matrix float64[3, 3] of a quaternion ``(x, y, z, w)`` (normalised first)."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """Quaternion float64[4] ``(x, y, z, w)`` with ``w >= 0`` of a rotation matrix ``[3, 3]``."""
    m = np.asarray(r, dtype=np.float64)
    t = np.trace(m)
    if t > 0:
        s = math.sqrt(t + 1.0) * 2
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def _pose_matrix(position: Sequence[float], quat: Sequence[float]) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = quat_to_matrix(quat)
    t[:3, 3] = position
    return t


def _random_quat(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of the True pixels of a bool ``[H, W]`` mask; ``(0, 0, 0, 0)`` when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    return (x0, y0, x1 - x0 + 1, y1 - y0 + 1)


def d435_intrinsics(width: int = 640, height: int = 480) -> Intrinsics:
    """Intrinsics like a RealSense D435 color stream (fx = fy = 615 at 640x480), scaled to ``width x height``,
    with the principal point at the image centre (``cx = (width - 1) / 2``)."""
    if width < 1 or height < 1:
        raise SceneError(f"Image size must be positive, got {width}x{height}.")
    return Intrinsics(615.0 * width / 640.0, 615.0 * height / 480.0, (width - 1) / 2.0, (height - 1) / 2.0,
                      int(width), int(height))


@functools.lru_cache(maxsize=8)
def _ray_grid(fx: float, fy: float, cx: float, cy: float, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ``(x/z, y/z)`` float32[H, W] for lifting depth."""
    xs = ((np.arange(w, dtype=np.float64) - cx) / fx).astype(np.float32)
    ys = ((np.arange(h, dtype=np.float64) - cy) / fy).astype(np.float32)
    gx, gy = np.meshgrid(xs, ys)
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


def lift_mask(
    depth: np.ndarray, mask: np.ndarray, k: Intrinsics, color: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Lift the pixels of ``mask`` that have finite depth to 3D (pinhole model, no filtering).

    Args:
        depth: float32[H, W] meters, NaN invalid.
        mask: bool[H, W].
        k: intrinsics of the image.
        color: optional uint8[H, W, 3].

    Returns:
        ``(points float32[N, 3], colors uint8[N, 3] | None, depth_coverage)`` in the camera optical frame;
        coverage is the share of mask pixels with valid depth (0 for an empty mask).
    """
    gx, gy = _ray_grid(k.fx, k.fy, k.cx, k.cy, k.width, k.height)
    sel = mask & np.isfinite(depth)
    z = depth[sel]
    pts = np.stack([gx[sel] * z, gy[sel] * z, z], axis=1).astype(np.float32, copy=False)
    n_mask = int(mask.sum())
    cols = color[sel] if color is not None else None
    return pts, cols, (float(sel.sum()) / n_mask if n_mask else 0.0)


# ---------------------------------------------------------------------------------------- random_urdfs
def num_random_urdfs() -> int:
    """How many ``random_urdfs/NNN/NNN.urdf`` pybullet_data ships (1000)."""
    return sum(1 for _ in (_DATA / "random_urdfs").glob("[0-9][0-9][0-9]"))


def _urdf_path(index: int) -> Path:
    p = _DATA / "random_urdfs" / f"{index:03d}" / f"{index:03d}.urdf"
    if not p.is_file():
        raise SceneError(f"random_urdfs index {index} does not exist; use 0..{num_random_urdfs() - 1}.")
    return p


def _rpy_matrix(rpy: Sequence[float]) -> np.ndarray:
    r, p, y = rpy
    rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
    ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
    rz = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
    return rz @ ry @ rx


@functools.lru_cache(maxsize=2048)
def _urdf_local_box(path: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(centre, size)`` of the visual meshes of a single-link URDF, in the link frame, at scale 1."""
    root = ET.parse(path).getroot()
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for vis in root.iter("visual"):
        mesh = vis.find("geometry/mesh")
        if mesh is None:
            continue
        scale = np.array([float(s) for s in mesh.get("scale", "1 1 1").split()])
        origin = vis.find("origin")
        xyz = np.array([float(s) for s in (origin.get("xyz", "0 0 0") if origin is not None else "0 0 0").split()])
        rpy = [float(s) for s in (origin.get("rpy", "0 0 0") if origin is not None else "0 0 0").split()]
        verts = []
        with open(Path(path).parent / mesh.get("filename"), encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("v "):
                    verts.append(line.split()[1:4])
        v = np.asarray(verts, dtype=np.float64).reshape(-1, 3) * scale
        v = v[np.isfinite(v).all(axis=1)]  # some shipped meshes are broken (random_urdfs/168: all NaN)
        if v.shape[0] == 0:
            continue
        v = v @ _rpy_matrix(rpy).T + xyz
        lo, hi = np.minimum(lo, v.min(axis=0)), np.maximum(hi, v.max(axis=0))
    if not np.all(np.isfinite(lo)):
        raise SceneError(f"{path} has no visual mesh to measure.")
    return tuple((lo + hi) / 2), tuple(hi - lo)


def _urdf_usable(index: int) -> bool:
    """False for the few pybullet_data meshes that cannot be measured (no finite vertices)."""
    try:
        _urdf_local_box(str(_DATA / "random_urdfs" / f"{index:03d}" / f"{index:03d}.urdf"))
    except SceneError:
        return False
    return True


# ---------------------------------------------------------------------------------------- descriptions
@dataclass(frozen=True)
class ObjectSpec:
    """One object to place in a scene.

    Attributes:
        shape: ``box``, ``cylinder``, ``sphere`` or ``urdf`` (a ``pybullet_data/random_urdfs`` mesh).
        size: box: edge lengths ``(x, y, z)``; cylinder: ``(radius, length)`` (axis along its z);
            sphere: ``(radius,)``; urdf: ignored (use ``scale``). Meters.
        position: centre of the object's bounding box, meters, world frame (or the camera frame when
            handed to :meth:`Scene.from_spec` with a camera).
        orientation: quaternion ``(x, y, z, w)`` of the object in the same frame.
        color: RGBA in 0..1; None = a neutral grey (urdf: the mesh's own color).
        urdf_index: which ``random_urdfs/NNN/NNN.urdf`` (shape ``urdf``), 0..999.
        scale: global scale of a urdf mesh.
        texture: a texture image file name in pybullet_data (e.g. ``checker_blue.png``) or a path; primitives only.
        name: category name; default ``box`` / ``cylinder`` / ``sphere`` / ``random_urdf_NNN``.
        mass: kg; 0 makes the object static. None = from a density of 400 kg/m^3 (urdf: its own mass).
    """

    shape: str
    size: tuple[float, ...] = (0.05, 0.05, 0.05)
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    color: tuple[float, float, float, float] | None = None
    urdf_index: int = 0
    scale: float = 1.0
    texture: str | None = None
    name: str | None = None
    mass: float | None = None

    def __post_init__(self) -> None:
        if self.shape not in (*PRIMITIVES, "urdf"):
            raise SceneError(f"ObjectSpec.shape must be one of box, cylinder, sphere, urdf; got {self.shape!r}.")
        need = {"box": 3, "cylinder": 2, "sphere": 1}.get(self.shape)
        if need is not None:
            if len(self.size) != need or not all(math.isfinite(s) and s > 0 for s in self.size):
                raise SceneError(
                    f"A {self.shape} needs size with {need} positive number(s) in meters, got {self.size!r}."
                )
        if len(self.position) != 3 or not all(math.isfinite(v) for v in self.position):
            raise SceneError(f"ObjectSpec.position must be 3 finite numbers, got {self.position!r}.")
        q = np.asarray(self.orientation, dtype=np.float64)
        if q.shape != (4,) or not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-9:
            raise SceneError(f"ObjectSpec.orientation must be a nonzero quaternion (x, y, z, w), got {q.tolist()}.")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise SceneError(f"ObjectSpec.scale must be positive, got {self.scale!r}.")
        if self.color is not None and len(self.color) != 4:
            raise SceneError(f"ObjectSpec.color must be RGBA (4 numbers in 0..1), got {self.color!r}.")
        if self.mass is not None and not (self.mass >= 0):
            raise SceneError(f"ObjectSpec.mass must be >= 0 (0 = static), got {self.mass!r}.")

    @property
    def category(self) -> str:
        if self.name:
            return self.name
        return f"random_urdf_{self.urdf_index:03d}" if self.shape == "urdf" else self.shape


@dataclass(frozen=True)
class SceneConfig:
    """How :meth:`Scene.random` draws a scene and :meth:`Scene.random_camera` a viewpoint."""

    min_objects: int = 3
    max_objects: int = 20
    primitive_fraction: float = 0.4
    urdf_scale: tuple[float, float] = (0.7, 1.3)
    box_size: tuple[float, float] = (0.03, 0.12)
    cylinder_radius: tuple[float, float] = (0.015, 0.045)
    cylinder_length: tuple[float, float] = (0.04, 0.15)
    sphere_radius: tuple[float, float] = (0.02, 0.05)
    texture_probability: float = 0.0
    supports: tuple[str, ...] = ("table", "tray")
    floor: bool = False
    spawn_spacing: float = 0.13
    settle_steps: int = 240
    camera_distance: tuple[float, float] = (0.5, 1.0)
    camera_elevation_deg: tuple[float, float] = (30.0, 80.0)
    camera_roll_deg: float = 5.0
    target_jitter: float = 0.03
    near: float = 0.05
    far: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise SceneError(
                f"Need 1 <= min_objects <= max_objects, got {self.min_objects} and {self.max_objects}."
            )
        if self.max_objects > 200:
            raise SceneError(f"max_objects {self.max_objects} is too many for a tabletop; use at most 200.")
        for name in ("urdf_scale", "box_size", "cylinder_radius", "cylinder_length", "sphere_radius",
                     "camera_distance", "camera_elevation_deg"):
            lo, hi = getattr(self, name)
            if not (0 < lo <= hi):
                raise SceneError(f"SceneConfig.{name} must be a range (low, high) with 0 < low <= high, got "
                                 f"{(lo, hi)}.")
        if not 0 <= self.primitive_fraction <= 1 or not 0 <= self.texture_probability <= 1:
            raise SceneError("primitive_fraction and texture_probability must be within [0, 1].")
        if self.camera_elevation_deg[1] > 90:
            raise SceneError("camera_elevation_deg must stay within (0, 90] degrees.")
        bad = [s for s in self.supports if s not in SUPPORTS]
        if not self.supports or bad:
            raise SceneError(f"supports must be a non-empty subset of {SUPPORTS}, got {self.supports!r}.")
        if self.settle_steps < 0:
            raise SceneError(f"settle_steps must be >= 0, got {self.settle_steps}.")
        if not 0 < self.near < self.far:
            raise SceneError(f"Need 0 < near < far, got near={self.near}, far={self.far}.")


@dataclass(frozen=True)
class SensorNoise:
    """A D435-like depth (and color) noise model, applied by :meth:`Scene.render` from a seed.

    Depth: Gaussian noise and quantisation in *disparity* (``d = fx * baseline / z``), so the error
    grows with z^2 (~2.6 mm RMS at 1 m with the defaults); invalid pixels at depth edges (relative
    jump to a 4-neighbour above ``edge_threshold``, dropped with probability ``edge_dropout``);
    random elliptical holes; invalid outside ``[min_depth, max_depth]``. Color: Gaussian noise.
    """

    baseline: float = 0.05
    disparity_std: float = 0.08
    subpixel: float = 1.0 / 16.0
    edge_threshold: float = 0.03
    edge_dropout: float = 0.5
    holes_per_megapixel: float = 15.0
    hole_radius: float = 0.015
    min_depth: float = 0.1
    max_depth: float = 4.0
    color_std: float = 2.0

    def __post_init__(self) -> None:
        for name in ("baseline", "subpixel", "hole_radius"):
            if not getattr(self, name) > 0:
                raise SceneError(f"SensorNoise.{name} must be positive, got {getattr(self, name)!r}.")
        for name in ("disparity_std", "edge_threshold", "holes_per_megapixel", "color_std"):
            if not getattr(self, name) >= 0:
                raise SceneError(f"SensorNoise.{name} must be >= 0, got {getattr(self, name)!r}.")
        if not 0 <= self.edge_dropout <= 1:
            raise SceneError(f"SensorNoise.edge_dropout must be within [0, 1], got {self.edge_dropout!r}.")
        if not 0 <= self.min_depth < self.max_depth:
            raise SceneError("SensorNoise needs 0 <= min_depth < max_depth.")

    def apply_depth(self, depth: np.ndarray, fx: float, rng: np.random.Generator) -> np.ndarray:
        """Noisy copy of ``depth`` (float32[H, W] meters, NaN invalid)."""
        import cv2

        z = depth.astype(np.float64)
        valid = np.isfinite(z) & (z > 0)
        fb = fx * self.baseline
        disp = np.where(valid, fb / np.where(valid, z, 1.0), 0.0)
        if self.disparity_std > 0:
            disp = disp + rng.normal(0.0, self.disparity_std, size=disp.shape)
        disp = np.round(disp / self.subpixel) * self.subpixel
        ok = valid & (disp > 0)
        out = np.full(z.shape, np.nan, dtype=np.float32)
        out[ok] = (fb / disp[ok]).astype(np.float32)
        # edges: a relative jump to a 4-neighbour, or a valid/invalid border
        zf = np.where(valid, z, np.inf)
        edge = np.zeros(z.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            for a, b in ((zf[:, 1:], zf[:, :-1]), (zf[1:, :], zf[:-1, :])):
                jump = np.abs(a - b) > self.edge_threshold * np.minimum(a, b)
                jump |= np.isinf(a) != np.isinf(b)
                if a.shape[1] != z.shape[1]:
                    edge[:, 1:] |= jump
                    edge[:, :-1] |= jump
                else:
                    edge[1:, :] |= jump
                    edge[:-1, :] |= jump
        if self.edge_dropout > 0:
            out[edge & (rng.random(z.shape) < self.edge_dropout)] = np.nan
        h, w = z.shape
        n_holes = rng.poisson(self.holes_per_megapixel * h * w / 1e6)
        if n_holes:
            holes = np.zeros((h, w), dtype=np.uint8)
            rmax = max(1.0, self.hole_radius * max(h, w))
            for _ in range(n_holes):
                c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
                axes = (int(rng.uniform(1, rmax)), int(rng.uniform(1, rmax)))
                cv2.ellipse(holes, c, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            out[holes.astype(bool)] = np.nan
        with np.errstate(invalid="ignore"):
            out[(out < self.min_depth) | (out > self.max_depth)] = np.nan
        return out

    def apply_color(self, color: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy copy of ``color`` (uint8[H, W, 3])."""
        if self.color_std <= 0:
            return color.copy()
        noisy = color.astype(np.float32) + rng.normal(0.0, self.color_std, size=color.shape).astype(np.float32)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------- camera
@dataclass(frozen=True, eq=False)
class Camera:
    """A pinhole camera at a pose, in the OpenCV optical convention.

    Attributes:
        intrinsics: the pinhole model (image size included).
        world_to_camera (np.ndarray[4, 4] float64): maps world points to camera-frame points.
        near, far: clipping planes, meters; nothing beyond ``far`` is rendered (its depth is NaN).
    """

    intrinsics: Intrinsics
    world_to_camera: np.ndarray
    near: float = 0.05
    far: float = 5.0

    def __post_init__(self) -> None:
        t = np.array(self.world_to_camera, dtype=np.float64)
        if t.shape != (4, 4) or not np.all(np.isfinite(t)):
            raise SceneError(f"world_to_camera must be a finite 4x4 matrix, got shape {t.shape}.")
        r = t[:3, :3]
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
            raise SceneError("world_to_camera must hold a proper rotation (orthonormal, det +1).")
        t.setflags(write=False)
        object.__setattr__(self, "world_to_camera", t)
        k = self.intrinsics
        if not (k.fx > 0 and k.fy > 0 and k.width > 0 and k.height > 0):
            raise SceneError(f"Camera intrinsics need positive fx, fy, width and height, got {k}.")
        if not 0 < self.near < self.far:
            raise SceneError(f"Need 0 < near < far, got near={self.near}, far={self.far}.")

    # ------------------------------------------------------------------ construction
    @classmethod
    def look_at(
        cls,
        eye: Sequence[float],
        target: Sequence[float],
        *,
        intrinsics: Intrinsics | None = None,
        up: Sequence[float] = (0.0, 0.0, 1.0),
        roll_deg: float = 0.0,
        near: float = 0.05,
        far: float = 5.0,
    ) -> Camera:
        """A camera at ``eye`` whose optical axis points at ``target``, image "up" towards ``up`` (rolled
        by ``roll_deg`` about the optical axis). Looking along ``up`` itself uses world +y as up."""
        eye_v, target_v = np.asarray(eye, dtype=np.float64), np.asarray(target, dtype=np.float64)
        z = target_v - eye_v
        if np.linalg.norm(z) < 1e-9:
            raise SceneError("Camera.look_at needs eye and target at different points.")
        z /= np.linalg.norm(z)
        up_v = np.asarray(up, dtype=np.float64)
        x = np.cross(z, up_v)
        if np.linalg.norm(x) < 1e-6:
            x = np.cross(z, np.array([0.0, 1.0, 0.0]))
            if np.linalg.norm(x) < 1e-6:
                x = np.cross(z, np.array([1.0, 0.0, 0.0]))
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        if roll_deg:
            a = math.radians(roll_deg)
            x, y = math.cos(a) * x + math.sin(a) * y, -math.sin(a) * x + math.cos(a) * y
        r_wc = np.stack([x, y, z], axis=1)  # columns: camera axes in world
        t = np.eye(4)
        t[:3, :3] = r_wc.T
        t[:3, 3] = -r_wc.T @ eye_v
        return cls(intrinsics or d435_intrinsics(), t, near, far)

    @classmethod
    def orbit(
        cls,
        target: Sequence[float],
        *,
        distance: float,
        elevation_deg: float,
        azimuth_deg: float,
        roll_deg: float = 0.0,
        intrinsics: Intrinsics | None = None,
        near: float = 0.05,
        far: float = 5.0,
    ) -> Camera:
        """A tabletop viewpoint: ``distance`` meters from ``target``, ``elevation_deg`` above the horizontal,
        at compass angle ``azimuth_deg`` around world z, looking at ``target``."""
        if not distance > 0:
            raise SceneError(f"Camera distance must be positive, got {distance!r}.")
        el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
        offset = distance * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        return cls.look_at(np.asarray(target, dtype=np.float64) + offset, target, intrinsics=intrinsics,
                           roll_deg=roll_deg, near=near, far=far)

    # ------------------------------------------------------------------ derived (cached)
    @cached_property
    def camera_to_world(self) -> np.ndarray:
        """float64[4, 4], the inverse of ``world_to_camera`` (the camera's pose in the world)."""
        r, t = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        out = np.eye(4)
        out[:3, :3] = r.T
        out[:3, 3] = -r.T @ t
        out.setflags(write=False)
        return out

    @property
    def position(self) -> np.ndarray:
        """Camera centre in the world, float64[3]."""
        return self.camera_to_world[:3, 3].copy()

    @cached_property
    def gl_view(self) -> list[float]:
        """The OpenGL view matrix (camera looks down -z, y up), column-major, as PyBullet wants it."""
        v = np.diag([1.0, -1.0, -1.0, 1.0]) @ self.world_to_camera
        return v.T.reshape(-1).tolist()

    def gl_projection(self, window: tuple[int, int, int, int] | None = None) -> list[float]:
        """OpenGL projection (column-major) reproducing the pinhole model exactly.

        ``window = (x0, y0, w, h)`` renders only the pixels ``[y0:y0+h, x0:x0+w]`` of the full image
        (which may extend beyond it): the same projection with the principal point shifted.
        """
        k = self.intrinsics
        x0, y0, w, h = window if window is not None else (0, 0, k.width, k.height)
        return _gl_projection(k.fx, k.fy, k.cx - x0, k.cy - y0, w, h, self.near, self.far)

    def depth_from_buffer(self, buf: np.ndarray) -> np.ndarray:
        """Metric z (float32) from an OpenGL depth buffer in [0, 1]; the far plane becomes NaN."""
        n, f = self.near, self.far
        d = np.asarray(buf, dtype=np.float64)
        z = f * n / (f - (f - n) * d)
        z[d >= 1.0 - 1e-7] = np.nan
        return z.astype(np.float32)

    def to_world(self, position: Sequence[float], quat: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """A camera-frame pose ``(position, quat xyzw)`` in the world frame."""
        t = self.camera_to_world @ _pose_matrix(position, quat)
        return t[:3, 3].copy(), matrix_to_quat(t[:3, :3])

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Pixel coordinates float64[N, 2] ``(u, v)`` of camera-frame points float[N, 3] (z > 0)."""
        p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
        k = self.intrinsics
        return np.stack([k.fx * p[:, 0] / p[:, 2] + k.cx, k.fy * p[:, 1] / p[:, 2] + k.cy], axis=1)

    def moved(self, translation: Sequence[float] = (0, 0, 0), rotation: np.ndarray | None = None) -> Camera:
        """The camera moved by ``translation`` (meters) and rotated by ``rotation`` (3x3), both expressed in its
        own optical frame (a small motion of a hand-held or arm-mounted camera)."""
        delta = np.eye(4)
        if rotation is not None:
            delta[:3, :3] = np.asarray(rotation, dtype=np.float64)
        delta[:3, 3] = translation
        cam_to_world = self.camera_to_world @ delta
        r, t = cam_to_world[:3, :3], cam_to_world[:3, 3]
        w2c = np.eye(4)
        w2c[:3, :3] = r.T
        w2c[:3, 3] = -r.T @ t
        return Camera(self.intrinsics, w2c, self.near, self.far)


@functools.lru_cache(maxsize=256)
def _gl_projection(fx: float, fy: float, cx: float, cy: float, w: int, h: int, n: float, f: float) -> list[float]:
    # TinyRenderer samples pixel i of the window at window coordinate x = i (rows bottom-up: row v of the returned
    # image, which has row 0 on top, is sampled at y = h - 1 - v). Mapping x = u and y = h - 1 - v puts those samples
    # exactly on the pixel centres of the pinhole model u = fx X / Z + cx, v = fy Y / Z + cy.
    p = np.zeros((4, 4))
    p[0, 0] = 2.0 * fx / w
    p[0, 2] = 1.0 - 2.0 * cx / w
    p[1, 1] = 2.0 * fy / h
    p[1, 2] = 2.0 * (cy + 1.0) / h - 1.0
    p[2, 2] = -(f + n) / (f - n)
    p[2, 3] = -2.0 * f * n / (f - n)
    p[3, 2] = -1.0
    return p.T.reshape(-1).tolist()


# ---------------------------------------------------------------------------------------- results
@dataclass
class ObjectGT:
    """Ground truth of one scene object in one frame.

    Attributes:
        id (int): the object's value in ``Frame.visible_ids`` (1..K, fixed for the scene's lifetime).
        name (str): category, e.g. ``box`` or ``random_urdf_123``.
        status (str): ``ok`` (ground truth), ``small`` (visible area below the minimum), ``hidden``
            (fully occluded) or ``outside`` (not in the image).
        visible_mask (np.ndarray[H, W] bool): pixels where the object is the nearest surface.
        amodal_mask (np.ndarray[H, W] bool | None): pixels the object covers when rendered alone
            (in-image part; ``None`` when rendered with ``amodal=False``). Contains ``visible_mask``.
        visible_area, amodal_area (int): pixel counts (amodal -1 when not rendered).
        occlusion (float): ``1 - visible_area / amodal_area`` (NaN when not rendered or amodal_area is 0).
        truncation (float): share of the full silhouette that falls outside the image (NaN when not rendered).
        bbox, amodal_bbox (tuple[int, int, int, int]): ``(x, y, w, h)`` of the masks (zeros when empty).
        position (np.ndarray[3] float64): centre of the object's bounding box, camera optical frame, meters.
        quat (np.ndarray[4] float64): its orientation ``(x, y, z, w)`` in the camera frame.
        extent (np.ndarray[3] float64): bounding-box edge lengths along the object's own axes, meters.
        centroid (np.ndarray[3] float64): mean of the visible surface points (noise-free depth); zeros if none.
    """

    id: int
    name: str
    status: str
    visible_mask: np.ndarray
    amodal_mask: np.ndarray | None
    visible_area: int
    amodal_area: int
    occlusion: float
    truncation: float
    bbox: tuple[int, int, int, int]
    amodal_bbox: tuple[int, int, int, int]
    position: np.ndarray
    quat: np.ndarray
    extent: np.ndarray
    centroid: np.ndarray

    @property
    def valid(self) -> bool:
        """True for ground-truth objects (status ``ok``)."""
        return self.status == "ok"


@dataclass
class Frame:
    """One rendered RGB-D frame and its ground truth.

    Attributes:
        color (np.ndarray[H, W, 3] uint8): RGB.
        depth (np.ndarray[H, W] float32): z in meters, NaN invalid; noisy when rendered with a noise model.
        depth_true (np.ndarray[H, W] float32): the noise-free depth (the same array when no noise).
        visible_ids (np.ndarray[H, W] int32): 0 = background / support, else the nearest object's ``id``
            (every object, including those flagged ``small``).
        intrinsics: the camera model.
        world_to_camera (np.ndarray[4, 4] float64): the camera pose (world -> camera optical frame).
        objects (list[ObjectGT]): every object of the scene, in id order, with its status.
        camera: the :class:`Camera` that rendered it.
    """

    color: np.ndarray
    depth: np.ndarray
    depth_true: np.ndarray
    visible_ids: np.ndarray
    intrinsics: Intrinsics
    world_to_camera: np.ndarray
    objects: list[ObjectGT]
    camera: Camera
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ground_truth(self) -> list[ObjectGT]:
        """The objects that count as ground truth (status ``ok``)."""
        return [o for o in self.objects if o.valid]

    def to_frame_result(self, *, occlusion_threshold: float = 0.1, with_colors: bool = True) -> FrameResult:
        """Ground truth as the pipeline's own result type (score 1, class_id 1, class_name = category).

        Per ground-truth object: visible / amodal mask crops, occlusion, its visible surface points lifted
        from the noise-free depth (``centroid`` = their mean), and as the 3D box the object's *true*
        oriented bounding box (pose + extent, not a fit to the points). ``track_id`` = the object id, so it
        is stable across frames of one scene. ``label_image`` holds the instance indices (1..N).
        """
        if any(o.amodal_mask is None for o in self.ground_truth):
            raise SceneError("to_frame_result needs amodal masks; render the frame with amodal=True.")
        h, w = self.depth.shape
        label = np.zeros((h, w), dtype=np.uint16)
        instances = []
        for i, o in enumerate(self.ground_truth, start=1):
            x, y, bw, bh = o.bbox
            ax, ay, aw, ah = o.amodal_bbox
            pts, cols, coverage = lift_mask(self.depth_true, o.visible_mask, self.intrinsics,
                                            self.color if with_colors else None)
            label[o.visible_mask] = i
            instances.append(InstanceResult(
                index=i, class_id=1, class_name=o.name, score=1.0,
                bbox=o.bbox, mask=o.visible_mask[y:y + bh, x:x + bw].copy(),
                amodal_bbox=o.amodal_bbox, amodal_mask=o.amodal_mask[ay:ay + ah, ax:ax + aw].copy(),
                occlusion=float(o.occlusion), is_occluded=bool(o.occlusion > occlusion_threshold),
                points=pts, colors=cols, depth_coverage=coverage,
                centroid=o.centroid.copy(), box_center=o.position.copy(), box_quat=o.quat.copy(),
                box_size=o.extent.copy(), track_id=o.id,
            ))
        return FrameResult(width=w, height=h, instances=instances, label_image=label, timings=dict(self.timings))


@dataclass
class SceneObject:
    """An object living in a :class:`Scene` (what stays the same across frames)."""

    id: int
    body: int
    name: str
    shape: str
    extent: np.ndarray  # float64[3]
    center_in_com: np.ndarray  # float64[4, 4]: bounding-box centre in the body's centre-of-mass frame
    rgba: tuple[float, float, float, float]


# ---------------------------------------------------------------------------------------- scene
class Scene:
    """A PyBullet world (own DIRECT client) with a support and objects, rendered by :meth:`render`.

    Build with :meth:`random` (a random settled pile) or :meth:`from_spec` (explicit objects and poses),
    or start empty and call :meth:`add_object`. Always :meth:`close` it (or use ``with``).

    Args:
        support: ``none`` (objects float in empty space), ``table`` (a table top, ``TABLE_SIZE``, top at
            ``TABLE_TOP_Z``) or ``tray`` (a walled tray on that table); plain random colors. Where no surface is hit
            the depth is NaN.
        seed: seeds the scene's random choices (lighting, noise).
        config: ranges for :meth:`random_camera` (and :meth:`random`).
        min_visible_pixels: objects with fewer visible pixels are flagged ``small`` and are not ground truth.
        floor: add a floor under the table (costs render time; the view beyond the table is NaN without it).
    """

    def __init__(
        self,
        *,
        support: str = "none",
        seed: int = 0,
        config: SceneConfig | None = None,
        min_visible_pixels: int = 20,
        floor: bool = False,
    ) -> None:
        if support not in SUPPORTS:
            raise SceneError(f"support must be one of {', '.join(SUPPORTS)}, got {support!r}.")
        if min_visible_pixels < 1:
            raise SceneError(f"min_visible_pixels must be >= 1, got {min_visible_pixels}.")
        self.config = config or SceneConfig()
        self.seed = int(seed)
        self.support = support
        self.min_visible_pixels = int(min_visible_pixels)
        self.objects: list[SceneObject] = []
        self._renders = 0
        #: visible pixels that the per-object amodal render missed (rasterisation round-off), over all renders
        self.amodal_fixup_pixels = 0
        self._textures: dict[str, int] = {}
        self._client = pb.connect(pb.DIRECT)
        if self._client < 0:
            raise RuntimeError("Could not start a PyBullet DIRECT client.")
        cid = self._client
        pb.setAdditionalSearchPath(str(_DATA), physicsClientId=cid)
        pb.setPhysicsEngineParameter(deterministicOverlappingPairs=1, physicsClientId=cid)
        pb.setGravity(0, 0, -9.81, physicsClientId=cid)
        pb.setTimeStep(1.0 / 240.0, physicsClientId=cid)
        rng = np.random.default_rng([self.seed, 7])
        light_az, light_el = rng.uniform(0, 2 * math.pi), rng.uniform(math.radians(40), math.radians(80))
        self.light = {
            "lightDirection": [math.cos(light_el) * math.cos(light_az), math.cos(light_el) * math.sin(light_az),
                               math.sin(light_el)],
            "lightColor": list(rng.uniform(0.9, 1.0, size=3)),
            "lightDistance": 2.0,
            "lightAmbientCoeff": float(rng.uniform(0.5, 0.7)),
            "lightDiffuseCoeff": float(rng.uniform(0.4, 0.6)),
            "lightSpecularCoeff": float(rng.uniform(0.05, 0.25)),
            "shadow": 0,
        }
        self._support_bodies: list[tuple[int, tuple[float, float, float, float]]] = []
        if support in ("table", "tray"):
            self._build_support(support, floor, rng)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Disconnect the PyBullet client (idempotent)."""
        if getattr(self, "_client", -1) >= 0:
            try:
                pb.disconnect(physicsClientId=self._client)
            except pb.error:
                pass
            self._client = -1

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: pybullet may already be gone
            pass

    @property
    def client(self) -> int:
        if self._client < 0:
            raise SceneError("This scene is closed; build a new one.")
        return self._client

    # ------------------------------------------------------------------ building
    def _static_boxes(self, boxes: list[tuple[Sequence[float], Sequence[float]]], rgba: Sequence[float]) -> int:
        """One static body of several boxes ``(half_extents, centre)``, all of one color."""
        cid = self._client
        halves, centres = [list(b[0]) for b in boxes], [list(b[1]) for b in boxes]
        col = pb.createCollisionShapeArray([pb.GEOM_BOX] * len(boxes), halfExtents=halves,
                                           collisionFramePositions=centres, physicsClientId=cid)
        vis = pb.createVisualShapeArray([pb.GEOM_BOX] * len(boxes), halfExtents=halves, visualFramePositions=centres,
                                        physicsClientId=cid)
        body = pb.createMultiBody(0, col, vis, physicsClientId=cid)
        pb.changeVisualShape(body, -1, rgbaColor=list(rgba), physicsClientId=cid)
        pb.changeDynamics(body, -1, lateralFriction=0.8, physicsClientId=cid)
        self._support_bodies.append((body, tuple(float(c) for c in rgba)))
        return body

    def _build_support(self, kind: str, floor: bool, rng: np.random.Generator) -> None:
        # Plain colored boxes: PyBullet's textured table / tray / plane meshes render ~3x slower in TinyRenderer and
        # its texture sampling changes the color of a few pixels by 1 from one render to the next.
        tone = rng.uniform(0.35, 0.85)
        table_rgba = (*(tone * np.array(rng.choice([(1.0, 0.8, 0.6), (1.0, 1.0, 1.0), (0.9, 0.9, 1.0)]))), 1.0)
        hx, hy = TABLE_SIZE[0] / 2, TABLE_SIZE[1] / 2
        self._static_boxes([((hx, hy, 0.02), (0, 0, TABLE_TOP_Z - 0.02))], table_rgba)
        if floor:
            self._static_boxes([((3.0, 3.0, 0.01), (0, 0, -0.01))], (*rng.uniform(0.2, 0.5, size=3), 1.0))
        if kind == "tray":
            ix, iy, t, wall = TRAY_INNER[0] / 2, TRAY_INNER[1] / 2, 0.005, 0.06
            z = TABLE_TOP_Z
            boxes = [
                ((ix + 2 * t, iy + 2 * t, t), (0, 0, z + t)),
                ((t, iy + 2 * t, wall / 2), (ix + t, 0, z + wall / 2)),
                ((t, iy + 2 * t, wall / 2), (-ix - t, 0, z + wall / 2)),
                ((ix, t, wall / 2), (0, iy + t, z + wall / 2)),
                ((ix, t, wall / 2), (0, -iy - t, z + wall / 2)),
            ]
            self._static_boxes(boxes, (*rng.uniform(0.1, 0.6, size=3), 1.0))

    @property
    def support_top_z(self) -> float:
        """Height of the surface objects rest on (world z, meters); 0 without support."""
        return {"none": 0.0, "table": TABLE_TOP_Z, "tray": _TRAY_FLOOR_Z}[self.support]

    def _texture(self, name: str) -> int:
        if name not in self._textures:
            path = Path(name) if os.path.isabs(name) else _DATA / name
            if not path.is_file():
                raise SceneError(f"Texture {name!r} not found (looked at {path}).")
            self._textures[name] = pb.loadTexture(str(path), physicsClientId=self.client)
        return self._textures[name]

    def add_object(self, spec: ObjectSpec) -> SceneObject:
        """Create the object of ``spec`` (world-frame pose) and return its handle; ids count 1, 2, ..."""
        cid = self.client
        pos_w = np.asarray(spec.position, dtype=np.float64)
        quat_w = np.asarray(spec.orientation, dtype=np.float64) / np.linalg.norm(spec.orientation)
        if spec.shape == "urdf":
            path = _urdf_path(spec.urdf_index)
            centre, size = _urdf_local_box(str(path))
            centre_l = np.asarray(centre) * spec.scale  # bounding-box centre in the link frame
            extent = np.asarray(size) * spec.scale
            # place the link so that the bounding-box centre lands on spec.position
            link_pos = pos_w - quat_to_matrix(quat_w) @ centre_l
            body = pb.loadURDF(str(path), basePosition=link_pos.tolist(), baseOrientation=quat_w.tolist(),
                               globalScaling=float(spec.scale), useFixedBase=spec.mass == 0, physicsClientId=cid)
            if spec.mass is not None and spec.mass > 0:
                pb.changeDynamics(body, -1, mass=float(spec.mass), physicsClientId=cid)
            info = pb.getDynamicsInfo(body, -1, physicsClientId=cid)
            link_com = _pose_matrix(info[3], info[4])  # centre of mass in the link frame
            link_centre = _pose_matrix(centre_l, (0, 0, 0, 1))
            center_in_com = np.linalg.inv(link_com) @ link_centre
            if spec.color is not None:
                pb.changeVisualShape(body, -1, rgbaColor=list(spec.color), physicsClientId=cid)
        else:
            if spec.shape == "box":
                half = [s / 2 for s in spec.size]
                col = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=half, physicsClientId=cid)
                vis = pb.createVisualShape(pb.GEOM_BOX, halfExtents=half, physicsClientId=cid)
                extent = np.asarray(spec.size, dtype=np.float64)
            elif spec.shape == "cylinder":
                r, length = spec.size
                col = pb.createCollisionShape(pb.GEOM_CYLINDER, radius=r, height=length, physicsClientId=cid)
                vis = pb.createVisualShape(pb.GEOM_CYLINDER, radius=r, length=length, physicsClientId=cid)
                extent = np.array([2 * r, 2 * r, length])
            else:
                (r,) = spec.size
                col = pb.createCollisionShape(pb.GEOM_SPHERE, radius=r, physicsClientId=cid)
                vis = pb.createVisualShape(pb.GEOM_SPHERE, radius=r, physicsClientId=cid)
                extent = np.full(3, 2 * r)
            volume = float(np.prod(extent)) * {"box": 1.0, "cylinder": math.pi / 4, "sphere": math.pi / 6}[spec.shape]
            mass = spec.mass if spec.mass is not None else max(0.02, 400.0 * volume)
            body = pb.createMultiBody(float(mass), col, vis, basePosition=pos_w.tolist(),
                                      baseOrientation=quat_w.tolist(), physicsClientId=cid)
            pb.changeDynamics(body, -1, lateralFriction=0.8, physicsClientId=cid)
            center_in_com = np.eye(4)
            color = spec.color if spec.color is not None else (0.6, 0.6, 0.6, 1.0)
            pb.changeVisualShape(body, -1, rgbaColor=list(color), physicsClientId=cid)
            if spec.texture:
                pb.changeVisualShape(body, -1, textureUniqueId=self._texture(spec.texture), physicsClientId=cid)
        rgba = tuple(float(c) for c in pb.getVisualShapeData(body, physicsClientId=cid)[0][7])
        obj = SceneObject(id=len(self.objects) + 1, body=body, name=spec.category, shape=spec.shape,
                          extent=extent.astype(np.float64), center_in_com=center_in_com, rgba=rgba)
        self.objects.append(obj)
        self._lut = None
        return obj

    @classmethod
    def from_spec(
        cls,
        objects: Sequence[ObjectSpec],
        *,
        camera: Camera | None = None,
        support: str = "none",
        settle_steps: int = 0,
        seed: int = 0,
        min_visible_pixels: int = 20,
    ) -> Scene:
        """A scene of exactly these objects. With ``camera``, their poses are in that camera's optical frame
        (e.g. ``ObjectSpec("box", position=(0, 0, 0.6))`` = a box 0.6 m in front of the camera); otherwise in
        the world frame. ``settle_steps > 0`` lets gravity act for that many 1/240 s steps."""
        scene = cls(support=support, seed=seed, min_visible_pixels=min_visible_pixels)
        try:
            for spec in objects:
                if camera is not None:
                    pos, quat = camera.to_world(spec.position, spec.orientation)
                    spec = _replace(spec, position=tuple(pos), orientation=tuple(quat))
                scene.add_object(spec)
            if settle_steps:
                scene.settle(settle_steps)
        except Exception:
            scene.close()
            raise
        return scene

    @classmethod
    def random(cls, seed: int, config: SceneConfig | None = None, *, min_visible_pixels: int = 20) -> Scene:
        """A random tabletop pile, deterministic in ``seed``: ``min_objects..max_objects`` objects (random_urdfs
        meshes and primitives with random scale, color, texture and orientation) dropped onto the table or
        into the tray from a compact 3D grid and settled by at most ``settle_steps`` physics steps. Objects that
        fall off the support are removed (so a scene may hold fewer than ``min_objects``). With support ``none``
        the objects stay where they were spawned (a floating grid, no physics)."""
        cfg = config or SceneConfig()
        rng = np.random.default_rng([int(seed), 1])
        scene = cls(support=str(rng.choice(list(cfg.supports))), seed=seed, config=cfg,
                    min_visible_pixels=min_visible_pixels, floor=cfg.floor)
        try:
            n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
            specs = [_random_spec(rng, cfg) for _ in range(n)]
            # spawn on a grid of cells (3x3 per layer), jittered, layer by layer
            cols = 3
            spacing = cfg.spawn_spacing
            cells = rng.permutation(max(n, cols * cols * math.ceil(n / (cols * cols))))[:n]
            z0 = scene.support_top_z + 0.02
            for spec, cell in zip(specs, cells, strict=True):
                layer, rem = divmod(int(cell), cols * cols)
                gx, gy = rem % cols - (cols - 1) / 2, rem // cols - (cols - 1) / 2
                xy = np.array([gx, gy]) * spacing + rng.uniform(-0.02, 0.02, size=2)
                z = z0 + spacing * (layer + 0.5)
                scene.add_object(_replace(spec, position=(float(xy[0]), float(xy[1]), float(z))))
            if scene.support != "none":  # without a support there is nothing to settle on: objects float
                scene.settle(cfg.settle_steps)
                scene._remove_fallen()
        except Exception:
            scene.close()
            raise
        return scene

    def settle(self, max_steps: int, *, min_steps: int = 60, speed_tol: float = 0.02) -> int:
        """Step physics until every object is (nearly) at rest or ``max_steps`` have run; returns the steps run.
        Velocities are zeroed at the end so the pile stays put."""
        cid = self.client
        steps = 0
        while steps < max_steps:
            pb.stepSimulation(physicsClientId=cid)
            steps += 1
            if steps >= min_steps and steps % 20 == 0 and self._at_rest(speed_tol):
                break
        for o in self.objects:
            pb.resetBaseVelocity(o.body, [0, 0, 0], [0, 0, 0], physicsClientId=cid)
        return steps

    def _at_rest(self, tol: float) -> bool:
        for o in self.objects:
            lin, ang = pb.getBaseVelocity(o.body, physicsClientId=self.client)
            if np.linalg.norm(lin) > tol or np.linalg.norm(ang) > 10 * tol:
                return False
        return True

    def _remove_fallen(self) -> None:
        keep = []
        half = np.array(TABLE_SIZE) / 2
        for o in self.objects:
            pos = self.object_pose_world(o)[:3, 3]
            if pos[2] < self.support_top_z - 0.02 or np.any(np.abs(pos[:2]) > half):
                pb.removeBody(o.body, physicsClientId=self.client)
            else:
                keep.append(o)
        for i, o in enumerate(keep, start=1):
            o.id = i
        self.objects = keep
        self._lut = None

    # ------------------------------------------------------------------ poses
    def object_pose_world(self, obj: SceneObject) -> np.ndarray:
        """float64[4, 4] pose of the object's bounding-box centre in the world."""
        pos, orn = pb.getBasePositionAndOrientation(obj.body, physicsClientId=self.client)
        return _pose_matrix(pos, orn) @ obj.center_in_com

    def set_object_pose(self, obj: SceneObject, position: Sequence[float], quat: Sequence[float]) -> None:
        """Teleport an object (its bounding-box centre) to a world pose."""
        target = _pose_matrix(position, quat) @ np.linalg.inv(obj.center_in_com)
        pb.resetBasePositionAndOrientation(obj.body, target[:3, 3].tolist(), matrix_to_quat(target[:3, :3]).tolist(),
                                           physicsClientId=self.client)

    def objects_center(self) -> np.ndarray:
        """Mean world position of the objects (the table centre above the support when there are none)."""
        if not self.objects:
            return np.array([0.0, 0.0, self.support_top_z])
        return np.mean([self.object_pose_world(o)[:3, 3] for o in self.objects], axis=0)

    def random_camera(
        self,
        rng: np.random.Generator | None = None,
        *,
        seed: int | None = None,
        intrinsics: Intrinsics | None = None,
    ) -> Camera:
        """A random tabletop viewpoint from ``self.config``: distance, elevation, any azimuth, a small roll,
        looking at the objects' centre (jittered). Pass a Generator or a ``seed``."""
        if rng is None:
            rng = np.random.default_rng([self.seed, 2, 0 if seed is None else int(seed)])
        cfg = self.config
        target = self.objects_center() + rng.normal(0.0, cfg.target_jitter, size=3) * np.array([1, 1, 0.3])
        return Camera.orbit(
            target,
            distance=float(rng.uniform(*cfg.camera_distance)),
            elevation_deg=float(rng.uniform(*cfg.camera_elevation_deg)),
            azimuth_deg=float(rng.uniform(0, 360)),
            roll_deg=float(rng.uniform(-cfg.camera_roll_deg, cfg.camera_roll_deg)),
            intrinsics=intrinsics or d435_intrinsics(),
            near=cfg.near,
            far=cfg.far,
        )

    # ------------------------------------------------------------------ rendering
    def _body_lut(self) -> np.ndarray:
        if getattr(self, "_lut", None) is None:
            bodies = [o.body for o in self.objects] + [b for b, _ in self._support_bodies]
            lut = np.zeros(max(bodies, default=0) + 2, dtype=np.int32)  # index = body + 1 (seg -1 = nothing)
            for o in self.objects:
                lut[o.body + 1] = o.id
            self._lut = lut
        return self._lut

    def _get_image(self, camera: Camera, window: tuple[int, int, int, int] | None, *, seg_only: bool):
        k = camera.intrinsics
        w, h = (window[2], window[3]) if window is not None else (k.width, k.height)
        kwargs = {} if seg_only else self.light
        _, _, rgba, depth, seg = pb.getCameraImage(
            w, h, viewMatrix=camera.gl_view, projectionMatrix=camera.gl_projection(window),
            renderer=pb.ER_TINY_RENDERER, physicsClientId=self.client, **kwargs,
        )
        return (np.asarray(rgba, dtype=np.uint8).reshape(h, w, 4), np.asarray(depth, dtype=np.float32).reshape(h, w),
                np.asarray(seg, dtype=np.int32).reshape(h, w))

    def _set_visible(self, body: int, rgba: Sequence[float], visible: bool) -> None:
        # TinyRenderer skips shapes with alpha 0 (color, depth and segmentation): no pose changes needed.
        color = list(rgba[:3]) + [rgba[3] if visible else 0.0]
        pb.changeVisualShape(body, -1, rgbaColor=color, physicsClientId=self.client)

    def _window(self, camera: Camera, obj: SceneObject) -> tuple[int, int, int, int] | None:
        """Pixel window ``(x0, y0, w, h)`` the object's bounding box projects to (may extend past the image, up
        to one image size on each side), or None when it is entirely behind the camera or off-screen."""
        k = camera.intrinsics
        t = camera.world_to_camera @ self.object_pose_world(obj)
        half = obj.extent / 2 * 1.02 + 0.002
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
        pc = corners @ t[:3, :3].T + t[:3, 3]
        if np.all(pc[:, 2] <= camera.near):
            return None
        if np.any(pc[:, 2] <= camera.near):
            u0, v0, u1, v1 = -k.width, -k.height, 2 * k.width, 2 * k.height
        else:
            uv = camera.project(pc)
            u0, v0 = np.floor(uv.min(axis=0)).astype(int) - 2
            u1, v1 = np.ceil(uv.max(axis=0)).astype(int) + 3
        u0, v0 = max(int(u0), -k.width), max(int(v0), -k.height)
        u1, v1 = min(int(u1), 2 * k.width), min(int(v1), 2 * k.height)
        if u1 <= max(u0, 0) or v1 <= max(v0, 0) or u0 >= k.width or v0 >= k.height:
            return None
        return (u0, v0, u1 - u0, v1 - v0)

    def render(
        self,
        camera: Camera,
        *,
        amodal: bool = True,
        noise: SensorNoise | None = None,
        seed: int | None = None,
    ) -> Frame:
        """Render one frame with its ground truth.

        Args:
            camera: where to look from (its intrinsics set the image size).
            amodal: also render each object alone for its amodal mask (one extra render per object,
                restricted to the object's projected window). False is faster (a camera node that only needs
                images): ``amodal_mask`` is None and occlusion NaN.
            noise: a sensor noise model for ``depth`` (and ``color``); ``depth_true`` stays noise-free.
            seed: seeds the noise; default: derived from the scene seed and a per-scene render counter.

        Returns:
            The :class:`Frame`; identical for identical scene, camera and seed.
        """
        import time

        t0 = time.perf_counter()
        k = camera.intrinsics
        rgba, zbuf, seg = self._get_image(camera, None, seg_only=False)
        color = np.ascontiguousarray(rgba[..., :3])
        depth = camera.depth_from_buffer(zbuf)
        depth[seg < 0] = np.nan
        lut = self._body_lut()
        visible_ids = lut[np.clip(seg, -1, lut.size - 2) + 1]
        t1 = time.perf_counter()

        w2c = camera.world_to_camera
        amodal_masks: dict[int, np.ndarray] = {}
        truncations: dict[int, float] = {}
        windows = {o.id: self._window(camera, o) for o in self.objects}
        if amodal and self.objects:
            for b, rgba_s in self._support_bodies:
                self._set_visible(b, rgba_s, False)
            for o in self.objects:
                self._set_visible(o.body, o.rgba, False)
            try:
                for o in self.objects:
                    win = windows[o.id]
                    full = np.zeros((k.height, k.width), dtype=bool)
                    truncations[o.id] = float("nan")
                    if win is not None:
                        self._set_visible(o.body, o.rgba, True)
                        _, _, wseg = self._get_image(camera, win, seg_only=True)
                        self._set_visible(o.body, o.rgba, False)
                        m = wseg == o.body
                        x0, y0, ww, wh = win
                        ix0, iy0 = max(x0, 0), max(y0, 0)
                        ix1, iy1 = min(x0 + ww, k.width), min(y0 + wh, k.height)
                        full[iy0:iy1, ix0:ix1] = m[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
                        total = int(m.sum())
                        truncations[o.id] = 1.0 - float(full.sum()) / total if total else float("nan")
                    amodal_masks[o.id] = full
            finally:
                for o in self.objects:
                    self._set_visible(o.body, o.rgba, True)
                for b, rgba_s in self._support_bodies:
                    self._set_visible(b, rgba_s, True)
        t2 = time.perf_counter()

        gx, gy = _ray_grid(k.fx, k.fy, k.cx, k.cy, k.width, k.height)
        areas = np.bincount(visible_ids.reshape(-1), minlength=len(self.objects) + 1)
        objects = []
        for o in self.objects:
            vis = visible_ids == o.id
            v_area = int(areas[o.id])
            am = amodal_masks.get(o.id)
            if am is not None:
                # rasterising a window and the full image can disagree on a few boundary pixels (float
                # round-off); the amodal mask must contain the visible one, so take the union
                self.amodal_fixup_pixels += int((vis & ~am).sum())
                am |= vis
                a_area = int(am.sum())
                occ = 1.0 - v_area / a_area if a_area else float("nan")
            else:
                a_area, occ = -1, float("nan")
            if (am is not None and a_area == 0) or (am is None and v_area == 0 and windows[o.id] is None):
                status = "outside"
            elif v_area == 0:
                status = "hidden"
            elif v_area < self.min_visible_pixels:
                status = "small"
            else:
                status = "ok"
            t = w2c @ self.object_pose_world(o)
            sel = vis & np.isfinite(depth)
            if sel.any():
                z = depth[sel].astype(np.float64)
                centroid = np.array([(gx[sel] * z).mean(), (gy[sel] * z).mean(), z.mean()])
            else:
                centroid = np.zeros(3)
            objects.append(ObjectGT(
                id=o.id, name=o.name, status=status, visible_mask=vis, amodal_mask=am,
                visible_area=v_area, amodal_area=a_area, occlusion=max(0.0, occ) if math.isfinite(occ) else occ,
                truncation=truncations.get(o.id, float("nan")), bbox=mask_bbox(vis),
                amodal_bbox=mask_bbox(am) if am is not None else (0, 0, 0, 0),
                position=t[:3, 3].copy(), quat=matrix_to_quat(t[:3, :3]), extent=o.extent.copy(), centroid=centroid,
            ))

        depth_true = depth
        if noise is not None:
            rng = np.random.default_rng([self.seed, 3, self._renders if seed is None else int(seed)])
            depth = noise.apply_depth(depth_true, k.fx, rng)
            color = noise.apply_color(color, rng)
        self._renders += 1
        t3 = time.perf_counter()
        timings = {"render": (t1 - t0) * 1e3, "amodal": (t2 - t1) * 1e3, "ground_truth": (t3 - t2) * 1e3}
        timings["total"] = sum(timings.values())
        return Frame(color=color, depth=depth, depth_true=depth_true, visible_ids=visible_ids, intrinsics=k,
                     world_to_camera=np.array(w2c), objects=objects, camera=camera, timings=timings)


def _replace(spec: ObjectSpec, **changes: Any) -> ObjectSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)


def _random_spec(rng: np.random.Generator, cfg: SceneConfig) -> ObjectSpec:
    quat = tuple(_random_quat(rng))
    color = (*rng.uniform(0.05, 0.95, size=3), 1.0)
    if rng.random() < cfg.primitive_fraction:
        shape = str(rng.choice(PRIMITIVES))
        if shape == "box":
            size = tuple(rng.uniform(*cfg.box_size, size=3))
        elif shape == "cylinder":
            size = (float(rng.uniform(*cfg.cylinder_radius)), float(rng.uniform(*cfg.cylinder_length)))
        else:
            size = (float(rng.uniform(*cfg.sphere_radius)),)
        texture = str(rng.choice(_TEXTURES)) if rng.random() < cfg.texture_probability else None
        return ObjectSpec(shape, size=tuple(float(s) for s in size), orientation=quat,
                          color=tuple(float(c) for c in color), texture=texture)
    index = int(rng.integers(0, _NUM_URDFS))
    while not _urdf_usable(index):
        index = int(rng.integers(0, _NUM_URDFS))
    return ObjectSpec("urdf", urdf_index=index, scale=float(rng.uniform(*cfg.urdf_scale)), orientation=quat,
                      color=tuple(float(c) for c in color))

