"""The ranges random scenes and viewpoints are drawn from (:class:`SceneConfig`), and drawing one random object.

:meth:`Scene.random <instance_seg_ros.sim.scene.Scene.random>` and :meth:`Scene.random_camera
<instance_seg_ros.sim.scene.Scene.random_camera>` read a :class:`SceneConfig`; what is randomised (object kinds,
sizes, colors, textures, supports, viewpoints) and within which ranges is said here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.types import Intrinsics
from .errors import SceneError
from .noise import SensorNoise
from .objects import NUM_RANDOM_URDFS, PRIMITIVES, SUPPORTS, TEXTURES, ObjectSpec, urdf_usable

__all__ = ["GT_ID_STRIDE", "SCENE_SEED_STRIDE", "SENSORS", "SIM2REAL", "SceneConfig", "SensorPreset",
           "random_object_spec", "random_sensor", "scene_seed", "scene_track_id"]

#: scene ``i`` of a run seeded ``S`` (``isr synth``, ``isr record``, the sim camera) is ``Scene.random(S * stride + i)``
SCENE_SEED_STRIDE = 100003


def scene_seed(seed: int, index: int) -> int:
    """The ``Scene.random`` seed of scene ``index`` (0, 1, ...) of a dataset, bag or camera run seeded ``seed``."""
    return int(seed) * SCENE_SEED_STRIDE + int(index)


#: ground-truth track ids of scene ``s``: ``s * GT_ID_STRIDE + object id`` (object ids are 1..200)
GT_ID_STRIDE = 1000


def scene_track_id(scene_index: int, object_id: int) -> int:
    """The ground-truth ``track_id`` of object ``object_id`` (its :class:`~instance_seg_ros.sim.scene.Scene` id,
    1..200) in scene ``scene_index`` (0, 1, ...): stable over the scene's frames and unique over the scenes of a bag
    (scene 0 keeps the object ids)."""
    return int(scene_index) * GT_ID_STRIDE + int(object_id)


@dataclass(frozen=True)
class SensorPreset:
    """A family of RGB-D sensors: color focal length range at the native resolution, resolutions, depth principle.

    ``kind``: ``structured`` (Kinect v1, Asus Xtion: projector 7.5 cm beside the IR camera), ``stereo``
    (RealSense D4xx: 5 cm baseline, IR projector), ``tof`` (Azure Kinect, L515: no baseline shadow; flying pixels
    and dropout at edges and on dark surfaces instead).
    """

    name: str
    fx_640: tuple[float, float]
    sizes: tuple[tuple[int, int], ...]
    kind: str
    baseline: float
    min_depth: float
    max_depth: float


#: Focal lengths are for a 640-wide image (scaled to the rendered width); the sizes are what the sensor streams.
SENSORS: tuple[SensorPreset, ...] = (
    SensorPreset("xtion_kinect1", (520.0, 580.0), ((640, 480),), "structured", 0.075, 0.45, 4.0),
    SensorPreset("realsense_d4xx", (380.0, 640.0), ((640, 480), (1280, 720)), "stereo", 0.05, 0.15, 3.0),
    SensorPreset("azure_kinect", (500.0, 620.0), ((640, 576), (1280, 720)), "tof", 0.0, 0.25, 3.5),
    SensorPreset("l515", (450.0, 470.0), ((640, 480), (1280, 720)), "tof", 0.0, 0.25, 3.5),
    # narrow-field / calibrated-crop color streams (e.g. Xtion color at full zoom, industrial RGB-D heads)
    SensorPreset("narrow_fov", (800.0, 1100.0), ((640, 480),), "structured", 0.075, 0.4, 4.0),
)


def random_sensor(rng: np.random.Generator, width: int = 640) -> tuple[str, Intrinsics, SensorNoise]:
    """A random sensor: its name, intrinsics rendered at ``width`` pixels wide (the stream's aspect ratio kept;
    principal point within a few pixels of the centre) and a depth noise model of its kind."""
    preset = SENSORS[int(rng.integers(0, len(SENSORS)))]
    sw, sh = preset.sizes[int(rng.integers(0, len(preset.sizes)))]
    height = int(round(width * sh / sw / 2)) * 2
    f = float(rng.uniform(*preset.fx_640)) * width / 640.0
    if (sw, sh) == (1280, 720):  # 16:9 streams are wider-angle crops of the same optics
        f *= 1.0 if preset.kind == "tof" else 1.5 * 480 / 720
    cx = (width - 1) / 2.0 + float(rng.normal(0, 4))
    cy = (height - 1) / 2.0 + float(rng.normal(0, 4))
    k = Intrinsics(f, f * float(rng.uniform(0.995, 1.005)), cx, cy, int(width), int(height))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    # The depth camera's own focal length at 640 px: registered to a longer color lens, one depth pixel covers
    # several color pixels (Xtion 570 px under YCB-Video's 1067 px color: ~1.9 px cells).
    depth_fx = float(rng.uniform(*{"structured": (560.0, 590.0), "stereo": (380.0, 600.0), "tof": (450.0, 510.0)}[
        preset.kind]))
    cell = min(3.0, max(1.0, f * 640.0 / width / depth_fx))
    # Depth noise (mm RMS at 1 m, before smoothing), as a disparity std at this focal length and baseline.
    sigma_1m = float(rng.uniform(*{"structured": (0.5, 1.8), "stereo": (0.8, 2.5), "tof": (0.5, 2.0)}[preset.kind]))
    common = dict(noise_cell_px=cell, smooth_ksize=int(rng.choice((0, 3, 5), p=(0.3, 0.4, 0.3))),
                  edge_dropout=float(rng.uniform(0.5, 0.95)), edge_band_px=int(rng.integers(1, 3)),
                  holes_per_megapixel=float(rng.uniform(2, 15)), hole_radius=float(rng.uniform(0.01, 0.03)),
                  dark_dropout=float(rng.uniform(0.0, 0.1)), dark_blob_px=float(rng.uniform(4, 16)),
                  min_depth=preset.min_depth, max_depth=preset.max_depth, color_std=0.0)
    if preset.kind == "tof":  # no projector shadow; the depth camera sits 1-3.5 cm beside the color camera
        noise = SensorNoise(baseline=0.05, disparity_std=sigma_1m * 1e-3 * f * 0.05, subpixel=1 / 64,
                            correlated_std=float(rng.uniform(0.0, 0.003)),
                            registration_baseline=sign * float(rng.uniform(0.01, 0.035)),
                            misregistration_px=int(rng.integers(0, 3)), **common)
    else:  # the projector (structured) or right camera (stereo) on one side, the color camera on either
        reg_sign = -sign if preset.kind == "structured" else (1.0 if rng.random() < 0.5 else -1.0)
        noise = SensorNoise(baseline=preset.baseline, disparity_std=sigma_1m * 1e-3 * f * preset.baseline,
                            subpixel=1 / 8 if preset.kind == "structured" else 1 / 16,
                            correlated_std=float(rng.uniform(0.0, 0.004)), shadow_baseline=sign * preset.baseline,
                            registration_baseline=reg_sign * float(rng.uniform(0.015, 0.035)),
                            misregistration_px=int(rng.integers(0, 4)), **common)
    return preset.name, k, noise


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
    box_aspect: tuple[float, float] = (1.0, 1.0)
    spawn_spacing_range: tuple[float, float] | None = None
    floor_probability: float = 0.0
    #: the view at the target spans at least this many meters across (the camera backs off for long lenses)
    min_view_width: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.floor_probability <= 1:
            raise SceneError("floor_probability must be within [0, 1].")
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
            size = rng.uniform(*cfg.box_size, size=3)
            if cfg.box_aspect != (1.0, 1.0):  # cereal boxes are flat and tall (no draw otherwise: plain stream kept)
                size[int(rng.integers(0, 3))] *= float(rng.uniform(*cfg.box_aspect))
                size = np.minimum(size, max(cfg.box_size[1], 0.3))
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


#: The training recipe's scene ranges (``isr synth --recipe sim2real``): more boxes and cans of product sizes
#: (3-30 cm) than odd meshes, piles that touch, stack and lean, a floor beyond the table, cameras from 0.35 to
#: 1.5 m at 20-90 degrees elevation.
SIM2REAL = SceneConfig(
    min_objects=3, max_objects=18, primitive_fraction=0.7, urdf_scale=(0.7, 1.6),
    box_size=(0.03, 0.2), box_aspect=(1.0, 2.0), cylinder_radius=(0.02, 0.06), cylinder_length=(0.05, 0.25),
    sphere_radius=(0.025, 0.06), supports=("table", "table", "tray"), spawn_spacing=0.12,
    spawn_spacing_range=(0.06, 0.14), floor_probability=0.6, camera_distance=(0.35, 1.5),
    camera_elevation_deg=(20.0, 90.0), camera_roll_deg=8.0, target_jitter=0.08, min_view_width=0.4,
)
