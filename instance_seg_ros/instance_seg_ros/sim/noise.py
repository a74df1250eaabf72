"""A D435-like sensor noise model for simulated depth (and color) images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SceneError

__all__ = ["SensorNoise"]

#: edge dropout comes in segments of about this many pixels (``SensorNoise.edge_band_px``)
_SEGMENT_PX = 8.0


def _cells(rng: np.random.Generator, shape: tuple[int, int], cell: float, draw) -> np.ndarray:
    """float64[H, W]: values of ``draw(size)`` (e.g. ``rng.random``) constant on square cells ``cell`` pixels wide
    (a random phase), the nearest-neighbour upsampling of a coarse random field."""
    h, w = shape
    oy, ox = rng.random(2) * cell
    rows = ((np.arange(h) + oy) / cell).astype(np.intp)
    cols = ((np.arange(w) + ox) / cell).astype(np.intp)
    coarse = draw(size=(int(rows[-1]) + 1, int(cols[-1]) + 1))
    return coarse[rows[:, None], cols[None, :]]


def _baseline_shadow(z: np.ndarray, valid: np.ndarray, fx: float, b: float) -> np.ndarray:
    """Pixels a second viewpoint at ``b`` meters along x (a projector, or the camera depth is registered from)
    cannot see: along each row, a point is hidden when a nearer point on that viewpoint's side maps to the same or
    a later column of it."""
    zf = np.where(valid, z, np.inf)
    col = np.arange(z.shape[1], dtype=np.float64)[None, :]
    # column of each pixel in the other view (disparity against it); invalid pixels never occlude
    up = np.where(valid, col - fx * abs(b) / zf, np.inf if b > 0 else -np.inf)
    if b > 0:  # viewpoint to the right: a pixel is hidden by nearer points to its right
        run = np.minimum.accumulate(up[:, ::-1], axis=1)[:, ::-1]
        nxt = np.concatenate([run[:, 1:], np.full((z.shape[0], 1), np.inf)], axis=1)
        return valid & (up > nxt + 0.5)
    up = np.where(valid, col + fx * abs(b) / zf, -np.inf)
    run = np.maximum.accumulate(up, axis=1)
    prv = np.concatenate([np.full((z.shape[0], 1), -np.inf), run[:, :-1]], axis=1)
    return valid & (up < prv - 0.5)


@dataclass(frozen=True)
class SensorNoise:
    """A D435-like depth (and color) noise model, applied by :meth:`Scene.render` from a seed.

    Depth: Gaussian noise and quantisation in *disparity* (``d = fx * baseline / z``), so the error
    grows with z^2 (~2.6 mm RMS at 1 m with the defaults); invalid pixels at depth edges (relative
    jump to a 4-neighbour above ``edge_threshold``, dropped with probability ``edge_dropout``);
    random elliptical holes; invalid outside ``[min_depth, max_depth]``. Color: Gaussian noise.

    Off by default (0), for sensors like real ones (see :func:`~instance_seg_ros.sim.randomization.random_sensor`):

    - ``correlated_std``: a smooth, low-frequency depth bias (meters RMS at 1 m, growing with z^2), as the
      calibration and speckle-correlation errors of structured-light and stereo sensors;
    - ``shadow_baseline``: the projector (structured light) or second camera (stereo) offset along +x (meters;
      negative = along -x): surfaces the projector cannot see behind a nearer edge get no depth (the shadow band
      beside every object on a Kinect / Xtion image);
    - ``dark_dropout``: probability of losing depth on dark pixels (``color`` luminance below ``dark_level``), and
      depth is always lost on the glare mask passed to :meth:`apply_depth` (specular highlights);
    - ``misregistration_px``: depth shifted against color by up to this many pixels (imperfect registration);
    - ``registration_baseline``: the depth camera's offset from the color camera along +x (meters, signed like
      ``shadow_baseline``): background the color camera sees but the depth camera does not gets no depth once depth
      is registered to color, a second, narrower band on the other side of objects than the projector shadow;
    - ``noise_cell_px``: the size of one depth-sensor pixel in output pixels (>= 1; depth registered to a color
      camera of longer focal length or higher resolution): every pixel of a cell takes the noisy depth of the
      cell's centre (unless across an edge), so neighbouring pixels share a depth (the plateaus of registered depth);
    - ``smooth_ksize``: 3 or 5, an edge-preserving median of the noisy depth (sensor / registration filtering):
      a pixel takes the median of its window unless that differs from it by more than ``edge_threshold``;
    - ``edge_band_px``: edge dropout in solid bands instead of per-pixel coin flips: edge segments of
      ``_SEGMENT_PX`` cells are dropped with probability ``edge_dropout``, each widened by a random 1 to
      ``edge_band_px`` pixels around the edge;
    - ``dark_blob_px``: dark-surface dropout in patches (cells of this many pixels) instead of per-pixel speckle.
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
    correlated_std: float = 0.0
    shadow_baseline: float = 0.0
    dark_dropout: float = 0.0
    dark_level: float = 35.0
    misregistration_px: int = 0
    registration_baseline: float = 0.0
    noise_cell_px: float = 0.0
    smooth_ksize: int = 0
    edge_band_px: int = 0
    dark_blob_px: float = 0.0

    def __post_init__(self) -> None:
        for name in ("baseline", "subpixel", "hole_radius"):
            if not getattr(self, name) > 0:
                raise SceneError(f"SensorNoise.{name} must be positive, got {getattr(self, name)!r}.")
        for name in ("disparity_std", "edge_threshold", "holes_per_megapixel", "color_std", "correlated_std",
                     "dark_level", "misregistration_px", "edge_band_px", "dark_blob_px"):
            if not getattr(self, name) >= 0:
                raise SceneError(f"SensorNoise.{name} must be >= 0, got {getattr(self, name)!r}.")
        if not 0 <= self.dark_dropout <= 1:
            raise SceneError(f"SensorNoise.dark_dropout must be within [0, 1], got {self.dark_dropout!r}.")
        if not 0 <= self.edge_dropout <= 1:
            raise SceneError(f"SensorNoise.edge_dropout must be within [0, 1], got {self.edge_dropout!r}.")
        if not 0 <= self.min_depth < self.max_depth:
            raise SceneError("SensorNoise needs 0 <= min_depth < max_depth.")
        if not (self.noise_cell_px == 0 or self.noise_cell_px >= 1):
            raise SceneError(f"SensorNoise.noise_cell_px must be 0 (per pixel) or >= 1, got {self.noise_cell_px!r}.")
        if self.smooth_ksize not in (0, 3, 5):
            raise SceneError(f"SensorNoise.smooth_ksize must be 0 (off), 3 or 5, got {self.smooth_ksize!r}.")

    def apply_depth(
        self,
        depth: np.ndarray,
        fx: float,
        rng: np.random.Generator,
        *,
        color: np.ndarray | None = None,
        glare: np.ndarray | None = None,
    ) -> np.ndarray:
        """Noisy copy of ``depth`` (float32[H, W] meters, NaN invalid); ``color`` (uint8[H, W, 3]) and ``glare``
        (bool[H, W]) drive the dark-surface and highlight dropout."""
        import cv2

        z = depth.astype(np.float64)
        valid = np.isfinite(z) & (z > 0)
        shadow = _baseline_shadow(z, valid, fx, self.shadow_baseline) if self.shadow_baseline else None
        if self.registration_baseline:
            occluded = _baseline_shadow(z, valid, fx, self.registration_baseline)
            shadow = occluded if shadow is None else shadow | occluded
        if self.correlated_std > 0:
            h0, w0 = z.shape
            field = rng.normal(0.0, 1.0, size=(4, 5))
            field = cv2.resize(field, (w0, h0), interpolation=cv2.INTER_CUBIC)
            z = np.where(valid, z + self.correlated_std * field * z * z, z)
        fb = fx * self.baseline
        disp = np.where(valid, fb / np.where(valid, z, 1.0), 0.0)
        if self.disparity_std > 0:
            disp = disp + rng.normal(0.0, self.disparity_std, size=disp.shape)
        disp = np.round(disp / self.subpixel) * self.subpixel
        ok = valid & (disp > 0)
        out = np.full(z.shape, np.nan, dtype=np.float32)
        out[ok] = (fb / disp[ok]).astype(np.float32)
        if self.smooth_ksize:
            med = cv2.medianBlur(np.where(ok, out, 0.0).astype(np.float32), self.smooth_ksize)
            with np.errstate(invalid="ignore"):
                keep = ok & (np.abs(med - out) <= self.edge_threshold * out)
            out[keep] = med[keep]
        if self.noise_cell_px >= 1:
            out = self._register(out, z, ok, rng)
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
        if self.edge_dropout > 0 and self.edge_band_px > 0:
            out[self._edge_bands(edge, rng)] = np.nan
        elif self.edge_dropout > 0:
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
        if shadow is not None:
            out[shadow] = np.nan
        if glare is not None:
            out[glare] = np.nan
        if color is not None and self.dark_dropout > 0:
            lum = color.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            blobs = self.dark_blob_px >= 1
            coin = _cells(rng, z.shape, self.dark_blob_px, rng.random) if blobs else rng.random(z.shape)
            out[(lum < self.dark_level) & (coin < self.dark_dropout)] = np.nan
        if self.misregistration_px:
            dx, dy = (int(v) for v in rng.integers(-self.misregistration_px, self.misregistration_px + 1, size=2))
            out = np.roll(out, (dy, dx), axis=(0, 1))
        with np.errstate(invalid="ignore"):
            out[(out < self.min_depth) | (out > self.max_depth)] = np.nan
        return out

    def _register(self, depth: np.ndarray, z: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy ``depth`` resampled as depth registered from a coarser sensor: every pixel of a ``noise_cell_px`` cell
        (random phase) takes the value of the cell's centre pixel, unless that lies across a depth edge."""
        c = self.noise_cell_px
        idx = []
        for n, o in zip(z.shape, rng.random(2) * c, strict=True):
            centre = (np.floor((np.arange(n) + o) / c) + 0.5) * c - o
            idx.append(np.clip(np.floor(centre), 0, n - 1).astype(np.intp))
        ry, rx = idx[0][:, None], idx[1][None, :]
        zc, vc = z[ry, rx], valid[ry, rx]
        with np.errstate(invalid="ignore"):
            same = valid & vc & (np.abs(zc - z) <= self.edge_threshold * np.minimum(z, zc))
        return np.where(same, depth[ry, rx], depth)

    def _edge_bands(self, edge: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The edge pixels to drop: along ``_SEGMENT_PX`` cells, with probability ``edge_dropout``, a band of a
        random width of 1 to ``edge_band_px`` pixels on either side of the edge."""
        import cv2

        coin = _cells(rng, edge.shape, _SEGMENT_PX, rng.random)
        width = np.ceil(_cells(rng, edge.shape, _SEGMENT_PX, rng.random) * self.edge_band_px)
        width[coin >= self.edge_dropout] = -1  # segment kept
        drop = edge & (width >= 0)
        e8 = edge.astype(np.uint8)
        for w in range(1, self.edge_band_px + 1):
            grown = cv2.dilate(e8, np.ones((2 * w + 1, 2 * w + 1), np.uint8)).astype(bool)
            drop |= grown & (width >= w)
        return drop

    def apply_color(self, color: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy copy of ``color`` (uint8[H, W, 3])."""
        if self.color_std <= 0:
            return color.copy()
        noisy = color.astype(np.float32) + rng.normal(0.0, self.color_std, size=color.shape).astype(np.float32)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
