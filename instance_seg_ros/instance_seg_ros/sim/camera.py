"""A pinhole camera for the simulator: D435-like intrinsics, poses, OpenGL matrices that reproduce the pinhole model.

Conventions (the same as :mod:`instance_seg_ros.core.types`):

- Camera frames are OpenCV optical frames (x right, y down, z forward); ``world_to_camera`` maps
  world points into that frame. The world is z-up.
- The projection matrix is built from the intrinsics exactly (pixel centres at integer
  coordinates), so ``u = fx * x / z + cx`` and ``v = fy * y / z + cy`` hold for rendered pixels.
- Depth is the metric z along the optical axis (not the ray length), NaN where no surface was hit
  (or beyond the far plane).

Per-camera projection matrices and pixel ray grids are cached, so a camera node can render in a loop.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..core.geometry import matrix_to_quaternion, pose_matrix
from ..core.types import Intrinsics
from .errors import SceneError

__all__ = ["Camera", "d435_intrinsics", "ray_grid"]


def d435_intrinsics(width: int = 640, height: int = 480) -> Intrinsics:
    """Intrinsics like a RealSense D435 color stream (fx = fy = 615 at 640x480), scaled to ``width x height``,
    with the principal point at the image centre (``cx = (width - 1) / 2``)."""
    if width < 1 or height < 1:
        raise SceneError(f"Image size must be positive, got {width}x{height}.")
    return Intrinsics(615.0 * width / 640.0, 615.0 * height / 480.0, (width - 1) / 2.0, (height - 1) / 2.0,
                      int(width), int(height))


@functools.lru_cache(maxsize=8)
def ray_grid(fx: float, fy: float, cx: float, cy: float, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ``(x/z, y/z)`` float32[H, W] for lifting depth."""
    xs = ((np.arange(w, dtype=np.float64) - cx) / fx).astype(np.float32)
    ys = ((np.arange(h, dtype=np.float64) - cy) / fy).astype(np.float32)
    gx, gy = np.meshgrid(xs, ys)
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


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
        t = self.camera_to_world @ pose_matrix(position, quat)
        return t[:3, 3].copy(), matrix_to_quaternion(t[:3, :3])

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Pixel coordinates float64[N, 2] ``(u, v)`` of camera-frame points float[N, 3] (z > 0)."""
        p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
        k = self.intrinsics
        return np.stack([k.fx * p[:, 0] / p[:, 2] + k.cx, k.fy * p[:, 1] / p[:, 2] + k.cy], axis=1)

    def box_window(self, pose_world: np.ndarray, extent: np.ndarray) -> tuple[int, int, int, int] | None:
        """Pixel window ``(x0, y0, w, h)`` a box (centre pose float64[4, 4] in the world, edge lengths [3]) projects
        to, with a small margin (may extend past the image, up to one image size on each side), or None when it is
        entirely behind the camera or off-screen."""
        k = self.intrinsics
        t = self.world_to_camera @ pose_world
        half = extent / 2 * 1.02 + 0.002
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
        pc = corners @ t[:3, :3].T + t[:3, 3]
        if np.all(pc[:, 2] <= self.near):
            return None
        if np.any(pc[:, 2] <= self.near):
            u0, v0, u1, v1 = -k.width, -k.height, 2 * k.width, 2 * k.height
        else:
            uv = self.project(pc)
            u0, v0 = np.floor(uv.min(axis=0)).astype(int) - 2
            u1, v1 = np.ceil(uv.max(axis=0)).astype(int) + 3
        u0, v0 = max(int(u0), -k.width), max(int(v0), -k.height)
        u1, v1 = min(int(u1), 2 * k.width), min(int(v1), 2 * k.height)
        if u1 <= max(u0, 0) or v1 <= max(v0, 0) or u0 >= k.width or v0 >= k.height:
            return None
        return (u0, v0, u1 - u0, v1 - v0)

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
