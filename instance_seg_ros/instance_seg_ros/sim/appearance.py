"""Appearance randomisation of a rendered frame: textured objects and surfaces, flat clutter, lighting, glare,
shadows and camera effects, drawn from a seed.

PyBullet's TinyRenderer draws flat-colored objects. A network trained on those learns that an object is a uniformly
colored blob, so real packaging (print, logos, barcodes) breaks into pieces and highlights become objects. The
sim-to-real recipes that transfer (UOIS-Net, UCN, SD Mask R-CNN) make the geometry trustworthy and the appearance
untrustworthy. This module re-renders the color image of a :class:`~instance_seg_ros.sim.frame.Frame` from its
noise-free geometry (depth, object poses, the id image), which TinyRenderer already computed:

- **albedo**: each object gets a procedural print (:func:`~.textures.packaging_texture`) mapped in its own frame
  (box faces: planar per face; cylinders: wrapped around the axis, like a label), so the print moves with the
  object and differs between its faces; the table, floor and walls get wood / stone / cloth / carpet / plain;
  flat sheets (paper, flyers, mats) lie on the table: textured, but background in the ground truth (no height);
- **lighting**: a key and a fill light of random direction and color temperature, Lambertian shading from the
  surface normals, Blinn-Phong highlights on glossy objects and tables (returned as a glare mask: structured-light
  and stereo sensors lose depth there), cast shadows of the objects on the table;
- **camera**: exposure, gamma, vignetting, blur, sensor noise and JPEG artifacts.

The ground truth does not change: only ``color`` is replaced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..core.geometry import quaternion_to_matrix
from .camera import ray_grid
from .errors import SceneError
from .textures import packaging_texture, sheet_texture, surface_texture

__all__ = ["Appearance", "Look", "surface_normals"]

_TEX = 256  # texture side, pixels


def surface_normals(points: np.ndarray) -> np.ndarray:
    """Unit normals (``float32[H, W, 3]``, facing the camera) of an organized point image ``float[H, W, 3]`` (NaN
    = no point); pixels without a normal get ``(0, 0, -1)``."""
    dx = np.zeros_like(points)
    dy = np.zeros_like(points)
    dx[:, 1:-1] = points[:, 2:] - points[:, :-2]
    dy[1:-1] = points[2:] - points[:-2]
    n = np.cross(dx, dy)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = n / norm
    bad = ~np.isfinite(n).all(axis=-1) | (norm[..., 0] < 1e-12)
    n[bad] = (0.0, 0.0, -1.0)
    flip = np.einsum("hwc,hwc->hw", n, np.nan_to_num(points)) > 0
    n[flip] *= -1
    return n.astype(np.float32)


def _sample(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup of ``tex`` at texel coordinates ``(u, v)`` (1-D arrays) → ``float32[N, 3]``."""
    import cv2

    if u.size == 0:
        return np.zeros((0, 3), np.float32)
    n = u.size
    cols = 1024  # remap maps are at most 32767 on a side: lay the lookups out as rows of 1024
    rows = -(-n // cols)
    mx = np.zeros(rows * cols, np.float32)
    my = np.zeros(rows * cols, np.float32)
    mx[:n], my[:n] = u, v
    size = tex.shape[0]
    # BORDER_WRAP only wraps by one image: reduce the coordinates into [0, size) first
    mx = np.mod(mx, size).reshape(rows, cols)
    my = np.mod(my, size).reshape(rows, cols)
    out = cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    return out.reshape(-1, 3)[:n].astype(np.float32)


class Look(NamedTuple):
    """What :meth:`Appearance.apply` returns."""

    #: uint8[H, W, 3] RGB, the new color image
    color: np.ndarray
    #: bool[H, W], strong specular highlights (sensors lose depth there)
    glare: np.ndarray
    #: bool[H, W], pixels painted by flat sheets on the table (background in the ground truth)
    sheets: np.ndarray


@dataclass(frozen=True)
class Appearance:
    """What :meth:`apply` randomises, and within which ranges (probabilities per frame or per object)."""

    object_texture_probability: float = 0.85
    surface_texture_probability: float = 0.9
    sheets: tuple[int, int] = (0, 3)
    glossy_object_probability: float = 0.35
    glossy_surface_probability: float = 0.3
    shadow_probability: float = 0.7
    ambient: tuple[float, float] = (0.25, 0.6)
    exposure: tuple[float, float] = (0.65, 1.35)
    white_balance: float = 0.15
    blur_probability: float = 0.35
    jpeg_probability: float = 0.5
    color_noise: tuple[float, float] = (1.0, 6.0)
    vignetting: float = 0.35
    #: per frame: draw 1-3 shared looks (a plain color or one packaging print) and give each object one of them
    #: with probability ``shared_look_fraction``: identical products side by side, same-colored objects touching
    shared_look_probability: float = 0.0
    shared_look_fraction: float = 0.7

    def __post_init__(self) -> None:
        for name in ("object_texture_probability", "surface_texture_probability", "glossy_object_probability",
                     "glossy_surface_probability", "shadow_probability", "blur_probability", "jpeg_probability",
                     "vignetting", "shared_look_probability", "shared_look_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise SceneError(f"Appearance.{name} must be within [0, 1], got {getattr(self, name)!r}.")
        for name in ("sheets", "ambient", "exposure", "color_noise"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise SceneError(f"Appearance.{name} must be a range (low, high) with 0 <= low <= high.")

    # ------------------------------------------------------------------------------------------------ main
    def apply(self, frame, rng: np.random.Generator, *, support_z: float | None = None) -> Look:
        """A new color image for ``frame`` (the Frame is not modified) and its glare mask.

        Args:
            frame: a rendered :class:`~instance_seg_ros.sim.frame.Frame` (uses ``color``, ``depth_true``,
                ``visible_ids``, ``intrinsics``, ``world_to_camera`` and the objects' poses).
            rng: all random choices.
            support_z: world height of the table top (flat sheets lie there; shadows fall there); None = none.

        Returns:
            The new color image, its glare mask and the pixels of the flat sheets (:class:`Look`).
        """
        k = frame.intrinsics
        h, w = frame.visible_ids.shape
        z = frame.depth_true.astype(np.float32)
        valid = np.isfinite(z) & (z > 0)
        us, vs = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        zz = np.where(valid, z, np.nan)
        gx, gy = ray_grid(k.fx, k.fy, k.cx, k.cy, w, h)  # the simulator's cached per-pixel x/z, y/z
        pts = np.stack([gx * zz, gy * zz, zz], axis=-1)
        normals = surface_normals(pts)
        c2w = frame.camera.camera_to_world
        rot_w, t_w = c2w[:3, :3].astype(np.float32), c2w[:3, 3].astype(np.float32)
        ids = frame.visible_ids
        albedo = frame.color.astype(np.float32)
        gloss = np.zeros((h, w), np.float32)  # specular strength per pixel
        shininess = np.full((h, w), 30.0, np.float32)
        sheets = np.zeros((h, w), bool)

        # ---- surfaces (table, tray, floor, walls) and flat sheets on the table
        bg = valid & (ids == 0)
        if bg.any():
            pw = pts[bg] @ rot_w.T + t_w
            nw = normals[bg] @ rot_w.T
            horizontal = np.abs(nw[:, 2]) > 0.75
            on_table = horizontal & (np.abs(pw[:, 2] - (support_z if support_z is not None else -1e9)) < 0.03)
            classes = [on_table, horizontal & ~on_table, ~horizontal]
            vals = albedo[bg]
            for cls in classes:
                if not cls.any():
                    continue
                if rng.random() < self.surface_texture_probability:
                    tex = surface_texture(rng, _TEX)
                    tile = float(rng.uniform(0.25, 1.2))
                    p = pw[cls]
                    if cls is classes[2]:
                        a, b = p[:, 0] + p[:, 1], p[:, 2]
                    else:
                        a, b = p[:, 0], p[:, 1]
                    vals[cls] = _sample(tex, a / tile * _TEX, b / tile * _TEX)
                else:
                    vals[cls] = np.median(vals[cls], axis=0)
                if rng.random() < self.glossy_surface_probability:
                    sel = np.flatnonzero(bg)[cls]
                    gloss.flat[sel] = rng.uniform(0.2, 0.8)
                    shininess.flat[sel] = rng.uniform(8, 60)
            if support_z is not None and on_table.any():
                sheets[bg] = self._sheets(rng, pw, on_table, vals)
            albedo[bg] = vals

        # ---- objects
        shared: list | None = None
        if self.shared_look_probability > 0 and rng.random() < self.shared_look_probability:
            shared = [None] * int(rng.integers(1, 4))  # drawn when first used
        for o in frame.objects:
            m = valid & (ids == o.id)
            if not m.any():
                continue
            look = None
            if shared is not None and rng.random() < self.shared_look_fraction:
                i = int(rng.integers(0, len(shared)))
                if shared[i] is None:
                    shared[i] = (packaging_texture(rng, _TEX) if rng.random() < self.object_texture_probability
                                 else rng.uniform(15, 240, size=3).astype(np.float32))
                look = shared[i]
            self._object_albedo(rng, o, m, pts, normals, albedo, look)
            if rng.random() < self.glossy_object_probability:
                gloss[m] = rng.uniform(0.3, 1.0)
                shininess[m] = rng.uniform(10, 120)

        # ---- lighting
        key_w = self._light_dir(rng, elevation=(25, 85))
        fill_w = self._light_dir(rng, elevation=(10, 80))
        key = (frame.world_to_camera[:3, :3] @ key_w).astype(np.float32)
        fill = (frame.world_to_camera[:3, :3] @ fill_w).astype(np.float32)
        ambient = float(rng.uniform(*self.ambient))
        fill_k = float(rng.uniform(0.0, 0.35))
        shade = ambient + (1 - ambient) * np.clip(normals @ key, 0, None) + fill_k * np.clip(normals @ fill, 0, None)
        shade[~valid] = ambient + 0.3 * (1 - ambient)
        if support_z is not None and rng.random() < self.shadow_probability:
            shade *= 1.0 - float(rng.uniform(0.3, 0.7)) * self._shadow(frame, pts, valid, key_w, support_z, rng)
        view = -np.nan_to_num(pts)
        view /= np.maximum(np.linalg.norm(view, axis=-1, keepdims=True), 1e-6)
        half = view + key[None, None, :]
        half /= np.maximum(np.linalg.norm(half, axis=-1, keepdims=True), 1e-6)
        spec = gloss * np.clip(np.einsum("hwc,hwc->hw", normals, half), 0, 1) ** shininess
        spec[~valid] = 0
        temp = float(rng.uniform(-1, 1))  # warm (+) .. cool (-)
        light = np.array([1.0 + 0.12 * temp, 1.0, 1.0 - 0.2 * temp], np.float32)
        light *= 1.0 + rng.uniform(-self.white_balance, self.white_balance, size=3).astype(np.float32)
        img = albedo * shade[..., None] * light + 255.0 * spec[..., None] * light
        glare = spec > 0.6

        # ---- camera
        img *= float(rng.uniform(*self.exposure))
        if self.vignetting > 0:
            r2 = ((us - w / 2) / (w / 2)) ** 2 + ((vs - h / 2) / (h / 2)) ** 2
            img *= (1.0 - float(rng.uniform(0, self.vignetting)) * 0.5 * r2)[..., None]
        img = np.clip(img, 0, 255)
        gamma = float(rng.uniform(0.8, 1.25))
        img = 255.0 * (img / 255.0) ** gamma
        return Look(self._camera_effects(img, rng), glare, sheets)

    # ------------------------------------------------------------------------------------------------ parts
    @staticmethod
    def _light_dir(rng: np.random.Generator, elevation: tuple[float, float]) -> np.ndarray:
        az, el = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(*elevation))
        return np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])

    def _object_albedo(self, rng, o, m, pts, normals, albedo, look=None) -> None:
        """Paint object ``o``: ``look`` None = its own (a print with ``object_texture_probability``, else its flat
        color), an RGB vector = that flat color, an image = that print."""
        if look is not None and np.ndim(look) == 1:
            albedo[m] = look
            return
        if look is None and rng.random() >= self.object_texture_probability:
            albedo[m] = np.median(albedo[m], axis=0)
            return
        tex = packaging_texture(rng, _TEX) if look is None else look
        rot = quaternion_to_matrix(np.asarray(o.quat)).astype(np.float32)
        p = (pts[m] - np.asarray(o.position, np.float32)) @ rot  # object frame
        n = normals[m] @ rot
        ext = np.asarray(o.extent, np.float32)
        tile = float(max(ext.max(), 0.02) * rng.uniform(1.0, 1.8))
        if o.name == "cylinder":
            r = float(max(ext[0], ext[1]) / 2)
            side = np.abs(n[:, 2]) < 0.7
            a = np.where(side, np.arctan2(p[:, 1], p[:, 0]) * r, p[:, 0])
            b = np.where(side, p[:, 2], p[:, 1] + 0.37 * tile)
        else:
            axis = np.argmax(np.abs(n), axis=1)
            face = axis * 2 + (np.take_along_axis(n, axis[:, None], 1)[:, 0] > 0)
            other = np.array([[1, 2], [0, 2], [0, 1]])[axis]
            a = np.take_along_axis(p, other[:, :1], 1)[:, 0]
            b = np.take_along_axis(p, other[:, 1:], 1)[:, 0]
            offsets = rng.uniform(0, tile, size=(6, 2)).astype(np.float32)
            a = a + offsets[face, 0]
            b = b + offsets[face, 1]
        albedo[m] = _sample(tex, a / tile * _TEX, b / tile * _TEX)

    def _sheets(self, rng, pw, on_table, vals) -> np.ndarray:
        painted = np.zeros(len(pw), bool)
        n = int(rng.integers(self.sheets[0], self.sheets[1] + 1))
        if n == 0:
            return painted
        centre = pw[on_table, :2].mean(axis=0)
        spread = pw[on_table, :2].std(axis=0) + 0.05
        for _ in range(n):
            c = centre + rng.normal(0, 1, size=2) * spread
            sx, sy = rng.uniform(0.08, 0.3, size=2)
            yaw = rng.uniform(0, math.pi)
            cs, sn = math.cos(yaw), math.sin(yaw)
            d = pw[:, :2] - c
            a = d[:, 0] * cs + d[:, 1] * sn
            b = -d[:, 0] * sn + d[:, 1] * cs
            inside = on_table & (np.abs(a) < sx / 2) & (np.abs(b) < sy / 2)
            if not inside.any():
                continue
            tex = sheet_texture(rng, _TEX)
            vals[inside] = _sample(tex, (a[inside] / sx + 0.5) * (_TEX - 1), (b[inside] / sy + 0.5) * (_TEX - 1))
            painted |= inside
        return painted

    @staticmethod
    def _shadow(frame, pts, valid, light_w, support_z, rng) -> np.ndarray:
        """Soft shadow mask in [0, 1] of the objects cast along ``light_w`` onto the table plane."""
        import cv2

        k = frame.intrinsics
        h, w = frame.visible_ids.shape
        obj = valid & (frame.visible_ids > 0)
        if not obj.any() or light_w[2] < 0.1:
            return np.zeros((h, w), np.float32)
        c2w = frame.camera.camera_to_world
        pw = pts[obj] @ c2w[:3, :3].T + c2w[:3, 3]
        height = pw[:, 2] - support_z
        keep = height > 0.003
        pw, height = pw[keep], height[keep]
        ground = pw - light_w[None, :] * (height / light_w[2])[:, None]
        pc = ground @ frame.world_to_camera[:3, :3].T + frame.world_to_camera[:3, 3]
        front = pc[:, 2] > 1e-3
        pc = pc[front]
        u = np.round(pc[:, 0] / pc[:, 2] * k.fx + k.cx).astype(np.int64)
        v = np.round(pc[:, 1] / pc[:, 2] * k.fy + k.cy).astype(np.int64)
        inb = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        mask = np.zeros((h, w), np.float32)
        mask[v[inb], u[inb]] = 1.0
        mask = cv2.dilate(mask, np.ones((5, 5), np.uint8))
        sigma = float(rng.uniform(1.0, 6.0))
        mask = cv2.GaussianBlur(mask, (0, 0), sigma)
        mask[frame.visible_ids > 0] = 0.0  # objects are lit by the key light (their own shading handles it)
        return np.clip(mask, 0, 1)

    def _camera_effects(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import cv2

        if rng.random() < self.blur_probability:
            if rng.random() < 0.6:
                img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 1.5)))
            else:  # motion blur
                n = int(rng.integers(3, 8))
                kern = np.zeros((n, n), np.float32)
                kern[n // 2] = 1.0 / n
                rot = cv2.getRotationMatrix2D((n / 2 - 0.5, n / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
                kern = cv2.warpAffine(kern, rot, (n, n))
                img = cv2.filter2D(img, -1, kern / max(kern.sum(), 1e-6))
        std = float(rng.uniform(*self.color_noise))
        if std > 0:
            img = img + rng.normal(0, std, size=img.shape).astype(np.float32) * np.sqrt(np.maximum(img, 16) / 128.0)
        out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        if rng.random() < self.jpeg_probability:
            ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(35, 95))])
            if ok:
                out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
        return out
