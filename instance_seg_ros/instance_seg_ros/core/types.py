"""Plain result types that flow out of the core (numpy only, no torch, no ROS).

Conventions:
- 2D boxes are ``(x, y, w, h)`` in integer image pixels (like sensor_msgs/RegionOfInterest:
  ``x_offset, y_offset, width, height``); a crop ``mask[h, w]`` covers ``image[y:y+h, x:x+w]``.
- 3D quantities are in meters in the camera optical frame (REP 103: x right, y down, z forward).
- Quaternions are ``(x, y, z, w)`` as in geometry_msgs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FrameError", "FrameResult", "InstanceResult", "Intrinsics"]


class FrameError(ValueError):
    """A malformed frame: bad encoding, size, step, buffer length, intrinsics or size mismatch."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of the color camera (depth is registered to it)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_k(cls, k: np.ndarray | list[float], width: int, height: int) -> Intrinsics:
        """From a row-major 3x3 camera matrix (CameraInfo.k)."""
        k = np.asarray(k, dtype=np.float64).reshape(-1)
        if k.size != 9:
            raise FrameError(f"camera matrix K must have 9 elements, got {k.size}.")
        return cls(float(k[0]), float(k[4]), float(k[2]), float(k[5]), int(width), int(height))

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    def scaled(self, sx: float, sy: float) -> Intrinsics:
        """Intrinsics of the same camera resized by (sx, sy)."""
        return Intrinsics(
            self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
            round(self.width * sx), round(self.height * sy),
        )


_EMPTY3 = np.zeros(3, dtype=np.float64)


@dataclass
class InstanceResult:
    """One detected object.

    Attributes:
        index (int): 1-based; this instance's value in the label image.
        bbox (tuple[int, int, int, int]): (x, y, w, h) of the visible mask.
        mask (np.ndarray[h, w] bool): visible mask cropped to ``bbox``.
        amodal_bbox / amodal_mask: the same for the amodal (full-shape) mask; ``amodal ⊇ visible``.
        occlusion (float): hidden fraction of the amodal mask, 0..1, computed from the masks (``1 - visible area /
            amodal area``), not the model's occlusion head; this is the value ``Instance.occlusion`` publishes.
        points (np.ndarray[N, 3] float32): visible-surface points, meters, camera optical frame.
        colors (np.ndarray[N, 3] uint8 | None): RGB of each point.
        depth_coverage (float): share of visible-mask pixels that had valid depth.
        centroid (np.ndarray[3] float64): mean of ``points`` (zeros when there are none).
        box_center, box_quat (xyzw), box_size: oriented 3D bounding box of ``points``.
    """

    index: int
    class_id: int
    class_name: str
    score: float
    bbox: tuple[int, int, int, int]
    mask: np.ndarray
    amodal_bbox: tuple[int, int, int, int]
    amodal_mask: np.ndarray
    occlusion: float
    is_occluded: bool
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    colors: np.ndarray | None = None
    depth_coverage: float = 0.0
    centroid: np.ndarray = field(default_factory=lambda: _EMPTY3.copy())
    box_center: np.ndarray = field(default_factory=lambda: _EMPTY3.copy())
    box_quat: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 0.0, 1.0]))
    box_size: np.ndarray = field(default_factory=lambda: _EMPTY3.copy())
    track_id: int = 0

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    def full_mask(self, height: int, width: int, amodal: bool = False) -> np.ndarray:
        """The (visible or amodal) mask pasted into a full ``[height, width]`` bool image."""
        out = np.zeros((height, width), dtype=bool)
        x, y, w, h = self.amodal_bbox if amodal else self.bbox
        out[y:y + h, x:x + w] = (self.amodal_mask if amodal else self.mask).astype(bool)
        return out


@dataclass
class FrameResult:
    """Everything the pipeline found in one frame.

    Attributes:
        instances: sorted by descending score; ``instances[i].index == i + 1``.
        label_image (np.ndarray[H, W] uint16): 0 = background, else the instance ``index``
            (visible masks; the higher score wins where masks overlap).
        timings (dict[str, float]): milliseconds per stage (decode, preprocess, inference,
            postprocess, lift, ...); ``total`` is their sum.
        support_plane (SupportPlane | None): the dominant plane the support-plane check found in the depth
            (:mod:`~instance_seg_ros.core.support_plane`); None when it is off or found none.
        dropped (list[InstanceResult]): detections the support-plane check removed (they lie on the plane or behind
            it), with the indices they had before; not in ``instances`` nor in ``label_image``.
    """

    width: int
    height: int
    instances: list[InstanceResult]
    label_image: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    support_plane: object | None = None
    dropped: list[InstanceResult] = field(default_factory=list)
