"""Contact-GraspNet on a gravity-aligned cloud: why the planner's default input is upright, not the optical frame.

:class:`~instance_seg_ros.grasp.planner.ContactGraspNet` first fed the network the scene cloud in the camera optical
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

import numpy as np

from ..core.types import Intrinsics
from .planner import ContactGraspNet, Grasp, upright_transform

__all__ = ["plan_upright", "upright_transform"]


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
    """:meth:`ContactGraspNet.plan` with the network's input in the upright frame of a given ``up`` (the planner's
    default since it was measured; kept for the tools that name the frame)."""
    return planner.plan(depth, K, label_image, indices, max_grasps=max_grasps, score_threshold=score_threshold,
                        up=up, input_frame="upright")
