"""A geometric check of parallel-jaw grasps against a scene whose object shapes are known (or seen).

Pure numpy (no ROS, no network). The gripper is the Franka Panda hand that Contact-GraspNet is trained for, as
boxes in the gripper frame of :class:`~instance_seg_ros.grasp.planner.Grasp` (z: approach, x: closing direction,
origin: the gripper base, ``GRIPPER_DEPTH`` behind the finger-contact midpoint). Sizes are read off cgn-pytorch's
``gripper/mesh/panda_gripper/{hand,finger}.stl`` placed as its ``PandaGripper`` places them (fingers at
``x = +-width / 2``, shifted ``GRIPPER_DEPTH / 2`` along z):

- two **fingers**: x from the inner face at ``+-width / 2`` outwards 14.3 mm, y +-10.5 mm, z 51.7..105.5 mm (the
  finger tips are 2.1 mm beyond the contact depth 103.4 mm);
- the **palm** (hand), two boxes: z -12..12 mm, x +-100 mm, y +-31.6 mm (the flange side) and z 12..66 mm,
  x +-100.4 mm, y +-22.7 mm; the arm behind it is not modelled;
- the **closing region**: the box between the fingers, x ``-width / 2 .. width / 2``, y +-5 mm (1 cm deep), from
  the finger tips 40 mm back along -z.

A grasp on object ``i`` is checked against a **labelled scene cloud**: points with a label each (``i`` = object ``i``,
anything else another object or the support). For a simulated scene these are samples of every object's whole
surface and of the table (:mod:`instance_seg_ros.sim.surface_points`); for a real frame the depth cloud with the
instance labels (visible surfaces only: a collision with a hidden side goes unseen).

- ``contains``: the closing region holds at least ``min_points`` points of object ``i``;
- ``collides``: a finger or the palm holds a point of anything else (another object, the table); every gripper box
  is shrunk by ``tolerance`` (2 mm) on each side first, so a finger resting on a surface does not count;
- ``hits_target``: a finger or the palm holds a point of object ``i`` itself, i.e. the gripper would run into the
  object it is meant to grasp (the opening too narrow for it, or the palm on it). Where only surface points are
  known, a gripper part lying wholly inside an object is not seen; the parts are joined (fingers overlap the palm),
  so a gripper that reaches into an object crosses its surface somewhere and that is seen.

``success`` is ``contains and not collides and not hits_target``.

Widths: :func:`opened` re-opens a grasp to another width, either about the same pose (what a robot does that moves
to the pose with the gripper fully open) or keeping the finger on the contact point (Contact-GraspNet's own
construction, ``origin = contact + width / 2 * x - GRIPPER_DEPTH * z``). :func:`width_needed` measures how wide the
target is along the closing line through the contact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .planner import GRIPPER_DEPTH, MAX_WIDTH, Grasp

__all__ = [
    "PANDA",
    "GraspCheck",
    "GripperModel",
    "check_grasp",
    "check_grasps",
    "gripper_boxes",
    "gripper_lines",
    "opened",
    "rates",
    "summarize_checks",
    "width_needed",
]

#: a box in the gripper frame: (centre float64[3], half extents float64[3])
Box = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class GripperModel:
    """A parallel-jaw gripper as boxes, metres, gripper frame (defaults: the Franka Panda hand, see the module)."""

    finger_thickness: float = 0.0143
    finger_half_width: float = 0.0105
    finger_z: tuple[float, float] = (GRIPPER_DEPTH / 2, GRIPPER_DEPTH / 2 + 0.0538)
    palm: tuple[tuple[tuple[float, float], float, float], ...] = (
        ((-0.012, 0.012), 0.1, 0.0316),
        ((0.012, 0.066), 0.1004, 0.0227),
    )  # per palm box: (z range, half x, half y)
    closing_half_depth: float = 0.005
    closing_length: float = 0.04
    max_width: float = MAX_WIDTH

    @property
    def tip_z(self) -> float:
        return self.finger_z[1]


PANDA = GripperModel()


def gripper_boxes(width: float, model: GripperModel = PANDA) -> dict[str, Box]:
    """The gripper's parts at opening ``width`` as boxes in the gripper frame.

    Returns:
        ``{"finger_left", "finger_right", "palm_0", "palm_1", ..., "closing"}`` (left: +x) -> (centre, half).
    """
    w = max(float(width), 0.0)
    z0, z1 = model.finger_z
    t, hy = model.finger_thickness, model.finger_half_width
    boxes: dict[str, Box] = {}
    for name, sign in (("finger_left", 1.0), ("finger_right", -1.0)):
        boxes[name] = (np.array([sign * (w / 2 + t / 2), 0.0, (z0 + z1) / 2]), np.array([t / 2, hy, (z1 - z0) / 2]))
    for k, ((pz0, pz1), hx, phy) in enumerate(model.palm):
        boxes[f"palm_{k}"] = (np.array([0.0, 0.0, (pz0 + pz1) / 2]), np.array([hx, phy, (pz1 - pz0) / 2]))
    boxes["closing"] = (np.array([0.0, 0.0, z1 - model.closing_length / 2]),
                        np.array([w / 2, model.closing_half_depth, model.closing_length / 2]))
    return boxes


def _in_box(local: np.ndarray, box: Box, shrink: float = 0.0) -> np.ndarray:
    centre, half = box
    h = np.maximum(half - shrink, 0.0)
    return np.all(np.abs(local - centre) <= h, axis=1) if np.all(h > 0) else np.zeros(len(local), dtype=bool)


def _to_gripper(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Points (optical frame) in the gripper frame of ``pose`` (gripper -> optical)."""
    r, t = pose[:3, :3], pose[:3, 3]
    return (np.asarray(points, dtype=np.float64) - t) @ r


