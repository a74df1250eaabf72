"""What ``grasp_node`` does with one synchronized (instances, instance_labels, depth, camera_info) set before and
after the planner, as plain functions of messages (tested without a node or middleware).

- :func:`decode_grasp_inputs`: the four messages to :class:`GraspInputs` (depth in metres, intrinsics, label image,
  instance indices and their track ids), or :class:`~.frame_inputs.FrameRejected` with the reason the node counts
  in /diagnostics (``bad_instances``, ``bad_label_image``, ``bad_depth``, ``bad_camera_info``, ``size_mismatch``,
  ``empty_label_image``, ``label_mismatch``).
- :func:`select_indices`: which instances to plan for (``select`` / ``ids`` parameters).
- :func:`grasp_array_msg`, :func:`grasp_msg`, :func:`pose_msg`: the planner's grasps as instance_seg_msgs/GraspArray.
- :func:`grasp_markers_msg`: a GraspArray as RViz line drawings of the Panda gripper
  (:func:`~instance_seg_ros.grasp.quality.gripper_lines`, the gripper model the grasp checks use).

Label image and instances (instance_seg_node's ``instance_labels`` and ``instances`` of one frame): label value
``i`` is the instance whose ``index`` is ``i``. A label value no instance has, or instances none of which appear in
the label image, means the two do not belong together: the set is refused. An instance with no pixel of its own
(a mask fully covered by a higher-scored one) is legitimate and just gets no grasps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from instance_seg_msgs.msg import Grasp as GraspMsg
from instance_seg_msgs.msg import GraspArray

from ..core.geometry import matrix_to_quaternion
from ..core.images import labels_from_msg
from ..core.types import FrameError, Intrinsics
from ..grasp.quality import gripper_lines
from .frame_inputs import FrameRejected, decode_depth_and_info

__all__ = [
    "SELECT_MODES",
    "GraspInputs",
    "decode_grasp_inputs",
    "grasp_array_msg",
    "grasp_markers_msg",
    "grasp_msg",
    "pose_msg",
    "score_color",
    "select_indices",
]

#: ``select`` parameter: plan for every instance, or for those whose ``index`` / ``track_id`` is in ``ids``
SELECT_MODES = ("all", "index", "track_id")


@dataclass(frozen=True)
class GraspInputs:
    """The planner's inputs of one synchronized set.

    Attributes:
        depth (np.ndarray[H, W] float32): metres, NaN invalid.
        K: intrinsics of the (color) image the depth is registered to.
        labels (np.ndarray[H, W] uint16 | int32): 0 background, ``i`` = instance index ``i``.
        indices (tuple[int, ...]): every instance's index, in the InstanceArray's order (best score first).
        track_ids (dict[int, int]): index -> the instance's track id (0 when not tracked).
        without_pixels (tuple[int, ...]): indices that have no pixel in ``labels`` (they get no grasps).
    """

    depth: np.ndarray
    K: Intrinsics
    labels: np.ndarray
    indices: tuple[int, ...]
    track_ids: dict[int, int]
    without_pixels: tuple[int, ...] = ()


def _size(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]}"


def _present_labels(labels: np.ndarray) -> set[int]:
    """The non-zero values of a label image."""
    if labels.dtype == np.uint16:  # bincount: ~10x faster than np.unique on a 640x480 image
        counts = np.bincount(labels.ravel())
        return {int(i) for i in np.flatnonzero(counts) if i}
    return {int(i) for i in np.unique(labels) if i}


def _ids(values: Sequence[int]) -> str:
    values = sorted(values)
    return ", ".join(map(str, values[:10])) + (f" ... ({len(values)} in all)" if len(values) > 10 else "")


def decode_grasp_inputs(
    instances_msg: Any, labels_msg: Any, depth_msg: Any, info_msg: Any, *, scale_16uc1: float = 0.001,
    max_width: int = 4096, max_height: int = 4096,
) -> GraspInputs:
    """The planner's inputs of a synchronized (InstanceArray, label Image, depth Image, CameraInfo) set.

    Args:
        scale_16uc1: metres per unit of a 16UC1 depth image.
        max_width, max_height: larger images are refused as absurd.

    Raises:
        FrameRejected: with ``reason`` ``bad_instances`` (an index < 1 or repeated), ``bad_label_image``,
            ``bad_depth``, ``bad_camera_info`` (undecodable, e.g. a wrong encoding, or NaN intrinsics),
            ``size_mismatch`` (label image, depth, camera_info and the InstanceArray's size differ),
            ``empty_label_image`` (instances but no labelled pixel) or ``label_mismatch`` (label values that no
            instance has).
    """
    indices = tuple(int(m.index) for m in instances_msg.instances)
    if any(i < 1 for i in indices) or len(set(indices)) != len(indices):
        raise FrameRejected("bad_instances", f"instance indices must be distinct and >= 1 (their label values), got "
                                             f"{_ids(indices)}.")
    track_ids = {int(m.index): int(m.track_id) for m in instances_msg.instances}
    limits = {"max_width": max_width, "max_height": max_height}
    try:
        labels = labels_from_msg(labels_msg, **limits)
    except FrameError as exc:
        raise FrameRejected("bad_label_image", str(exc)) from exc
    depth, K = decode_depth_and_info(depth_msg, info_msg, scale_16uc1=scale_16uc1, **limits)
    h, w = int(instances_msg.height), int(instances_msg.width)
    if labels.shape != depth.shape or depth.shape != (K.height, K.width) or (h and w and (h, w) != labels.shape):
        raise FrameRejected("size_mismatch", (
            f"label image {_size(labels)}, depth {_size(depth)}, camera_info {K.width}x{K.height} and instances "
            f"{w}x{h} must all be one size; depth must be registered to the color image instance_seg_node segmented "
            "(the same depth and camera_info topics it subscribes to)."))
    present = _present_labels(labels)
    extra = present - set(indices)
    if extra:
        raise FrameRejected("label_mismatch", (
            f"the label image holds instance indices {_ids(extra)} that 'instances' does not list "
            f"({_ids(indices) or 'none'}): the two belong to different frames or results."))
    if indices and not present:
        raise FrameRejected("empty_label_image", (
            f"'instances' lists {len(indices)} instance(s) but the label image has no instance pixel (all 0): the two "
            "belong to different frames or results."))
    without = tuple(i for i in indices if i not in present)
    return GraspInputs(depth=depth, K=K, labels=labels, indices=indices, track_ids=track_ids, without_pixels=without)


def select_indices(inputs: GraspInputs, select: str, ids: Sequence[int]) -> list[int]:
    """The instances to plan for, in the InstanceArray's order: all (``select`` = ``all``), or those whose index
    (``index``) or non-zero track id (``track_id``) is in ``ids``; instances without pixels are left out.

    Raises:
        ValueError: ``select`` is not one of :data:`SELECT_MODES`.
    """
    if select not in SELECT_MODES:
        raise ValueError(f"select must be one of {', '.join(SELECT_MODES)}, got {select!r}.")
    wanted = {int(i) for i in ids}
    skip = set(inputs.without_pixels)
    out = []
    for index in inputs.indices:
        if index in skip:
            continue
        if select == "all" or (select == "index" and index in wanted) or (
                select == "track_id" and inputs.track_ids.get(index, 0) != 0 and inputs.track_ids[index] in wanted):
            out.append(index)
    return out


# ---------------------------------------------------------------------------------------- messages
def _point(v: Any) -> Point:
    return Point(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def pose_msg(T: np.ndarray) -> Pose:
    """geometry_msgs/Pose of a rigid transform np.ndarray[4, 4] (child -> parent): position and unit quaternion."""
    T = np.asarray(T, dtype=np.float64)
    q = matrix_to_quaternion(T[:3, :3])
    return Pose(position=_point(T[:3, 3]),
                orientation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))


def grasp_msg(grasp: Any, index: int, track_id: int = 0) -> GraspMsg:
    """instance_seg_msgs/Grasp of a :class:`~instance_seg_ros.grasp.Grasp` on instance ``index``."""
    return GraspMsg(instance_index=int(index), track_id=int(track_id), score=float(grasp.score),
                    width=float(grasp.width), pose=pose_msg(grasp.pose), contact=_point(grasp.contact))


def grasp_array_msg(grasps: Mapping[int, Sequence[Any]], order: Sequence[int], track_ids: Mapping[int, int],
                    hdr: Any, planning_ms: float = 0.0) -> GraspArray:
    """The node's ``grasps`` output: every grasp of ``grasps[index]`` for each index of ``order`` (best first as the
    planner returns them), each carrying its instance's track id; ``hdr`` is the input frame's header."""
    out = GraspArray(header=hdr, planning_ms=float(planning_ms))
    out.grasps = [grasp_msg(g, index, track_ids.get(index, 0)) for index in order for g in grasps.get(index, ())]
    return out


def score_color(score: float) -> tuple[float, float, float]:
    """``(r, g, b)`` in 0..1 of a grasp score (0..1, clipped; NaN as 0): red at 0, yellow at 0.5, green at 1."""
    s = min(max(float(score), 0.0), 1.0) if np.isfinite(score) else 0.0
    return min(1.0, 2.0 * (1.0 - s)), min(1.0, 2.0 * s), 0.0


def grasp_markers_msg(grasps: GraspArray, *, ns: str = "grasps", line_width: float = 0.002,
                      alpha: float = 1.0) -> MarkerArray:
    """RViz markers of a GraspArray, in its header's frame: a DELETEALL marker (the previous frame's grasps vanish),
    then one LINE_LIST per grasp (id = its position in ``grasps.grasps``, pose = the grasp's pose, points in the
    gripper frame): the Panda gripper's stem, palm bar and two fingers ``width`` apart
    (:func:`~instance_seg_ros.grasp.quality.gripper_lines`), colored by :func:`score_color`."""
    out = MarkerArray()
    out.markers.append(Marker(header=grasps.header, ns=ns, id=0, action=Marker.DELETEALL))
    identity = np.eye(4)
    for k, g in enumerate(grasps.grasps):
        r, gr, b = score_color(g.score)
        points = [_point(p) for p in gripper_lines(identity, g.width).reshape(-1, 3)]
        out.markers.append(Marker(header=grasps.header, ns=ns, id=k, type=Marker.LINE_LIST, action=Marker.ADD,
                                  pose=g.pose, scale=Vector3(x=float(line_width)), points=points,
                                  color=ColorRGBA(r=r, g=gr, b=b, a=float(alpha))))
    return out
