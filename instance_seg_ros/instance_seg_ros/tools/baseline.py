"""A naive implementation of the pipeline, for ``isr bench`` to measure the fast paths against.

It is what a straightforward first version does, and it runs **the same network with the same weights** as
the :class:`~instance_seg_ros.core.pipeline.Segmenter` it is compared with; it differs in everything around the
network:

=============  ===========================================================================================
stage          naive baseline
=============  ===========================================================================================
decode         the same decoder as ours (``core.images``: views of the message buffer, one depth conversion)
preprocess     torchvision's default detection transform sizes (``min_size=800, max_size=1333``): a 640x480
               frame is upscaled to 1067x800 before the backbone
inference      the network at that size, fp32, default memory format, under ``torch.no_grad``
postprocess    torchvision's ``transform.postprocess`` (every mask pasted as a float image of the full frame,
               one RoI at a time), thresholded, moved to the host; then per instance ``np.where`` boxes on
               the full mask, crops, areas, and a label image painted mask by mask over the full frame
lift           per instance, full-image numpy: the valid-depth and flying-pixel tests and the projection of
               every pixel are recomputed over the whole frame, then the mask's pixels are selected
cloud_filter,  the same functions as ours (Open3D filtering, centroid, oriented box, and the support-plane check)
geometry
message        an ``InstanceArray`` whose byte fields are Python lists filled element by element (mask
               pixels one by one, points packed with ``struct`` one at a time)
=============  ===========================================================================================

So the ratios ``ours / baseline`` that ``isr bench`` prints measure the transform, paste, lifting and message
code, not a different network. (A model trained at its native size would also *detect* differently when fed
800 px upscaled frames; the baseline is about cost, not accuracy.)
"""

from __future__ import annotations

import copy
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.config import Config
from ..core.model import AmodalMaskRCNN, ModelMeta, frame_to_input
from ..core.pipeline import attach_geometry, filter_for_config
from ..core.support_plane import renumber_instances, support_plane_check
from ..core.types import FrameResult, InstanceResult, Intrinsics

__all__ = ["TORCHVISION_MAX_SIZE", "TORCHVISION_MIN_SIZE", "NaiveBaseline", "naive_instance_array_msg"]

#: torchvision's ``maskrcnn_resnet50_fpn`` transform defaults.
TORCHVISION_MIN_SIZE = 800
TORCHVISION_MAX_SIZE = 1333


