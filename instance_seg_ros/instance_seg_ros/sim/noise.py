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
