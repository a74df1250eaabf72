"""A rendered frame and its ground truth: per object its visible and amodal masks, occlusion, pose and extent.

- The *ground-truth centroid* of an object (``ObjectGT.centroid``, ``InstanceResult.centroid`` in
  :meth:`Frame.to_frame_result`) is the mean of its visible surface points lifted from the
  noise-free depth: what a perfect segmentation + lifting pipeline would report.
- Boxes are ``(x, y, w, h)``, as :func:`instance_seg_ros.core.masks.mask_bbox` computes them; poses are in the
  camera optical frame, quaternions ``(x, y, z, w)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.geometry import matrix_to_quaternion
from ..core.masks import mask_bbox
from ..core.types import FrameResult, InstanceResult, Intrinsics
from .camera import Camera, ray_grid
from .errors import SceneError
from .objects import SceneObject

__all__ = ["STATUSES", "Frame", "ObjectGT", "lift_mask", "object_ground_truth"]

#: object status in a frame: ``ok`` objects are ground truth, the others are reported but excluded
STATUSES = ("ok", "small", "hidden", "outside")


def lift_mask(
    depth: np.ndarray, mask: np.ndarray, k: Intrinsics, color: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Lift the pixels of ``mask`` that have finite depth to 3D (pinhole model, no filtering).

    Args:
        depth: float32[H, W] meters, NaN invalid.
        mask: bool[H, W].
        k: intrinsics of the image.
        color: optional uint8[H, W, 3].

    Returns:
        ``(points float32[N, 3], colors uint8[N, 3] | None, depth_coverage)`` in the camera optical frame;
        coverage is the share of mask pixels with valid depth (0 for an empty mask).
    """
    gx, gy = ray_grid(k.fx, k.fy, k.cx, k.cy, k.width, k.height)
    sel = mask & np.isfinite(depth)
    z = depth[sel]
    pts = np.stack([gx[sel] * z, gy[sel] * z, z], axis=1).astype(np.float32, copy=False)
    n_mask = int(mask.sum())
    cols = color[sel] if color is not None else None
    return pts, cols, (float(sel.sum()) / n_mask if n_mask else 0.0)


@dataclass
class ObjectGT:
    """Ground truth of one scene object in one frame.

    Attributes:
        id (int): the object's value in ``Frame.visible_ids`` (1..K, fixed for the scene's lifetime).
        name (str): category, e.g. ``box`` or ``random_urdf_123``.
        status (str): ``ok`` (ground truth), ``small`` (visible area below the minimum), ``hidden``
            (fully occluded) or ``outside`` (not in the image).
        visible_mask (np.ndarray[H, W] bool): pixels where the object is the nearest surface.
        amodal_mask (np.ndarray[H, W] bool | None): pixels the object covers when rendered alone
            (in-image part; ``None`` when rendered with ``amodal=False``). Contains ``visible_mask``.
        visible_area, amodal_area (int): pixel counts (amodal -1 when not rendered).
        occlusion (float): ``1 - visible_area / amodal_area`` (NaN when not rendered or amodal_area is 0).
        truncation (float): share of the full silhouette that falls outside the image (NaN when not rendered).
        bbox, amodal_bbox (tuple[int, int, int, int]): ``(x, y, w, h)`` of the masks (zeros when empty).
        position (np.ndarray[3] float64): centre of the object's bounding box, camera optical frame, meters.
        quat (np.ndarray[4] float64): its orientation ``(x, y, z, w)`` in the camera frame.
        extent (np.ndarray[3] float64): bounding-box edge lengths along the object's own axes, meters.
        centroid (np.ndarray[3] float64): mean of the visible surface points (noise-free depth); zeros if none.
    """

    id: int
    name: str
    status: str
    visible_mask: np.ndarray
    amodal_mask: np.ndarray | None
    visible_area: int
    amodal_area: int
    occlusion: float
    truncation: float
    bbox: tuple[int, int, int, int]
    amodal_bbox: tuple[int, int, int, int]
    position: np.ndarray
    quat: np.ndarray
    extent: np.ndarray
    centroid: np.ndarray

    @property
    def valid(self) -> bool:
        """True for ground-truth objects (status ``ok``)."""
        return self.status == "ok"