@dataclass(frozen=True)
class GraspCheck:
    """The geometric verdict on one grasp (see the module docstring for the definitions)."""

    contains: bool
    collides: bool
    hits_target: bool
    #: target points in the closing region
    closing_points: int
    #: points of anything else inside the (shrunk) gripper parts
    obstacle_points: int
    #: target points inside the (shrunk) gripper parts
    target_points: int
    width: float
    score: float = float("nan")

    @property
    def success(self) -> bool:
        return self.contains and not self.collides and not self.hits_target

    def as_dict(self) -> dict:
        return {**asdict(self), "success": self.success}


def check_grasp(
    pose: np.ndarray,
    width: float,
    points: np.ndarray,
    labels: np.ndarray,
    target: int,
    *,
    obstacle: np.ndarray | None = None,
    model: GripperModel = PANDA,
    min_points: int = 3,
    tolerance: float = 0.002,
    score: float = float("nan"),
) -> GraspCheck:
    """Check one grasp (``pose`` gripper -> optical frame, opening ``width``) on object ``target``.

    Args:
        pose (np.ndarray[4, 4]): gripper frame -> the cloud's frame.
        width: opening, metres (negative counts as 0).
        points (np.ndarray[N, 3]): the labelled scene cloud, metres.
        labels (np.ndarray[N] int): each point's object label; ``target``'s points are the object.
        target: the label of the object grasped.
        obstacle (np.ndarray[N] bool | None): which non-target points count as obstacles (default: all of them;
            pass ``labels > 0`` to ignore unlabelled points such as the table of a real frame).
        min_points: target points the closing region must hold for ``contains``.
        tolerance: metres each gripper box is shrunk by on every side for ``collides`` / ``hits_target``.
    """
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
        raise ValueError(f"pose must be a finite 4x4 matrix, got shape {pose.shape}.")
    points = np.asarray(points)
    labels = np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 3 or labels.shape != (points.shape[0],):
        raise ValueError(f"points must be [N, 3] with labels [N], got {points.shape} and {labels.shape}.")
    boxes = gripper_boxes(width, model)
    # only points near the gripper matter: a cheap cut on the distance to the gripper's middle first
    reach = float(np.linalg.norm([max(b[0][k] + b[1][k] for b in boxes.values()) for k in range(3)])) + 0.01
    near = np.flatnonzero(np.sum((points - pose[:3, 3]) ** 2, axis=1) <= reach**2)
    local = _to_gripper(points[near], pose)
    lab = labels[near]
    is_target = lab == target
    other = ~is_target if obstacle is None else (~is_target & np.asarray(obstacle, dtype=bool)[near])
    body = np.zeros(len(near), dtype=bool)
    for name, box in boxes.items():
        if name != "closing":
            body |= _in_box(local, box, tolerance)
    closing = int(np.count_nonzero(_in_box(local, boxes["closing"]) & is_target)) if width > 0 else 0
    hit_other = int(np.count_nonzero(body & other))
    hit_target = int(np.count_nonzero(body & is_target))
    return GraspCheck(contains=closing >= min_points, collides=hit_other > 0, hits_target=hit_target > 0,
                      closing_points=closing, obstacle_points=hit_other, target_points=hit_target,
                      width=float(width), score=float(score))


def opened(grasp: Grasp, width: float, *, keep: str = "pose") -> tuple[np.ndarray, float]:
    """``(pose, width)`` of ``grasp`` re-opened to ``width``.

    Args:
        keep: ``"pose"``: the same pose, fingers symmetric about it (a robot moving to the pose with the gripper
            open); ``"contact"``: one finger stays on the contact point and the pose moves half the change along x
            (Contact-GraspNet's construction with the new width).
    """
    if keep == "pose":
        return grasp.pose.copy(), float(width)
    if keep == "contact":
        pose = grasp.pose.copy()
        pose[:3, 3] = grasp.contact + width / 2 * pose[:3, 0] - GRIPPER_DEPTH * pose[:3, 2]
        return pose, float(width)
    raise ValueError(f"keep must be 'pose' or 'contact', got {keep!r}.")


