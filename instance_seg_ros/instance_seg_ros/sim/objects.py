"""What a scene is made of: its support (a table, or a tray on a table), object descriptions (:class:`ObjectSpec`),
the objects living in a scene (:class:`SceneObject`) and the ``pybullet_data/random_urdfs`` meshes (where they are,
how big they are). The world is z-up; the table top is at ``TABLE_TOP_Z``.

An object's *pose* is the pose of the centre of its own bounding box (the box of its mesh or primitive in its
body frame) and its ``extent`` is that box's edge lengths, so pose + extent is the object's oriented 3D bounding box.
"""

from __future__ import annotations

import functools
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pybullet_data

from .errors import SceneError

__all__ = [
    "DATA_DIR",
    "NUM_RANDOM_URDFS",
    "PRIMITIVES",
    "SUPPORTS",
    "TABLE_SIZE",
    "TABLE_TOP_Z",
    "TEXTURES",
    "TRAY_INNER",
    "ObjectSpec",
    "SceneObject",
    "num_random_urdfs",
    "support_boxes",
    "support_top_z",
    "urdf_local_box",
    "urdf_path",
    "urdf_usable",
]

PRIMITIVES = ("box", "cylinder", "sphere")
SUPPORTS = ("none", "table", "tray")
TABLE_TOP_Z = 0.625  # world z of the table top (meters)
TABLE_SIZE = (1.2, 0.8)  # table top, meters (x, y)
TRAY_INNER = (0.46, 0.36)  # tray floor inside its walls, meters (x, y)
_TRAY_FLOOR_Z = TABLE_TOP_Z + 0.01
DATA_DIR = Path(pybullet_data.getDataPath())
NUM_RANDOM_URDFS = 1000  # pybullet_data ships random_urdfs/000 .. 999
# textures for primitives; off by default (SceneConfig.texture_probability): TinyRenderer's texture sampling is not
# bit-for-bit repeatable (a few pixels change by 1 between identical renders), everything else is
TEXTURES = ("checker_blue.png", "tex256.png", "uvmap.png", "cube.png", "checker_grid.jpg")


# ---------------------------------------------------------------------------------------- supports
#: ``(half_extents, centre)`` of one box, meters, world frame
Box = tuple[tuple[float, float, float], tuple[float, float, float]]


def support_boxes(kind: str, floor: bool, rng: np.random.Generator) -> list[tuple[list[Box], tuple[float, ...]]]:
    """The static bodies of a support ``table`` or ``tray`` (and of a floor): per body its boxes and its RGBA, with
    random plain colors drawn from ``rng``.

    Plain colored boxes: PyBullet's textured table / tray / plane meshes render ~3x slower in TinyRenderer and
    its texture sampling changes the color of a few pixels by 1 from one render to the next.
    """
    tone = rng.uniform(0.35, 0.85)
    table_rgba = (*(tone * np.array(rng.choice([(1.0, 0.8, 0.6), (1.0, 1.0, 1.0), (0.9, 0.9, 1.0)]))), 1.0)
    hx, hy = TABLE_SIZE[0] / 2, TABLE_SIZE[1] / 2
    bodies = [([((hx, hy, 0.02), (0, 0, TABLE_TOP_Z - 0.02))], table_rgba)]
    if floor:
        bodies.append(([((3.0, 3.0, 0.01), (0, 0, -0.01))], (*rng.uniform(0.2, 0.5, size=3), 1.0)))
    if kind == "tray":
        ix, iy, t, wall = TRAY_INNER[0] / 2, TRAY_INNER[1] / 2, 0.005, 0.06
        z = TABLE_TOP_Z
        boxes = [
            ((ix + 2 * t, iy + 2 * t, t), (0, 0, z + t)),
            ((t, iy + 2 * t, wall / 2), (ix + t, 0, z + wall / 2)),
            ((t, iy + 2 * t, wall / 2), (-ix - t, 0, z + wall / 2)),
            ((ix, t, wall / 2), (0, iy + t, z + wall / 2)),
            ((ix, t, wall / 2), (0, -iy - t, z + wall / 2)),
        ]
        bodies.append((boxes, (*rng.uniform(0.1, 0.6, size=3), 1.0)))
    return bodies


def support_top_z(kind: str) -> float:
    """Height of the surface objects rest on (world z, meters) on support ``kind``; 0 without support."""
    return {"none": 0.0, "table": TABLE_TOP_Z, "tray": _TRAY_FLOOR_Z}[kind]


# ---------------------------------------------------------------------------------------- random_urdfs
def num_random_urdfs() -> int:
    """How many ``random_urdfs/NNN/NNN.urdf`` pybullet_data ships (1000)."""
    return sum(1 for _ in (DATA_DIR / "random_urdfs").glob("[0-9][0-9][0-9]"))


def urdf_path(index: int) -> Path:
    """The file ``random_urdfs/NNN/NNN.urdf`` of mesh ``index``; SceneError when pybullet_data has no such mesh."""
    p = DATA_DIR / "random_urdfs" / f"{index:03d}" / f"{index:03d}.urdf"
    if not p.is_file():
        raise SceneError(f"random_urdfs index {index} does not exist; use 0..{num_random_urdfs() - 1}.")
    return p


def _rpy_matrix(rpy: Sequence[float]) -> np.ndarray:
    r, p, y = rpy
    rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
    ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
    rz = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
    return rz @ ry @ rx


