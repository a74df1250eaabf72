"""The one pipeline every entry point runs: RGB-D frame + intrinsics -> instances.

``Segmenter(config).process(color, depth, K) -> FrameResult``. The node, the rosbag evaluator, the demo
and the benchmark all go through it, so they measure and report the same thing.

Stages (each timed, in ms): ``preprocess`` (numpy -> device tensors), ``inference`` (the network),
``postprocess`` (thresholding, amodal ⊇ visible, boxes, crops, label image), ``lift`` (all instances'
point clouds in one vectorized pass), ``cloud_filter`` (optional voxel / outlier filtering) and
``geometry`` (centroids, oriented boxes). Masks stay on the model's device until the final small arrays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from .config import Config
from .geometry import centroid, oriented_box
from .images import FrameError, check_frame
from .lifting import filter_cloud, label_image, lift_instances, mask_bboxes
from .types import FrameResult, InstanceResult, Intrinsics

__all__ = ["FrameError", "Segmenter"]

_log = logging.getLogger(__name__)


def _host(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.cpu().numpy() if isinstance(x, torch.Tensor) else x)


class Segmenter:
    """Amodal instance segmentation of one RGB-D frame at a time.

    Args:
        config: the validated configuration (``model.*``, ``depth.*``, ``cloud.*``, ``occlusion.*`` are used).
        log: called with one human-readable line for notable events (model loaded, untrained weights ...);
            defaults to this module's logger.

    Call :meth:`load` once (loads and warms the model), then :meth:`process` per frame.
    """

    def __init__(self, config: Config, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self._log = log or _log.info
        self.predictor = None
        self.meta = None

    @property
    def loaded(self) -> bool:
        return self.predictor is not None

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Build or load the model named by ``model.weights`` and warm it up.

        Raises:
            WeightsError: the weights file is missing, unreadable or not one of ours.
            ConfigError: an option combination is invalid.
        """
        from .model import Predictor, load_model

        m = self.config.model
        if m.threads:
            torch.set_num_threads(m.threads)
        model, meta = load_model(m.weights, backbone=m.backbone, input_mode=m.input_mode, log=self._log)
        self.predictor = Predictor(
            model, meta, device=m.device, precision=m.precision, score_threshold=m.score_threshold,
            mask_threshold=m.mask_threshold, nms_threshold=m.nms_threshold, max_instances=m.max_instances,
            min_size=m.min_size, max_size=m.max_size,
        )
        self.meta = meta
        import open3d  # noqa: F401  (its first import costs ~0.5 s: pay it here, not on the first filtered frame)

        if m.warmup:
            self.predictor.warmup()
        self._log(
            f"model loaded: weights={m.weights} backbone={meta.backbone} input={meta.input_mode} "
            f"classes={len(meta.classes) - 1} device={self.predictor.device} precision={m.precision}"
        )

    def update_config(self, config: Config) -> None:
        """Apply a new config. Run-time values (thresholds, depth range, cloud options) take effect at once;
        a change of any other ``model.*`` value needs :meth:`release` + :meth:`load`."""
        self.config = config
        if self.predictor is not None:
            m = config.model
            self.predictor.update(
                score_threshold=m.score_threshold, mask_threshold=m.mask_threshold, max_instances=m.max_instances,
            )

    def release(self) -> None:
        """Free the model (and its GPU memory)."""
        if self.predictor is not None:
            self.predictor.release()
        self.predictor = None

    # ------------------------------------------------------------------ per frame
    def process(self, color: np.ndarray, depth: np.ndarray, K: Intrinsics) -> FrameResult:
        """Segment one frame.

        Args:
            color (np.ndarray[H, W, 3] uint8): RGB image.
            depth (np.ndarray[H, W] float32): registered depth in meters, NaN where invalid.
            K: intrinsics of the color camera (size must match the images).

        Returns:
            FrameResult with instances sorted by descending score and per-stage timings (ms).

        Raises:
            FrameError: the frame is malformed (sizes, intrinsics). RuntimeError: :meth:`load` was not called.
        """
        if self.predictor is None:
            raise RuntimeError("Segmenter.process() called before load().")
        check_frame(color, depth, K)
        cfg = self.config
        h, w = depth.shape
        det = self.predictor.predict(color, depth)
        timings = {k: float(v) for k, v in det.timings.items()}

        t0 = time.perf_counter()
        masks, amodal = det.masks, det.amodal_masks
        vis_area = masks.flatten(1).sum(dim=1)
        keep = vis_area > 0  # a detection with no visible pixel is no grasp target
        if not bool(keep.all()):
            masks, amodal, vis_area = masks[keep], amodal[keep], vis_area[keep]
            scores, labels = det.scores[keep], det.labels[keep]
        else:
            scores, labels = det.scores, det.labels
        amodal_area = amodal.flatten(1).sum(dim=1).clamp(min=1)
        occlusion = (1.0 - vis_area.float() / amodal_area.float()).clamp(0.0, 1.0)
        if masks.device.type == "cpu":  # numpy is much faster than torch's CPU kernels for these reductions
            masks, amodal = masks.numpy(), amodal.numpy()
        boxes_h = mask_bboxes(masks)
        aboxes_h = mask_bboxes(amodal)
        label_np = label_image(masks)  # masks are in descending score order: the higher score wins overlaps
        scores_h, labels_h, occ_h = scores.float().cpu().numpy(), labels.cpu().numpy(), occlusion.cpu().numpy()
        crops, acrops = [], []
        for i in range(masks.shape[0]):  # small crops only; full-size masks never leave the device
            x, y, bw, bh = (int(v) for v in boxes_h[i])
            ax, ay, aw, ah = (int(v) for v in aboxes_h[i])
            crops.append(_host(masks[i, y:y + bh, x:x + bw]))
            acrops.append(_host(amodal[i, ay:ay + ah, ax:ax + aw]))
        timings["postprocess"] = timings.get("postprocess", 0.0) + (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        clouds = lift_instances(
            depth, masks, K, color=color if cfg.cloud.with_rgb else None, depth_min=cfg.depth.min,
            depth_max=cfg.depth.max, flying_pixel_threshold=cfg.depth.flying_pixel_threshold,
            erode_px=cfg.depth.erode_px,
        )
        timings["lift"] = (time.perf_counter() - t0) * 1e3

        t_filter = t_geom = 0.0
        classes = self.meta.classes if self.meta is not None else ["__background__", "object"]
        instances: list[InstanceResult] = []
        for i, cloud in enumerate(clouds):
            t0 = time.perf_counter()
            pts, cols = cloud.points, cloud.colors
            if cfg.cloud.voxel_size > 0 or cfg.cloud.outlier_removal:
                pts, cols = filter_cloud(
                    pts, cols, voxel_size=cfg.cloud.voxel_size, outlier_removal=cfg.cloud.outlier_removal,
                    neighbors=cfg.cloud.outlier_neighbors, std_ratio=cfg.cloud.outlier_std_ratio,
                )
            t1 = time.perf_counter()
            t_filter += t1 - t0
            inst = InstanceResult(
                index=i + 1,
                class_id=int(labels_h[i]),
                class_name=classes[int(labels_h[i])] if int(labels_h[i]) < len(classes) else str(int(labels_h[i])),
                score=float(scores_h[i]),
                bbox=tuple(int(v) for v in boxes_h[i]),
                mask=crops[i],
                amodal_bbox=tuple(int(v) for v in aboxes_h[i]),
                amodal_mask=acrops[i],
                occlusion=float(occ_h[i]),
                is_occluded=bool(occ_h[i] > cfg.occlusion.threshold),
                points=pts,
                colors=cols,
                depth_coverage=float(cloud.depth_coverage),
            )
            if pts.shape[0] > 0:
                inst.centroid = centroid(pts)
            if pts.shape[0] >= max(cfg.cloud.min_points, 1):
                inst.box_center, inst.box_quat, inst.box_size = oriented_box(pts)
            t_geom += time.perf_counter() - t1
            instances.append(inst)
        timings["cloud_filter"] = t_filter * 1e3
        timings["geometry"] = t_geom * 1e3
        timings["total"] = sum(v for k, v in timings.items() if k != "total")
        return FrameResult(width=w, height=h, instances=instances, label_image=label_np, timings=timings)

