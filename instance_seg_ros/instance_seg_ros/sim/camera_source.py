"""The frames ``sim_camera_node`` publishes, without ROS: random scenes, camera motion, sensor noise.

:class:`SimCameraSource` turns the node's settings (:class:`~instance_seg_ros.sim.camera_node.SimCameraSettings`)
into :class:`SimFrame` s; the node only stamps and publishes them. Scene ``s`` of a source started with ``seed``
is ``Scene.random(scene_seed(seed, s))``, and a scene's first view is the one ``isr record --seed S`` uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.types import FrameResult, Intrinsics
from .camera import Camera
from .noise import SensorNoise
from .randomization import scene_seed
from .scene import Scene

if TYPE_CHECKING:  # the settings live with the node's parameters; only their attributes are read here
    from .camera_node import SimCameraSettings

__all__ = ["SimCameraSource", "SimFrame", "scene_seed"]

@dataclass
class SimFrame:
    """One frame of the simulated camera.

    Attributes:
        index (int): frame number since the source was made (0, 1, ...).
        scene_index (int): which scene (0, 1, ...; a new one every ``scene_change_every`` frames).
        color (np.ndarray[H, W, 3] uint8): RGB.
        depth (np.ndarray[H, W] float32): metric z along the optical axis, NaN where invalid.
        intrinsics (Intrinsics): the pinhole model (image size included).
        camera (Camera): the camera pose this frame was rendered from.
        ground_truth (FrameResult | None): the scene's ground truth (``with_ground_truth`` sources only).
        rendered (bool): False when the previous render was reused (same scene and view).
        timings (dict[str, float]): milliseconds: ``scene`` (building a new scene, else 0), ``render``
            (0 when reused), ``ground_truth``, ``noise``.
    """

    index: int
    scene_index: int
    color: np.ndarray
    depth: np.ndarray
    intrinsics: Intrinsics
    camera: Camera
    ground_truth: FrameResult | None
    rendered: bool
    timings: dict[str, float] = field(default_factory=dict)


class SimCameraSource:
    """The frames :class:`SimCameraNode` publishes, without ROS: scenes, camera motion, noise.

    Deterministic: the same settings (and the same changes of the dynamic ones between calls) give the same
    frames. ``settings`` may be replaced between calls; ``rate``, ``scene_change_every``, ``camera_motion``,
    ``orbit_speed`` and ``noise`` take effect on the next frame (the others are read once, at construction).

    Args:
        settings: the node's settings.
        with_ground_truth: render amodal masks and fill :attr:`SimFrame.ground_truth` (default:
            ``settings.publish_ground_truth``).

    Example::

        with SimCameraSource(SimCameraSettings(width=320, height=240)) as source:
            frame = source.next()
    """

    def __init__(self, settings: SimCameraSettings, *, with_ground_truth: bool | None = None) -> None:
        self.settings = settings
        self.with_ground_truth = settings.publish_ground_truth if with_ground_truth is None else bool(with_ground_truth)
        self._intrinsics = settings.intrinsics
        self._scene_config = settings.scene_config
        self._noise_model = SensorNoise()
        self._scene: Scene | None = None
        self._scene_index = -1
        self._frames_in_scene = 0
        self._index = 0
        self._view: tuple[np.ndarray, float, float, float] = (np.zeros(3), 1.0, 45.0, 0.0)
        self._azimuth = 0.0
        self._cache: tuple[tuple[int, bytes], Any, FrameResult | None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Disconnect the current scene's PyBullet client (idempotent)."""
        if self._scene is not None:
            self._scene.close()
            self._scene = None
        self._cache = None

    def __enter__(self) -> SimCameraSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def scene(self) -> Scene | None:
        """The scene being rendered (None before the first frame and after :meth:`close`)."""
        return self._scene

    @property
    def frames(self) -> int:
        """Frames produced so far."""
        return self._index

    # ------------------------------------------------------------------ frames
    def _new_scene(self) -> Scene:
        index = self._scene_index + 1
        seed = scene_seed(self.settings.seed, index)
        scene = Scene.random(seed, self._scene_config)
        if self._scene is not None:
            self._scene.close()
        self._scene, self._scene_index, self._frames_in_scene, self._cache = scene, index, 0, None
        # the view `isr record --seed S` starts from: orbit parameters drawn from the scene seed
        rng = np.random.default_rng([seed, 11])
        cfg = self._scene_config
        target = scene.objects_center()
        self._view = (target, float(rng.uniform(*cfg.camera_distance)), float(rng.uniform(*cfg.camera_elevation_deg)),
                      float(rng.uniform(0, 360)))
        self._azimuth = self._view[3]
        return scene

    def next(self) -> SimFrame:
        """Render (or reuse) the next frame.

        Raises:
            SceneError: a scene could not be built (should not happen with valid settings).
        """
        s = self.settings
        timings = {"scene": 0.0, "render": 0.0, "ground_truth": 0.0, "noise": 0.0}
        t0 = time.perf_counter()
        scene = self._scene
        if scene is None or (s.scene_change_every and self._frames_in_scene >= s.scene_change_every):
            scene = self._new_scene()
            timings["scene"] = (time.perf_counter() - t0) * 1e3
        elif s.camera_motion == "orbit":
            self._azimuth = (self._azimuth + s.orbit_speed / s.rate) % 360.0
        target, distance, elevation, _ = self._view
        cfg = self._scene_config
        camera = Camera.orbit(target, distance=distance, elevation_deg=elevation, azimuth_deg=self._azimuth,
                              intrinsics=self._intrinsics, near=cfg.near, far=cfg.far)
        key = (self._scene_index, camera.world_to_camera.tobytes())
        rendered = self._cache is None or self._cache[0] != key
        if rendered:
            t1 = time.perf_counter()
            frame = scene.render(camera, amodal=self.with_ground_truth)
            t2 = time.perf_counter()
            gt = frame.to_frame_result() if self.with_ground_truth else None
            timings["render"], timings["ground_truth"] = (t2 - t1) * 1e3, (time.perf_counter() - t2) * 1e3
            self._cache = (key, frame, gt)
        _, frame, gt = self._cache
        color, depth = frame.color, frame.depth
        if s.noise:
            t3 = time.perf_counter()
            rng = np.random.default_rng([scene_seed(s.seed, self._scene_index), 3, self._frames_in_scene])
            depth = self._noise_model.apply_depth(frame.depth_true, self._intrinsics.fx, rng)
            color = self._noise_model.apply_color(frame.color, rng)
            timings["noise"] = (time.perf_counter() - t3) * 1e3
        out = SimFrame(index=self._index, scene_index=self._scene_index, color=color, depth=depth,
                       intrinsics=self._intrinsics, camera=camera, ground_truth=gt, rendered=rendered,
                       timings=timings)
        self._index += 1
        self._frames_in_scene += 1
        return out