def width_needed(grasp: Grasp, target_points: np.ndarray, *, radius: float = 0.004) -> tuple[float, float]:
    """How far the target reaches along the closing line through the contact: ``(t_min, t_max)`` metres.

    ``t`` is the position along the grasp's x axis from the contact (+x: towards where the other finger closes) of
    the target points within ``radius`` of that line; NaN when none is. ``t_max - t_min`` is the opening the target
    needs there; an object lying on the -x side (``-t_min > t_max``) means the closing direction points away from
    it.
    """
    x = grasp.pose[:3, 0]
    d = np.asarray(target_points, dtype=np.float64) - grasp.contact
    t = d @ x
    off = np.linalg.norm(d - t[:, None] * x, axis=1)
    t = t[off <= radius]
    if t.size == 0:
        return float("nan"), float("nan")
    return float(t.min()), float(t.max())


def check_grasps(
    grasps: Mapping[int, Sequence[Grasp]],
    points: np.ndarray,
    labels: np.ndarray,
    *,
    targets: Mapping[int, int] | None = None,
    width: float | None = None,
    keep: str = "pose",
    **kwargs,
) -> dict[int, list[GraspCheck]]:
    """Check every grasp of every instance.

    Args:
        grasps: ``{instance index: [Grasp, ...]}`` as :meth:`ContactGraspNet.plan` returns.
        points, labels: the labelled scene cloud (see :func:`check_grasp`).
        targets: the cloud label of each instance's object (default: the instance index itself).
        width: re-open every grasp to this width first (:func:`opened` with ``keep``); None: as predicted.
        **kwargs: passed to :func:`check_grasp` (``obstacle``, ``model``, ``min_points``, ``tolerance``).

    Returns:
        ``{instance index: [GraspCheck, ...]}`` in the grasps' order.
    """
    out: dict[int, list[GraspCheck]] = {}
    for index, gs in grasps.items():
        target = index if targets is None else targets.get(index, -1)
        checks = []
        for g in gs:
            pose, w = (g.pose, g.width) if width is None else opened(g, width, keep=keep)
            checks.append(check_grasp(pose, w, points, labels, target, score=g.score, **kwargs))
        out[index] = checks
    return out


def rates(checks: Sequence[GraspCheck]) -> dict[str, float | int | None]:
    """``grasps`` (how many) and the fractions of them that ``contains``, ``collides``, ``hits_target``,
    ``contains`` without ``collides`` (the target not checked: ``contains_no_collision``) and ``success`` (None when
    there are none)."""
    n = len(checks)

    def frac(v: list[bool]) -> float | None:
        return float(np.mean(v)) if n else None

    return {
        "grasps": n,
        "contains": frac([c.contains for c in checks]),
        "collides": frac([c.collides for c in checks]),
        "hits_target": frac([c.hits_target for c in checks]),
        "contains_no_collision": frac([c.contains and not c.collides for c in checks]),
        "success": frac([c.success for c in checks]),
    }


def summarize_checks(checks: Mapping[Any, Sequence[GraspCheck]], *, top_k: Sequence[int] = (1, 5)) -> dict:
    """Rates over instances: for each ``k`` in ``top_k`` the fractions of the top-``k`` grasps (best first, pooled
    over the instances that have any) that ``contains``, ``collides``, ``hits_target``, ``contains`` without
    ``collides`` (the target not checked), and ``success``; plus per instance its grasp count and whether its best
    grasp succeeds and any of its grasps does."""
    with_grasps = {i: list(c) for i, c in checks.items() if len(c)}
    out: dict = {"instances": len(checks), "instances_with_grasps": len(with_grasps)}
    for k in top_k:
        out[f"top{k}"] = rates([c for cs in with_grasps.values() for c in cs[:k]])
    out["per_instance"] = {
        i: {"grasps": len(cs), "best_success": bool(cs[0].success) if cs else False,
                 "any_success": any(c.success for c in cs)}
        for i, cs in checks.items()
    }
    return out


def gripper_lines(pose: np.ndarray, width: float, model: GripperModel = PANDA) -> np.ndarray:
    """The gripper as line segments for drawing, optical frame: float64[4, 2, 3] (the stem from the base to the
    palm, the bar across the palm, the two fingers to their tips)."""
    w = max(float(width), 0.0) / 2
    palm_z = model.palm[-1][0][1]
    seg = np.array([
        [[0, 0, 0], [0, 0, palm_z]],
        [[-w, 0, palm_z], [w, 0, palm_z]],
        [[-w, 0, palm_z], [-w, 0, model.tip_z]],
        [[w, 0, palm_z], [w, 0, model.tip_z]],
    ], dtype=np.float64)
    return seg @ pose[:3, :3].T + pose[:3, 3]