class NaiveBaseline:
    """The naive pipeline (see the module docstring) around a copy of ``model``.

    Args:
        model: the network the fast pipeline runs (e.g. ``segmenter.predictor.model``); it is deep-copied and
            put back into the default (contiguous) memory format, so the weights are the same values.
        meta: its metadata (class names).
        config: the same configuration as the fast pipeline (thresholds, depth range, cloud options).
        device: where the network runs (``torch.device`` or a name).
        min_size, max_size: the transform's sizes; torchvision's defaults.

    :meth:`process` has the :class:`~instance_seg_ros.core.pipeline.Segmenter` signature and fills the same
    timing keys.
    """

    def __init__(
        self,
        model: AmodalMaskRCNN,
        meta: ModelMeta,
        config: Config,
        *,
        device: torch.device | str = "cpu",
        min_size: int = TORCHVISION_MIN_SIZE,
        max_size: int = TORCHVISION_MAX_SIZE,
    ) -> None:
        if not isinstance(model, AmodalMaskRCNN):
            raise TypeError(f"model must be an AmodalMaskRCNN, got {type(model).__name__}.")
        self.device = torch.device(device)
        self.model = copy.deepcopy(model).to(self.device, memory_format=torch.contiguous_format).eval()
        self.meta = meta
        self.config = config
        self.min_size, self.max_size = int(min_size), int(max_size)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def process(self, color: np.ndarray, depth: np.ndarray, K: Intrinsics) -> FrameResult:
        """Segment one frame the naive way.

        Args:
            color (np.ndarray[H, W, 3] uint8): RGB. depth (np.ndarray[H, W] float32): meters, NaN invalid.
            K: intrinsics of the color camera.

        Returns:
            FrameResult with timings (ms) for preprocess, inference, postprocess, lift, cloud_filter, geometry.
        """
        cfg = self.config
        h, w = depth.shape
        timings: dict[str, float] = {}
        vis, amo, scores, labels = self._detect(color, depth, timings)
        t0 = time.perf_counter()
        masks = _NaiveMasks.of(vis, amo)
        timings["postprocess"] += (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        clouds = [naive_lift(depth, vis[i], K, color if cfg.cloud.with_rgb else None, cfg) for i in masks.kept]
        timings["lift"] = (time.perf_counter() - t0) * 1e3

        on_plane = np.zeros(len(clouds), bool)
        if cfg.filter.support_plane != "off":
            t0 = time.perf_counter()
            _, on_plane = support_plane_check(cfg, depth, K, [c[0] for c in clouds], masks.label)
            timings["support_plane"] = (time.perf_counter() - t0) * 1e3

        instances = self._instances(masks, clouds, on_plane, scores, labels, timings)
        label = renumber_instances(instances, masks.label) if on_plane.any() else masks.label
        timings["total"] = sum(timings.values())
        return FrameResult(width=w, height=h, instances=instances, label_image=label, timings=timings)

    def _detect(
        self, color: np.ndarray, depth: np.ndarray, timings: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The network with torchvision's transform and paste: ``(visible [N, H, W] bool, amodal [N, H, W] bool,
        scores [N], labels [N])`` on the host; fills ``preprocess``, ``inference`` and (the paste) ``postprocess``."""
        cfg, m = self.config, self.model
        h, w = depth.shape
        rh = m.roi_heads
        rh.score_thresh = cfg.model.score_threshold
        rh.nms_thresh = cfg.model.nms_threshold
        rh.detections_per_img = cfg.model.max_instances
        m.transform.min_size = (self.min_size,)
        m.transform.max_size = self.max_size
        with torch.no_grad():
            t0 = time.perf_counter()
            x = frame_to_input(color, depth, input_mode=m.input_mode, depth_max_m=m.depth_max_m, device=self.device)
            images, _ = m.transform([x])
            self._sync()
            t1 = time.perf_counter()
            features = m.backbone(images.tensors)
            proposals, _ = m.rpn(images, features)
            dets, _ = rh(features, proposals, images.image_sizes)
            self._sync()
            t2 = time.perf_counter()
            d = m.transform.postprocess(dets, images.image_sizes, [(h, w)])[0]
            thr = cfg.model.mask_threshold
            vis = (d["masks"][:, 0] > thr).cpu().numpy()
            amo = ((d["amodal_masks"][:, 0] > thr).cpu().numpy()) | vis
            scores = d["scores"].cpu().numpy()
            labels = d["labels"].cpu().numpy()
        timings["preprocess"] = (t1 - t0) * 1e3
        timings["inference"] = (t2 - t1) * 1e3
        timings["postprocess"] = (time.perf_counter() - t2) * 1e3
        return vis, amo, scores, labels

    def _instances(
        self,
        masks: _NaiveMasks,
        clouds: list[tuple[np.ndarray, np.ndarray | None, float]],
        on_plane: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
        timings: dict[str, float],
    ) -> list[InstanceResult]:
        """One :class:`InstanceResult` per kept mask off the support plane, its cloud filtered and its geometry
        attached, one at a time; fills ``cloud_filter`` and ``geometry``."""
        cfg, classes = self.config, self.meta.classes
        t_filter = t_geom = 0.0
        instances = []
        for j, (pts, cols, coverage) in enumerate(clouds):
            if on_plane[j]:
                continue
            t0 = time.perf_counter()
            pts, cols = filter_for_config(cfg.cloud, pts, cols)
            t1 = time.perf_counter()
            t_filter += t1 - t0
            i, occ = masks.kept[j], masks.occlusion[j]
            lab = int(labels[i])
            inst = InstanceResult(
                index=j + 1, class_id=lab, class_name=classes[lab] if lab < len(classes) else str(lab),
                score=float(scores[i]), bbox=masks.boxes[j], mask=masks.crops[j],
                amodal_bbox=masks.amodal_boxes[j], amodal_mask=masks.amodal_crops[j],
                occlusion=float(occ), is_occluded=bool(occ > cfg.occlusion.threshold),
                points=pts, colors=cols, depth_coverage=coverage,
            )
            attach_geometry(inst, cfg.cloud.min_points)
            t_geom += time.perf_counter() - t1
            instances.append(inst)
        timings["cloud_filter"] = t_filter * 1e3
        timings["geometry"] = t_geom * 1e3
        return instances


@dataclass
class _NaiveMasks:
    """The naive mask summary: per non-empty visible mask (``kept``, detection indices) ``np.where`` boxes on the
    full mask, crops and occlusion, and a label image painted mask by mask over the full frame."""

    kept: list[int] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    amodal_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    amodal_crops: list[np.ndarray] = field(default_factory=list)
    occlusion: list[float] = field(default_factory=list)
    label: np.ndarray | None = None

    @classmethod
    def of(cls, vis: np.ndarray, amo: np.ndarray) -> _NaiveMasks:
        out = cls()
        for i in range(vis.shape[0]):
            ys, xs = np.where(vis[i])
            if ys.size == 0:
                continue
            ays, axs = np.where(amo[i])
            b = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
            ab = (int(axs.min()), int(ays.min()), int(axs.max() - axs.min() + 1), int(ays.max() - ays.min() + 1))
            out.boxes.append(b)
            out.amodal_boxes.append(ab)
            out.crops.append(vis[i, b[1] : b[1] + b[3], b[0] : b[0] + b[2]].copy())
            out.amodal_crops.append(amo[i, ab[1] : ab[1] + ab[3], ab[0] : ab[0] + ab[2]].copy())
            out.occlusion.append(min(max(1.0 - vis[i].sum() / max(amo[i].sum(), 1), 0.0), 1.0))
            out.kept.append(i)
        out.label = np.zeros(vis.shape[1:], np.uint16)
        for j in range(len(out.kept) - 1, -1, -1):
            out.label[vis[out.kept[j]]] = j + 1
        return out


def naive_lift(
    depth: np.ndarray, mask: np.ndarray, K: Intrinsics, color: np.ndarray | None, cfg: Config
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """One instance, full-image numpy: ``(points [N, 3] float32, colors [N, 3] uint8 | None, depth coverage)``.

    Same validity rules as :func:`~instance_seg_ros.core.lifting.lift_instances` (range, flying pixels, erosion),
    recomputed over the whole frame for every instance.
    """
    import cv2

    h, w = depth.shape
    z = depth.astype(np.float32)
    with np.errstate(invalid="ignore"):
        in_range = np.isfinite(z) & (z > 0) & (z >= cfg.depth.min) & (z <= cfg.depth.max)
        valid = in_range.copy()
        thr = cfg.depth.flying_pixel_threshold
        if thr > 0:
            for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                nb = np.full_like(z, np.nan)
                ys = slice(max(dy, 0), h + min(dy, 0))
                xs = slice(max(dx, 0), w + min(dx, 0))
                yd = slice(max(-dy, 0), h + min(-dy, 0))
                xd = slice(max(-dx, 0), w + min(-dx, 0))
                nb[yd, xd] = z[ys, xs]
                valid &= ~(np.abs(nb - z) > thr * z)
    n_px = int(mask.sum())
    coverage = float((mask & in_range).sum()) / n_px if n_px else 0.0
    m = mask
    if cfg.depth.erode_px > 0:
        k = 2 * cfg.depth.erode_px + 1
        m = cv2.erode(mask.astype(np.uint8), np.ones((k, k), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
    us, vs = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    x = (us - np.float32(K.cx)) * (z / np.float32(K.fx))
    y = (vs - np.float32(K.cy)) * (z / np.float32(K.fy))
    sel = m & valid
    pts = np.stack([x[sel], y[sel], z[sel]], axis=1).astype(np.float32)
    cols = color[sel] if color is not None else None
    return pts, cols, coverage


def naive_instance_array_msg(result: FrameResult, hdr: Any) -> Any:
    """The ``InstanceArray`` of ``result`` with every byte field filled element by element (the baseline of
    :func:`instance_seg_ros.ros.conversions.instance_array_msg`; same content)."""
    from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
    from sensor_msgs.msg import Image, PointCloud2, PointField, RegionOfInterest

    from instance_seg_msgs.msg import Instance, InstanceArray

    msg = InstanceArray(header=hdr, height=int(result.height), width=int(result.width))
    for inst in result.instances:
        im = Instance()
        im.index, im.track_id, im.class_id = int(inst.index), int(inst.track_id), int(inst.class_id)
        im.class_name, im.score = str(inst.class_name), float(inst.score)
        for field_name, box, crop in (("bbox", inst.bbox, inst.mask), ("amodal_bbox", inst.amodal_bbox,
                                                                         inst.amodal_mask)):
            x, y, bw, bh = (int(v) for v in box)
            setattr(im, field_name, RegionOfInterest(x_offset=x, y_offset=y, width=bw, height=bh))
            img = Image(header=hdr, height=int(crop.shape[0]), width=int(crop.shape[1]), encoding="mono8",
                        is_bigendian=0, step=int(crop.shape[1]))
            img.data = [255 if v else 0 for v in crop.flat]
            setattr(im, "mask" if field_name == "bbox" else "amodal_mask", img)
        im.occlusion, im.is_occluded = float(inst.occlusion), bool(inst.is_occluded)
        fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                  for i, n in enumerate(("x", "y", "z"))]
        with_rgb = inst.colors is not None
        if with_rgb:
            fields.append(PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1))
        step = 16 if with_rgb else 12
        n = inst.points.shape[0]
        data: list[int] = []
        for k in range(n):
            p = inst.points[k]
            if with_rgb:
                r, g, b = (int(v) for v in inst.colors[k])
                data.extend(struct.pack("<fffI", float(p[0]), float(p[1]), float(p[2]), (r << 16) | (g << 8) | b))
            else:
                data.extend(struct.pack("<fff", float(p[0]), float(p[1]), float(p[2])))
        cloud = PointCloud2(header=hdr, height=1, width=n, fields=fields, is_bigendian=False, point_step=step,
                            row_step=step * n, is_dense=True)
        cloud.data = data
        im.points = cloud
        im.depth_coverage = float(inst.depth_coverage)
        c, bc, q, s = inst.centroid, inst.box_center, inst.box_quat, inst.box_size
        im.centroid = Point(x=float(c[0]), y=float(c[1]), z=float(c[2]))
        im.box_pose = Pose(position=Point(x=float(bc[0]), y=float(bc[1]), z=float(bc[2])),
                           orientation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))
        im.box_size = Vector3(x=float(s[0]), y=float(s[1]), z=float(s[2]))
        msg.instances.append(im)
    return msg
