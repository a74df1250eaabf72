"""Simulated tabletop scenes with free amodal ground truth (PyBullet, DIRECT mode, TinyRenderer).

A :class:`Scene` owns one PyBullet physics client (DIRECT mode, never the GUI) holding an optional
support (a table, or a tray on a table) and objects: meshes from ``pybullet_data/random_urdfs`` and
primitives (boxes, cylinders, spheres) with random size, color (optionally texture) and pose,
dropped and settled by physics so they touch and occlude each other.
:meth:`Scene.render` renders a :class:`~.camera.Camera` into a :class:`~.frame.Frame`: color, metric depth, the
visible instance-id image and, per object, its visible and **amodal** masks (the object rendered
alone in the same pose), its occlusion, 6D pose and extent.

The parts live beside this module: the camera and its conventions in :mod:`.camera`, the noise model in
:mod:`.noise`, the support, object descriptions and the ``random_urdfs`` meshes in :mod:`.objects`, what random
scenes are drawn from in :mod:`.randomization`, the frame and its ground truth in :mod:`.frame`.

Example::

    with Scene.random(seed=3) as scene:
        frame = scene.render(scene.random_camera(seed=0))
        gt = frame.to_frame_result()

Speed (one core, 640x480, TinyRenderer): a frame costs one full render plus one small render per
object for the amodal masks, each restricted to the window the object's bounding box projects to;
see ``Scene.render``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pybullet as pb

from ..core.geometry import matrix_to_quaternion, pose_matrix, quaternion_to_matrix
from ..core.types import Intrinsics
from .appearance import Appearance
from .camera import Camera, d435_intrinsics
from .errors import SceneError
from .frame import Frame, object_ground_truth
from .noise import SensorNoise
from .objects import (
    DATA_DIR,
    SUPPORTS,
    TABLE_SIZE,
    ObjectSpec,
    SceneObject,
    support_boxes,
    support_top_z,
    urdf_local_box,
    urdf_path,
)
from .randomization import SceneConfig, random_object_spec

__all__ = ["Scene"]


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
        pb.setAdditionalSearchPath(str(DATA_DIR), physicsClientId=cid)
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
        for boxes, rgba in support_boxes(kind, floor, rng):
            self._static_boxes(boxes, rgba)

    @property
    def support_top_z(self) -> float:
        """Height of the surface objects rest on (world z, meters); 0 without support."""
        return support_top_z(self.support)

    def _texture(self, name: str) -> int:
        if name not in self._textures:
            path = Path(name) if os.path.isabs(name) else DATA_DIR / name
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
            path = urdf_path(spec.urdf_index)
            centre, size = urdf_local_box(str(path))
            centre_l = np.asarray(centre) * spec.scale  # bounding-box centre in the link frame
            extent = np.asarray(size) * spec.scale
            # place the link so that the bounding-box centre lands on spec.position
            link_pos = pos_w - quaternion_to_matrix(quat_w) @ centre_l
            body = pb.loadURDF(str(path), basePosition=link_pos.tolist(), baseOrientation=quat_w.tolist(),
                               globalScaling=float(spec.scale), useFixedBase=spec.mass == 0, physicsClientId=cid)
            if spec.mass is not None and spec.mass > 0:
                pb.changeDynamics(body, -1, mass=float(spec.mass), physicsClientId=cid)
            info = pb.getDynamicsInfo(body, -1, physicsClientId=cid)
            link_com = pose_matrix(info[3], info[4])  # centre of mass in the link frame
            link_centre = pose_matrix(centre_l, (0, 0, 0, 1))
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
        support = str(rng.choice(list(cfg.supports)))
        floor = cfg.floor or (cfg.floor_probability > 0 and rng.random() < cfg.floor_probability)
        scene = cls(support=support, seed=seed, config=cfg, min_visible_pixels=min_visible_pixels, floor=floor)
        try:
            n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
            specs = [random_object_spec(rng, cfg) for _ in range(n)]
            # spawn on a grid of cells (3x3 per layer), jittered, layer by layer
            cols = 3
            spacing = cfg.spawn_spacing
            if cfg.spawn_spacing_range is not None:
                spacing = float(rng.uniform(*cfg.spawn_spacing_range))
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
        return pose_matrix(pos, orn) @ obj.center_in_com

    def set_object_pose(self, obj: SceneObject, position: Sequence[float], quat: Sequence[float]) -> None:
        """Teleport an object (its bounding-box centre) to a world pose."""
        target = pose_matrix(position, quat) @ np.linalg.inv(obj.center_in_com)
        pb.resetBasePositionAndOrientation(obj.body, target[:3, 3].tolist(),
                                           matrix_to_quaternion(target[:3, :3]).tolist(), physicsClientId=self.client)

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
        k = intrinsics or d435_intrinsics()
        distance = max(float(rng.uniform(*cfg.camera_distance)), cfg.min_view_width * k.fx / k.width)
        return Camera.orbit(
            target,
            distance=distance,
            elevation_deg=float(rng.uniform(*cfg.camera_elevation_deg)),
            azimuth_deg=float(rng.uniform(0, 360)),
            roll_deg=float(rng.uniform(-cfg.camera_roll_deg, cfg.camera_roll_deg)),
            intrinsics=k,
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

    def render(
        self,
        camera: Camera,
        *,
        amodal: bool = True,
        noise: SensorNoise | None = None,
        seed: int | None = None,
        appearance: Appearance | None = None,
    ) -> Frame:
        """Render one frame with its ground truth.

        Args:
            camera: where to look from (its intrinsics set the image size).
            amodal: also render each object alone for its amodal mask (one extra render per object,
                restricted to the object's projected window). False is faster (a camera node that only needs
                images): ``amodal_mask`` is None and occlusion NaN.
            noise: a sensor noise model for ``depth`` (and ``color``); ``depth_true`` stays noise-free.
            seed: seeds the noise (and appearance); default: derived from the scene seed and a per-scene render
                counter.
            appearance: re-renders ``color`` with random textures, lighting and camera effects (see
                :mod:`~instance_seg_ros.sim.appearance`); highlights and dark surfaces then also lose depth when
                the noise model says so. The ground truth is unchanged.

        Returns:
            The :class:`Frame`; identical for identical scene, camera and seed.
        """
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
        windows = {o.id: camera.box_window(self.object_pose_world(o), o.extent) for o in self.objects}
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

        objects = []
        for o in self.objects:
            vis = visible_ids == o.id
            am = amodal_masks.get(o.id)
            if am is not None:
                # rasterising a window and the full image can disagree on a few boundary pixels (float
                # round-off); the amodal mask must contain the visible one, so take the union
                self.amodal_fixup_pixels += int((vis & ~am).sum())
                am |= vis
            objects.append(object_ground_truth(
                o, w2c @ self.object_pose_world(o), vis, am, depth=depth, intrinsics=k,
                truncation=truncations.get(o.id, float("nan")), in_view=windows[o.id] is not None,
                min_visible_pixels=self.min_visible_pixels,
            ))

        depth_true = depth
        frame = Frame(color=color, depth=depth, depth_true=depth_true, visible_ids=visible_ids, intrinsics=k,
                      world_to_camera=np.array(w2c), objects=objects, camera=camera)
        key = self._renders if seed is None else int(seed)
        glare = None
        t3 = time.perf_counter()
        if appearance is not None:
            color, glare, _ = appearance.apply(frame, np.random.default_rng([self.seed, 4, key]),
                                               support_z=self.support_top_z if self.support != "none" else None)
        t4 = time.perf_counter()
        if noise is not None:
            rng = np.random.default_rng([self.seed, 3, key])
            depth = noise.apply_depth(depth_true, k.fx, rng, color=color if appearance is not None else None,
                                      glare=glare)
            color = noise.apply_color(color, rng)
        self._renders += 1
        t5 = time.perf_counter()
        timings = {"render": (t1 - t0) * 1e3, "amodal": (t2 - t1) * 1e3,
                   "ground_truth": (t3 - t2 + t5 - t4) * 1e3}
        if appearance is not None:
            timings["appearance"] = (t4 - t3) * 1e3
        timings["total"] = sum(timings.values())
        return dataclasses.replace(frame, color=color, depth=depth, timings=timings)


def _replace(spec: ObjectSpec, **changes: Any) -> ObjectSpec:
    return dataclasses.replace(spec, **changes)
