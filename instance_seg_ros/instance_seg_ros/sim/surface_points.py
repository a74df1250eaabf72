"""The true surfaces of a simulated scene as dense point samples in a frame's camera optical frame.

What the camera sees is one side of each object; a geometric check of a grasp (:mod:`instance_seg_ros.grasp.quality`)
needs the whole surface, including the sides facing away from the camera and those hidden by other objects. The
simulator knows every shape exactly, so:

- primitives (``box``, ``cylinder`` with its axis along its own z, ``sphere``) are sampled on a regular grid of
  about ``spacing`` metres over their faces;
- ``random_urdfs`` meshes are sampled uniformly over their triangles (area-weighted, about one point per
  ``spacing**2`` of area, seeded), read from the same OBJ file and URDF ``<visual>`` (scale, origin) that
  :func:`~instance_seg_ros.sim.objects.urdf_local_box` measures, at the object's global scale
  (``extent / size at scale 1``);
- the support's boxes (:func:`~instance_seg_ros.sim.objects.support_boxes`: the table top, the tray's floor and
  walls) are sampled on every face, restricted to ``support_margin`` metres around the objects (the table is
  1.2 x 0.8 m; a gripper only ever meets the part near the objects).

Poses come from the frame's ground truth (:class:`~instance_seg_ros.sim.frame.ObjectGT`: the bounding-box centre in
the camera frame), so the samples line up with the rendered depth to float precision; a mesh is placed by its
link frame, ``centre pose @ translate(-centre_in_link * scale)``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..core.geometry import quaternion_to_matrix
from .errors import SceneError
from .frame import Frame, ObjectGT
from .objects import support_boxes, urdf_local_box, urdf_path, urdf_visual_meshes
from .scene import Scene

__all__ = ["box_surface", "cylinder_surface", "object_surface", "scene_surfaces", "sphere_surface",
           "support_surface"]


def _axis(lo: float, hi: float, spacing: float) -> np.ndarray:
    n = max(2, int(math.ceil((hi - lo) / spacing)) + 1)
    return np.linspace(lo, hi, n)


def box_surface(half: np.ndarray, spacing: float) -> np.ndarray:
    """Grid points on the six faces of an axis-aligned box ``[-half, half]`` (its own frame), float64[N, 3]."""
    half = np.asarray(half, dtype=np.float64)
    out = []
    for axis in range(3):
        a, b = [k for k in range(3) if k != axis]
        ua, ub = _axis(-half[a], half[a], spacing), _axis(-half[b], half[b], spacing)
        ga, gb = np.meshgrid(ua, ub, indexing="ij")
        for sign in (-1.0, 1.0):
            face = np.empty((ga.size, 3))
            face[:, axis] = sign * half[axis]
            face[:, a], face[:, b] = ga.ravel(), gb.ravel()
            out.append(face)
    return np.concatenate(out)


def cylinder_surface(radius: float, length: float, spacing: float) -> np.ndarray:
    """Points on a closed cylinder, axis along z, centred at the origin, float64[N, 3]."""
    n_around = max(8, int(math.ceil(2 * math.pi * radius / spacing)))
    phi = np.linspace(0, 2 * math.pi, n_around, endpoint=False)
    z = _axis(-length / 2, length / 2, spacing)
    pp, zz = np.meshgrid(phi, z, indexing="ij")
    side = np.stack([radius * np.cos(pp.ravel()), radius * np.sin(pp.ravel()), zz.ravel()], axis=1)
    caps = []
    for r in _axis(0.0, radius, spacing)[1:]:
        k = max(6, int(math.ceil(2 * math.pi * r / spacing)))
        a = np.linspace(0, 2 * math.pi, k, endpoint=False)
        caps.append(np.stack([r * np.cos(a), r * np.sin(a)], axis=1))
    disc = np.concatenate([np.zeros((1, 2)), *caps])
    top = np.column_stack([disc, np.full(len(disc), length / 2)])
    bottom = np.column_stack([disc, np.full(len(disc), -length / 2)])
    return np.concatenate([side, top, bottom])


def sphere_surface(radius: float, spacing: float) -> np.ndarray:
    """About ``4 pi r^2 / spacing^2`` points spread evenly on a sphere (a Fibonacci lattice), float64[N, 3]."""
    n = max(32, int(math.ceil(4 * math.pi * radius**2 / spacing**2)))
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azimuth = math.pi * (1 + 5**0.5) * i
    return radius * np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], 1)


@functools.lru_cache(maxsize=256)
def _urdf_triangles(path: str) -> np.ndarray:
    """The triangles of a single-link URDF's visual meshes in its link frame at scale 1, float64[T, 3, 3]."""
    tris = []
    for mesh_file, scale, xyz, rot in urdf_visual_meshes(path):
        verts, faces = [], []
        with open(mesh_file, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("v "):
                    verts.append([float(s) for s in line.split()[1:4]])
                elif line.startswith("f "):
                    idx = [int(tok.split("/")[0]) for tok in line.split()[1:]]
                    faces += [(idx[0], idx[k], idx[k + 1]) for k in range(1, len(idx) - 1)]  # fan
        if not verts or not faces:
            continue
        v = np.asarray(verts) * scale @ rot.T + xyz
        f = np.asarray(faces)
        f = np.where(f > 0, f - 1, len(v) + f)  # OBJ: 1-based, negative = from the end
        t = v[f]
        tris.append(t[np.isfinite(t).all(axis=(1, 2))])
    if not tris:
        raise SceneError(f"{path} has no visual mesh to sample.")
    return np.concatenate(tris)


def _sample_triangles(tris: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    area = 0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    total = float(area.sum())
    if total <= 0:
        return tris.reshape(-1, 3)
    n = max(64, int(math.ceil(total / spacing**2)))
    pick = rng.choice(len(tris), size=n, p=area / total)
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tris[pick]
    pts = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    return np.concatenate([pts, tris.reshape(-1, 3)])  # the vertices too: sharp features are kept


def _transform(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    return (points @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32)


def object_surface(gt: ObjectGT, shape: str, *, spacing: float = 0.003, seed: int = 0) -> np.ndarray:
    """Surface samples of one object in the camera optical frame of ``gt``'s frame, float32[N, 3] metres.

    Args:
        gt: the object's ground truth in the frame (pose of its bounding-box centre, extent, name).
        shape: its :class:`~instance_seg_ros.sim.objects.SceneObject` ``shape`` (``box``, ``cylinder``, ``sphere``,
            ``urdf``).
        spacing: about this many metres between neighbouring samples.
        seed: seeds the mesh sampling.

    Raises:
        SceneError: unknown shape, or a mesh whose file cannot be read or sampled.
    """
    pose = np.eye(4)
    pose[:3, :3] = quaternion_to_matrix(gt.quat)
    pose[:3, 3] = gt.position
    e = np.asarray(gt.extent, dtype=np.float64)
    if shape == "box":
        local = box_surface(e / 2, spacing)
    elif shape == "cylinder":
        local = cylinder_surface(e[0] / 2, e[2], spacing)
    elif shape == "sphere":
        local = sphere_surface(e[0] / 2, spacing)
    elif shape == "urdf":
        if not gt.name.startswith("random_urdf_"):
            raise SceneError(f"cannot tell which random_urdfs mesh object {gt.name!r} is.")
        path = str(urdf_path(int(gt.name.rsplit("_", 1)[1])))
        centre, size = urdf_local_box(path)
        scale = float(e[int(np.argmax(size))] / max(size))
        tris = _urdf_triangles(path) * scale - np.asarray(centre) * scale
        local = _sample_triangles(tris, spacing, np.random.default_rng([seed, gt.id]))
    else:
        raise SceneError(f"unknown object shape {shape!r}; expected box, cylinder, sphere or urdf.")
    return _transform(local, pose)


def support_surface(scene: Scene, frame: Frame, *, spacing: float = 0.004, margin: float = 0.25) -> np.ndarray:
    """Samples of the support's boxes (table top, tray) near the objects, camera optical frame, float32[N, 3].

    Only the parts of each box face within ``margin`` metres (in world x and y) of the objects' bounding-box centres
    are kept; empty when the scene has no support.
    """
    if scene.support == "none":
        return np.zeros((0, 3), np.float32)
    cam_to_world = np.linalg.inv(frame.world_to_camera)
    centres = np.array([(cam_to_world @ np.r_[o.position, 1.0])[:3] for o in frame.objects]).reshape(-1, 3)
    if centres.size:
        lo, hi = centres[:, :2].min(axis=0) - margin, centres[:, :2].max(axis=0) + margin
    else:
        lo, hi = np.full(2, -margin), np.full(2, margin)
    out = []
    for boxes, _ in support_boxes(scene.support, False, np.random.default_rng(0)):  # geometry does not use the rng
        for half, centre in boxes:
            half, centre = np.asarray(half, np.float64), np.asarray(centre, np.float64)
            # clip the box to the region of interest before sampling (the table top is 1.2 x 0.8 m)
            b_lo = np.maximum(centre[:2] - half[:2], lo)
            b_hi = np.minimum(centre[:2] + half[:2], hi)
            if np.any(b_hi <= b_lo):
                continue
            c = centre.copy()
            c[:2] = (b_lo + b_hi) / 2
            h = np.r_[(b_hi - b_lo) / 2, half[2]]
            out.append(box_surface(h, spacing) + c)
    if not out:
        return np.zeros((0, 3), np.float32)
    return _transform(np.concatenate(out), frame.world_to_camera)


def scene_surfaces(
    scene: Scene, frame: Frame, *, spacing: float = 0.003, support_spacing: float = 0.004, seed: int = 0
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Every object's surface samples by object id, and the support's, in ``frame``'s camera optical frame.

    ``frame`` must have been rendered from ``scene`` (the objects are matched by id, in order).
    """
    if [o.id for o in scene.objects] != [o.id for o in frame.objects]:
        raise SceneError("frame was not rendered from this scene (its object ids differ).")
    objects = {gt.id: object_surface(gt, obj.shape, spacing=spacing, seed=seed)
               for obj, gt in zip(scene.objects, frame.objects, strict=True)}
    return objects, support_surface(scene, frame, spacing=support_spacing)
