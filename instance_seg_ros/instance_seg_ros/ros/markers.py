"""RViz markers of one frame's instances: oriented boxes, centroids and text labels.

The array always starts with a DELETEALL marker, so markers of instances that are gone vanish.
Instances without 3D points (no valid depth) get no markers.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ..core.types import FrameResult, InstanceResult
from ..core.visualize import display_color, instance_label

__all__ = ["markers_msg"]

_MIN_SIZE = 0.002  # meters: RViz hides zero-thickness cubes


def _color(inst: InstanceResult, alpha: float) -> ColorRGBA:
    r, g, b = display_color(inst)
    return ColorRGBA(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=float(alpha))


def _point(v) -> Point:
    return Point(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def markers_msg(
    result: FrameResult,
    hdr: Header,
    *,
    ns: str = "instances",
    box_alpha: float = 0.35,
    centroid_diameter: float = 0.015,
    text_height: float = 0.025,
    lifetime_s: float = 0.0,
) -> MarkerArray:
    """MarkerArray of ``result`` in ``hdr.frame_id``.

    Per instance ``i`` with points: a CUBE (id ``3i``, ``box_pose``/``box_size``), a SPHERE at the
    centroid (id ``3i+1``) and a TEXT_VIEW_FACING label above the box (id ``3i+2``), all in namespace
    ``ns`` and the instance's overlay color (its track's when tracked). ``lifetime_s`` 0 keeps them until the next
    DELETEALL.
    """
    out = MarkerArray()
    clear = Marker(header=hdr, ns=ns, id=0, action=Marker.DELETEALL)
    out.markers.append(clear)
    life = Duration(sec=int(lifetime_s), nanosec=int((lifetime_s % 1.0) * 1e9))
    for inst in result.instances:
        if inst.num_points == 0:
            continue
        i = int(inst.index)
        q = np.asarray(inst.box_quat, dtype=np.float64)
        size = np.maximum(np.asarray(inst.box_size, dtype=np.float64), _MIN_SIZE)
        pose = Pose(position=_point(inst.box_center),
                    orientation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))
        box = Marker(header=hdr, ns=ns, id=3 * i, type=Marker.CUBE, action=Marker.ADD, pose=pose,
                     scale=Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])),
                     color=_color(inst, box_alpha), lifetime=life)
        dot = Marker(header=hdr, ns=ns, id=3 * i + 1, type=Marker.SPHERE, action=Marker.ADD,
                     pose=Pose(position=_point(inst.centroid), orientation=Quaternion(w=1.0)),
                     scale=Vector3(x=centroid_diameter, y=centroid_diameter, z=centroid_diameter),
                     color=_color(inst, 1.0), lifetime=life)
        # optical frame: -y is up; put the text just above the box
        above = np.asarray(inst.box_center, dtype=np.float64) - np.array([0.0, 0.5 * float(size.max()) + text_height,
                                                                          0.0])
        text = Marker(header=hdr, ns=ns, id=3 * i + 2, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                      pose=Pose(position=_point(above), orientation=Quaternion(w=1.0)),
                      scale=Vector3(z=text_height), color=_color(inst, 1.0), text=instance_label(inst), lifetime=life)
        out.markers.extend((box, dot, text))
    return out