@dataclass
class Frame:
    """One rendered RGB-D frame and its ground truth.

    Attributes:
        color (np.ndarray[H, W, 3] uint8): RGB.
        depth (np.ndarray[H, W] float32): z in meters, NaN invalid; noisy when rendered with a noise model.
        depth_true (np.ndarray[H, W] float32): the noise-free depth (the same array when no noise).
        visible_ids (np.ndarray[H, W] int32): 0 = background / support, else the nearest object's ``id``
            (every object, including those flagged ``small``).
        intrinsics: the camera model.
        world_to_camera (np.ndarray[4, 4] float64): the camera pose (world -> camera optical frame).
        objects (list[ObjectGT]): every object of the scene, in id order, with its status.
        camera: the :class:`Camera` that rendered it.
    """

    color: np.ndarray
    depth: np.ndarray
    depth_true: np.ndarray
    visible_ids: np.ndarray
    intrinsics: Intrinsics
    world_to_camera: np.ndarray
    objects: list[ObjectGT]
    camera: Camera
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ground_truth(self) -> list[ObjectGT]:
        """The objects that count as ground truth (status ``ok``)."""
        return [o for o in self.objects if o.valid]

    def to_frame_result(self, *, occlusion_threshold: float = 0.1, with_colors: bool = True) -> FrameResult:
        """Ground truth as the pipeline's own result type (score 1, class_id 1, class_name = category).

        Per ground-truth object: visible / amodal mask crops, occlusion, its visible surface points lifted
        from the noise-free depth (``centroid`` = their mean), and as the 3D box the object's *true*
        oriented bounding box (pose + extent, not a fit to the points). ``track_id`` = the object id, so it
        is stable across frames of one scene. ``label_image`` holds the instance indices (1..N).
        """
        if any(o.amodal_mask is None for o in self.ground_truth):
            raise SceneError("to_frame_result needs amodal masks; render the frame with amodal=True.")
        h, w = self.depth.shape
        label = np.zeros((h, w), dtype=np.uint16)
        instances = []
        for i, o in enumerate(self.ground_truth, start=1):
            x, y, bw, bh = o.bbox
            ax, ay, aw, ah = o.amodal_bbox
            pts, cols, coverage = lift_mask(self.depth_true, o.visible_mask, self.intrinsics,
                                            self.color if with_colors else None)
            label[o.visible_mask] = i
            instances.append(InstanceResult(
                index=i, class_id=1, class_name=o.name, score=1.0,
                bbox=o.bbox, mask=o.visible_mask[y:y + bh, x:x + bw].copy(),
                amodal_bbox=o.amodal_bbox, amodal_mask=o.amodal_mask[ay:ay + ah, ax:ax + aw].copy(),
                occlusion=float(o.occlusion), is_occluded=bool(o.occlusion > occlusion_threshold),
                points=pts, colors=cols, depth_coverage=coverage,
                centroid=o.centroid.copy(), box_center=o.position.copy(), box_quat=o.quat.copy(),
                box_size=o.extent.copy(), track_id=o.id,
            ))
        return FrameResult(width=w, height=h, instances=instances, label_image=label, timings=dict(self.timings))


def object_ground_truth(
    obj: SceneObject,
    pose: np.ndarray,
    visible_mask: np.ndarray,
    amodal_mask: np.ndarray | None,
    *,
    depth: np.ndarray,
    intrinsics: Intrinsics,
    truncation: float,
    in_view: bool,
    min_visible_pixels: int,
) -> ObjectGT:
    """The :class:`ObjectGT` of ``obj`` in one frame.

    Args:
        obj: the scene object.
        pose: float64[4, 4] pose of its bounding-box centre in the camera optical frame.
        visible_mask: bool[H, W], pixels where it is the nearest surface.
        amodal_mask: bool[H, W] containing ``visible_mask``, or None when not rendered.
        depth: float32[H, W] noise-free depth (meters, NaN invalid), for the centroid.
        intrinsics: the camera model.
        truncation: share of its full silhouette outside the image (NaN when not rendered).
        in_view: whether its bounding box projects into the image at all.
        min_visible_pixels: fewer visible pixels make it ``small`` (not ground truth).
    """
    vis, am, k = visible_mask, amodal_mask, intrinsics
    v_area = int(np.count_nonzero(vis))
    if am is not None:
        a_area = int(am.sum())
        occ = 1.0 - v_area / a_area if a_area else float("nan")
    else:
        a_area, occ = -1, float("nan")
    if (am is not None and a_area == 0) or (am is None and v_area == 0 and not in_view):
        status = "outside"
    elif v_area == 0:
        status = "hidden"
    elif v_area < min_visible_pixels:
        status = "small"
    else:
        status = "ok"
    sel = vis & np.isfinite(depth)
    if sel.any():
        gx, gy = ray_grid(k.fx, k.fy, k.cx, k.cy, k.width, k.height)
        z = depth[sel].astype(np.float64)
        centroid = np.array([(gx[sel] * z).mean(), (gy[sel] * z).mean(), z.mean()])
    else:
        centroid = np.zeros(3)
    return ObjectGT(
        id=obj.id, name=obj.name, status=status, visible_mask=vis, amodal_mask=am,
        visible_area=v_area, amodal_area=a_area, occlusion=max(0.0, occ) if math.isfinite(occ) else occ,
        truncation=truncation, bbox=mask_bbox(vis), amodal_bbox=mask_bbox(am) if am is not None else (0, 0, 0, 0),
        position=pose[:3, 3].copy(), quat=matrix_to_quaternion(pose[:3, :3]), extent=obj.extent.copy(),
        centroid=centroid,
    )