def urdf_visual_meshes(path: str) -> Iterator[tuple[Path, np.ndarray, np.ndarray, np.ndarray]]:
    """Each visual mesh of a single-link URDF: ``(mesh file, scale[3], origin xyz[3], rotation[3, 3])`` in the link
    frame (visuals without a mesh are skipped)."""
    root = ET.parse(path).getroot()
    for vis in root.iter("visual"):
        mesh = vis.find("geometry/mesh")
        if mesh is None:
            continue
        scale = np.array([float(s) for s in mesh.get("scale", "1 1 1").split()])
        origin = vis.find("origin")
        xyz = np.array([float(s) for s in (origin.get("xyz", "0 0 0") if origin is not None else "0 0 0").split()])
        rpy = [float(s) for s in (origin.get("rpy", "0 0 0") if origin is not None else "0 0 0").split()]
        yield Path(path).parent / mesh.get("filename"), scale, xyz, _rpy_matrix(rpy)


@functools.lru_cache(maxsize=2048)
def urdf_local_box(path: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(centre, size)`` of the visual meshes of a single-link URDF, in the link frame, at scale 1."""
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for mesh_file, scale, xyz, rot in urdf_visual_meshes(path):
        verts = []
        with open(mesh_file, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("v "):
                    verts.append(line.split()[1:4])
        v = np.asarray(verts, dtype=np.float64).reshape(-1, 3) * scale
        v = v[np.isfinite(v).all(axis=1)]  # some shipped meshes are broken (random_urdfs/168: all NaN)
        if v.shape[0] == 0:
            continue
        v = v @ rot.T + xyz
        lo, hi = np.minimum(lo, v.min(axis=0)), np.maximum(hi, v.max(axis=0))
    if not np.all(np.isfinite(lo)):
        raise SceneError(f"{path} has no visual mesh to measure.")
    return tuple((lo + hi) / 2), tuple(hi - lo)


def urdf_usable(index: int) -> bool:
    """False for the few pybullet_data meshes that cannot be measured (no finite vertices)."""
    try:
        urdf_local_box(str(DATA_DIR / "random_urdfs" / f"{index:03d}" / f"{index:03d}.urdf"))
    except SceneError:
        return False
    return True

# ---------------------------------------------------------------------------------------- descriptions
@dataclass(frozen=True)
class ObjectSpec:
    """One object to place in a scene.

    Attributes:
        shape: ``box``, ``cylinder``, ``sphere`` or ``urdf`` (a ``pybullet_data/random_urdfs`` mesh).
        size: box: edge lengths ``(x, y, z)``; cylinder: ``(radius, length)`` (axis along its z);
            sphere: ``(radius,)``; urdf: ignored (use ``scale``). Meters.
        position: centre of the object's bounding box, meters, world frame (or the camera frame when
            handed to :meth:`Scene.from_spec` with a camera).
        orientation: quaternion ``(x, y, z, w)`` of the object in the same frame.
        color: RGBA in 0..1; None = a neutral grey (urdf: the mesh's own color).
        urdf_index: which ``random_urdfs/NNN/NNN.urdf`` (shape ``urdf``), 0..999.
        scale: global scale of a urdf mesh.
        texture: a texture image file name in pybullet_data (e.g. ``checker_blue.png``) or a path; primitives only.
        name: category name; default ``box`` / ``cylinder`` / ``sphere`` / ``random_urdf_NNN``.
        mass: kg; 0 makes the object static. None = from a density of 400 kg/m^3 (urdf: its own mass).
    """

    shape: str
    size: tuple[float, ...] = (0.05, 0.05, 0.05)
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    color: tuple[float, float, float, float] | None = None
    urdf_index: int = 0
    scale: float = 1.0
    texture: str | None = None
    name: str | None = None
    mass: float | None = None

    def __post_init__(self) -> None:
        if self.shape not in (*PRIMITIVES, "urdf"):
            raise SceneError(f"ObjectSpec.shape must be one of box, cylinder, sphere, urdf; got {self.shape!r}.")
        need = {"box": 3, "cylinder": 2, "sphere": 1}.get(self.shape)
        if need is not None:
            if len(self.size) != need or not all(math.isfinite(s) and s > 0 for s in self.size):
                raise SceneError(
                    f"A {self.shape} needs size with {need} positive number(s) in meters, got {self.size!r}."
                )
        if len(self.position) != 3 or not all(math.isfinite(v) for v in self.position):
            raise SceneError(f"ObjectSpec.position must be 3 finite numbers, got {self.position!r}.")
        q = np.asarray(self.orientation, dtype=np.float64)
        if q.shape != (4,) or not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-9:
            raise SceneError(f"ObjectSpec.orientation must be a nonzero quaternion (x, y, z, w), got {q.tolist()}.")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise SceneError(f"ObjectSpec.scale must be positive, got {self.scale!r}.")
        if self.color is not None and len(self.color) != 4:
            raise SceneError(f"ObjectSpec.color must be RGBA (4 numbers in 0..1), got {self.color!r}.")
        if self.mass is not None and not (self.mass >= 0):
            raise SceneError(f"ObjectSpec.mass must be >= 0 (0 = static), got {self.mass!r}.")

    @property
    def category(self) -> str:
        if self.name:
            return self.name
        return f"random_urdf_{self.urdf_index:03d}" if self.shape == "urdf" else self.shape


@dataclass
class SceneObject:
    """An object living in a :class:`Scene` (what stays the same across frames)."""

    id: int
    body: int
    name: str
    shape: str
    extent: np.ndarray  # float64[3]
    center_in_com: np.ndarray  # float64[4, 4]: bounding-box centre in the body's centre-of-mass frame
    rgba: tuple[float, float, float, float]
