"""The ranges random scenes and viewpoints are drawn from (:class:`SceneConfig`), and drawing one random object.

:meth:`Scene.random <instance_seg_ros.sim.scene.Scene.random>` and :meth:`Scene.random_camera
<instance_seg_ros.sim.scene.Scene.random_camera>` read a :class:`SceneConfig`; what is randomised (object kinds,
sizes, colors, textures, supports, viewpoints) and within which ranges is said here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SceneError
from .objects import NUM_RANDOM_URDFS, PRIMITIVES, SUPPORTS, TEXTURES, ObjectSpec, urdf_usable

__all__ = ["SceneConfig", "random_object_spec"]


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


def _random_quat(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def random_object_spec(rng: np.random.Generator, cfg: SceneConfig) -> ObjectSpec:
    """One random object at the origin (a primitive with probability ``cfg.primitive_fraction``, else a usable
    ``random_urdfs`` mesh) with a random orientation and color; :meth:`Scene.random` places it."""
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
        texture = str(rng.choice(TEXTURES)) if rng.random() < cfg.texture_probability else None
        return ObjectSpec(shape, size=tuple(float(s) for s in size), orientation=quat,
                          color=tuple(float(c) for c in color), texture=texture)
    index = int(rng.integers(0, NUM_RANDOM_URDFS))
    while not urdf_usable(index):
        index = int(rng.integers(0, NUM_RANDOM_URDFS))
    return ObjectSpec("urdf", urdf_index=index, scale=float(rng.uniform(*cfg.urdf_scale)), orientation=quat,
                      color=tuple(float(c) for c in color))
