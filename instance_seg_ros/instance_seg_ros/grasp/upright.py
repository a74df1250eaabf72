"""Contact-GraspNet on a gravity-aligned cloud: a measured alternative to the planner's optical-frame input.

:class:`~instance_seg_ros.grasp.planner.ContactGraspNet` feeds the network the scene cloud in the camera optical
frame. cgn-pytorch's own training set (``cgn_pytorch/dataset.py``, ``ContactDataset.__getitem__``) does otherwise:
the rendered cloud is rotated 180 degrees about x (OpenCV -> OpenGL) and moved by the camera pose into the **world
frame of the scene, z up**, then the scene mean is subtracted (``init_pc - mean``); the grasp labels are moved the
same way (``train.py`` subtracts the mean from ``grasp_poses`` and ``contact_pts``). Fed optical-frame clouds of a
table seen from above, the network's approach axis points up, out of the table (``isr grasps``: the gripper base
ends below the table top and nearly every grasp collides); fed the same cloud turned so that z is up and centred,
it approaches from above.

:func:`plan_upright` runs the planner's steps (scene cloud, local region per instance, the network, contacts on the
instance) on the cloud expressed in an **upright frame**: z along ``up`` (the support plane's normal towards the
camera, :class:`~instance_seg_ros.core.support_plane.SupportPlane`, or gravity from TF), x the camera's x made
perpendicular to it, origin the scene cloud's mean; the grasps come back in the optical frame, in the planner's
:class:`~instance_seg_ros.grasp.planner.Grasp` convention.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..core.types import Intrinsics
from .planner import ContactGraspNet, Grasp, GraspError, local_region, scene_points

__all__ = ["plan_upright", "upright_transform"]


def upright_transform(up: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The optical -> upright transform, float64[4, 4]: z along ``up``, x the optical x made perpendicular to it
    (the optical y when x is nearly parallel to ``up``), origin at ``centre`` (optical frame, metres)."""
    z = np.asarray(up, dtype=np.float64).reshape(3)
    n = np.linalg.norm(z)
    if not np.isfinite(n) or n < 1e-9:
        raise GraspError(f"up must be a finite nonzero 3-vector, got {up!r}.")
    z = z / n
    ref = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = ref - (ref @ z) * z
    x /= np.linalg.norm(x)
    rot = np.stack([x, np.cross(z, x), z])  # rows: the upright axes in optical coordinates
    t = np.eye(4)
    t[:3, :3] = rot
    t[:3, 3] = -rot @ np.asarray(centre, dtype=np.float64).reshape(3)
    return t


def plan_upright(
    planner: ContactGraspNet,
    depth: np.ndarray,
    K: Intrinsics,
    label_image: np.ndarray,
    up: np.ndarray,
    indices: list[int] | None = None,
    *,
    max_grasps: int = 20,
    score_threshold: float = 0.5,
) -> dict[int, list[Grasp]]:
    """:meth:`ContactGraspNet.plan` with the network's input in the upright frame of ``up``.

    Args:
        planner: a built planner (its network, depth range, point counts and seed are used).
        depth, K, label_image, indices, max_grasps, score_threshold: as :meth:`ContactGraspNet.plan`.
        up (np.ndarray[3]): the upward direction in the optical frame (e.g. the support plane's normal).

    Returns:
        ``{index: [Grasp, ...]}``, poses and contacts in the optical frame.
    """
    if not (isinstance(max_grasps, int | np.integer) and max_grasps >= 1):
        raise GraspError(f"max_grasps must be a positive integer, got {max_grasps!r}.")
    if not (isinstance(score_threshold, int | float | np.floating) and 0.0 <= score_threshold <= 1.0):
        raise GraspError(f"score_threshold must be in [0, 1], got {score_threshold!r}.")
    points, labels = scene_points(depth, K, label_image, z_range=planner.z_range,
                                  flying_pixel_threshold=planner.flying_pixel_threshold)
    wanted = [int(i) for i in np.unique(label_image) if i != 0] if indices is None else [int(i) for i in indices]
    if any(i < 1 for i in wanted):
        raise GraspError(f"instance indices are >= 1 (0 is background), got {wanted}.")
    if points.shape[0] == 0:
        return {i: [] for i in wanted}
    to_up = upright_transform(up, points.mean(axis=0))
    back = np.linalg.inv(to_up)
    pts = (points @ to_up[:3, :3].T + to_up[:3, 3]).astype(np.float32)
    out: dict[int, list[Grasp]] = {}
    for index in wanted:
        on = labels == index
        if not on.any():
            out[index] = []
            continue
        region = np.flatnonzero(local_region(pts, pts[on]))
        grasps = planner._region_grasps(pts, labels, region, index, int(max_grasps), float(score_threshold))
        out[index] = [dataclasses.replace(g, pose=back @ g.pose, contact=back[:3, :3] @ g.contact + back[:3, 3])
                      for g in grasps]
    return out
