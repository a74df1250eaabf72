"""A D435-like sensor noise model for simulated depth (and color) images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SceneError

__all__ = ["SensorNoise"]


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
    - ``misregistration_px``: depth shifted against color by up to this many pixels (imperfect registration).
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

    def __post_init__(self) -> None:
        for name in ("baseline", "subpixel", "hole_radius"):
            if not getattr(self, name) > 0:
                raise SceneError(f"SensorNoise.{name} must be positive, got {getattr(self, name)!r}.")
        for name in ("disparity_std", "edge_threshold", "holes_per_megapixel", "color_std", "correlated_std",
                     "dark_level", "misregistration_px"):
            if not getattr(self, name) >= 0:
                raise SceneError(f"SensorNoise.{name} must be >= 0, got {getattr(self, name)!r}.")
        if not 0 <= self.dark_dropout <= 1:
            raise SceneError(f"SensorNoise.dark_dropout must be within [0, 1], got {self.dark_dropout!r}.")
        if not 0 <= self.edge_dropout <= 1:
            raise SceneError(f"SensorNoise.edge_dropout must be within [0, 1], got {self.edge_dropout!r}.")
        if not 0 <= self.min_depth < self.max_depth:
            raise SceneError("SensorNoise needs 0 <= min_depth < max_depth.")

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
        shadow = self._projector_shadow(z, valid, fx) if self.shadow_baseline else None
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
        if shadow is not None:
            out[shadow] = np.nan
        if glare is not None:
            out[glare] = np.nan
        if color is not None and self.dark_dropout > 0:
            lum = color.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            out[(lum < self.dark_level) & (rng.random(z.shape) < self.dark_dropout)] = np.nan
        if self.misregistration_px:
            dx, dy = (int(v) for v in rng.integers(-self.misregistration_px, self.misregistration_px + 1, size=2))
            out = np.roll(out, (dy, dx), axis=(0, 1))
        with np.errstate(invalid="ignore"):
            out[(out < self.min_depth) | (out > self.max_depth)] = np.nan
        return out

    def _projector_shadow(self, z: np.ndarray, valid: np.ndarray, fx: float) -> np.ndarray:
        """Pixels the projector (at ``shadow_baseline`` along x) cannot see: along each row, a point is shadowed
        when a nearer point on its projector side maps to the same or a later projector column."""
        b = self.shadow_baseline
        zf = np.where(valid, z, np.inf)
        col = np.arange(z.shape[1], dtype=np.float64)[None, :]
        # projector column of each pixel (disparity against the projector); invalid pixels never occlude
        up = np.where(valid, col - fx * abs(b) / zf, np.inf if b > 0 else -np.inf)
        if b > 0:  # projector to the right: a pixel is hidden by nearer points to its right
            run = np.minimum.accumulate(up[:, ::-1], axis=1)[:, ::-1]
            nxt = np.concatenate([run[:, 1:], np.full((z.shape[0], 1), np.inf)], axis=1)
            return valid & (up > nxt + 0.5)
        up = np.where(valid, col + fx * abs(b) / zf, -np.inf)
        run = np.maximum.accumulate(up, axis=1)
        prv = np.concatenate([np.full((z.shape[0], 1), -np.inf), run[:, :-1]], axis=1)
        return valid & (up < prv - 0.5)

    def apply_color(self, color: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy copy of ``color`` (uint8[H, W, 3])."""
        if self.color_std <= 0:
            return color.copy()
        noisy = color.astype(np.float32) + rng.normal(0.0, self.color_std, size=color.shape).astype(np.float32)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
