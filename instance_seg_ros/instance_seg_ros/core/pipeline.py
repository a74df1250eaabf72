"""The one pipeline every entry point runs: RGB-D frame + intrinsics -> instances.

``Segmenter(config).process(color, depth, K) -> FrameResult``. The node, the rosbag evaluator, the demo
and the benchmark all go through it, so they measure and report the same thing.

Stages (each timed, in ms): ``preprocess`` (numpy -> the normalized, resized network input on the device),
``inference`` (the network), ``postprocess`` (mask pasting, thresholding, amodal ⊇ visible, boxes, crops,
occlusion = ``1 - visible / amodal area`` of the masks, label image), ``lift`` (all instances' point clouds in one
vectorized pass), ``support_plane`` (``filter.support_plane: auto``: the dominant plane of the depth, and the
detections lying on it or behind it dropped: print, paper, highlights, the floor beyond the table; see
:func:`support_plane_check`), ``cloud_filter`` (optional voxel / outlier filtering) and ``geometry`` (centroids,
3D boxes: ``geometry.box_mode``, see :func:`box_plane`).

Fast paths (``Segmenter(reference=True)`` runs the plain ones, for checks): the network at the camera's (or
the configured) resolution under ``inference_mode``, channels-last and fp16/bf16 autocast on CUDA; masks stay
on the model's device until the final small arrays (batched paste there, a few reductions, one packed copy of
all crops, lifting on the device from pinned, asynchronous uploads); on the CPU the mask statistics run in
numpy over the masks' boxes (:func:`summarize_masks`). ``docs/benchmarks.md`` has the figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from . import kernels
from .config import CloudConfig, Config
from .geometric_proposals import cluster_boxes
from .geometry import centroid, oriented_box, support_boxes
from .images import check_frame
from .lifting import filter_cloud, label_image, lift_instances
from .masks import boxes_from_occupancy, mask_bboxes
from .support_plane import SupportPlane, fit_plane, renumber_instances, support_plane_check
from .text import one_line
from .types import FrameError, FrameResult, InstanceResult, Intrinsics

__all__ = [
    "SUMMARY_PATHS",
    "FrameError",
    "FrameSkipped",
    "MaskSummary",
    "Segmenter",
    "attach_geometry",
    "box_plane",
    "summarize_masks",
]

_log = logging.getLogger(__name__)


class FrameSkipped(RuntimeError):
    """The frame could not be processed for a reason outside the input (e.g. the accelerator ran out of memory
    even after a retry at a reduced size); the next frame may well succeed.

    Attributes:
        reason (str): a diagnostics key, ``out_of_memory``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _free_accelerator_cache() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _host(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.cpu().numpy() if isinstance(x, torch.Tensor) else x)


def _upload(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array to ``device`` through pinned memory, asynchronously (torch's caching host allocator reuses
    the pinned block frame after frame)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


# ---------------------------------------------------------------------------------------- mask summary
@dataclass
class MaskSummary:
    """What a frame's result needs from its full-size masks, on the host (detection order kept).

    Detections whose visible mask is empty are dropped (no grasp target); ``keep`` says which stayed.

    Attributes:
        keep (np.ndarray[N] int64): indices of the kept detections.
        masks (np.ndarray | Tensor [N, H, W] bool): the kept visible masks, where they were (host or device),
            for lifting.
        boxes, amodal_boxes (np.ndarray[N, 4] int64): ``(x, y, w, h)`` of the visible / amodal masks.
        crops, amodal_crops (list[np.ndarray[h, w] bool]): the masks cropped to those boxes (contiguous copies).
        occlusion (np.ndarray[N] float64): ``1 - visible area / amodal area``, in [0, 1]: the published
            ``Instance.occlusion``. The occlusion head's ``Detections.occlusion_pred`` is not used: the mask-derived
            value was closer to ground truth on real frames (MAE 0.191 vs 0.222) and agrees with the masks.
        scores (np.ndarray[N] float32), labels (np.ndarray[N] int64).
        label_image (np.ndarray[H, W] uint16): 0 = background, else ``i + 1``; the lower index (higher score) wins.
    """

    keep: np.ndarray
    masks: np.ndarray | torch.Tensor
    boxes: np.ndarray
    amodal_boxes: np.ndarray
    crops: list[np.ndarray]
    amodal_crops: list[np.ndarray]
    occlusion: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    label_image: np.ndarray


#: Implementations of :func:`summarize_masks`.
SUMMARY_PATHS = ("auto", "host", "device", "reference")


def summarize_masks(
    masks: torch.Tensor,
    amodal: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    path: str = "auto",
    regions: torch.Tensor | np.ndarray | None = None,
) -> MaskSummary:
    """Boxes, crops, occlusion and label image of a frame's masks.

    Args:
        masks, amodal (Tensor[N, H, W] bool): visible and amodal masks (amodal ⊇ visible), in descending
            score order, on any device.
        scores (Tensor[N] float), labels (Tensor[N] int64): on the same device.
        path: ``host``: numpy over the masks' boxes (torch's CPU kernels for bool reductions are 10-50x slower
            than numpy's); ``device``: a few small torch reductions where the masks are and one packed
            device-to-host copy of all crops (for accelerators; runs anywhere); ``reference``: the plain
            implementation (torch reductions over the full stack, label image over the full stack, one copy per
            crop); ``auto``: ``host`` for CPU tensors, else ``device``. All give the same result.
        regions ([N, 4] int, or None): per mask, ``x0, y0, x1, y1`` (ends exclusive) of a region that holds every
            pixel of both its masks (:attr:`~.model.predictor.Detections.regions`); the ``host`` path then looks for
            the boxes there only. None: over the whole image.

    Returns:
        :class:`MaskSummary`.
    """
    if path not in SUMMARY_PATHS:
        raise ValueError(f"path must be one of {', '.join(SUMMARY_PATHS)}, got {path!r}.")
    if masks.ndim != 3 or amodal.shape != masks.shape:
        raise ValueError(
            f"masks and amodal masks must be [N, H, W] of one shape, got {tuple(masks.shape)} and "
            f"{tuple(amodal.shape)}."
        )
    if path == "auto":
        path = "host" if masks.device.type == "cpu" else "device"
    if path == "reference":
        return _summarize_reference(masks, amodal, scores, labels)
    if path == "host":
        reg = None if regions is None else np.asarray(regions.cpu() if isinstance(regions, torch.Tensor) else regions)
        return _summarize_host(masks.cpu(), amodal.cpu(), scores.cpu(), labels.cpu(), reg)
    return _summarize_device(masks, amodal, scores, labels)


def _occlusion(vis_area: np.ndarray, amodal_area: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - vis_area / np.maximum(amodal_area, 1), 0.0, 1.0)


def _paint_labels(boxes: np.ndarray, crops: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """Label image from crops: painted from the last (lowest score) to the first, so the first wins overlaps
    (equal to :func:`~.lifting.label_image` of the full masks, at the cost of the crops' area only)."""
    out = np.zeros((h, w), np.uint16)
    for i in range(len(crops) - 1, -1, -1):
        x, y, bw, bh = (int(v) for v in boxes[i])
        region = out[y : y + bh, x : x + bw]
        region[crops[i]] = i + 1
    return out


def _crops(m: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    # always copies: the masks may be the predictor's reused stack (reuse_buffers), which the next frame overwrites
    return [m[i, y : y + bh, x : x + bw].copy() for i, (x, y, bw, bh) in enumerate(boxes.tolist())]


def _boxes_in(m: np.ndarray, regions: np.ndarray | None) -> np.ndarray:
    """:func:`~.masks.mask_bboxes` of bool ``m`` [N, H, W], looking only inside ``regions`` (see
    :func:`summarize_masks`) when given."""
    if regions is None:
        return mask_bboxes(m)
    import cv2

    out = np.zeros((m.shape[0], 4), np.int64)
    u8 = m.view(np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(regions.tolist()):
        if x1 > x0 and y1 > y0:  # the non-zero pixels' bounding rectangle, one C call; (0, 0, 0, 0) when none
            x, y, bw, bh = cv2.boundingRect(u8[i, y0:y1, x0:x1])
            if bw:
                out[i] = (x + x0, y + y0, bw, bh)
    return out


def _summarize_host(masks, amodal, scores, labels, regions: np.ndarray | None = None) -> MaskSummary:
    m = masks.numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    a = amodal.numpy() if isinstance(amodal, torch.Tensor) else np.asarray(amodal)
    sc = scores.float().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, np.float32)
    lb = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if m.dtype != np.bool_ or a.dtype != np.bool_:
        regions = None  # mask_bboxes' rules for other types
    boxes = _boxes_in(m, regions)
    keep = np.flatnonzero(boxes[:, 2] > 0)  # an empty mask has a zero box
    if keep.size < m.shape[0]:
        m, a, boxes, sc, lb = m[keep], a[keep], boxes[keep], sc[keep], lb[keep]
        regions = None if regions is None else regions[keep]
    aboxes = _boxes_in(a, regions)
    crops, acrops = _crops(m, boxes), _crops(a, aboxes)
    vis_area = np.array([np.count_nonzero(c) for c in crops], np.float64)
    amodal_area = np.array([np.count_nonzero(c) for c in acrops], np.float64)
    return MaskSummary(
        keep=keep, masks=m, boxes=boxes, amodal_boxes=aboxes, crops=crops, amodal_crops=acrops,
        occlusion=_occlusion(vis_area, amodal_area), scores=sc.astype(np.float32, copy=False),
        labels=lb.astype(np.int64, copy=False), label_image=_paint_labels(boxes, crops, *m.shape[1:]),
    )


def _summarize_device(masks: torch.Tensor, amodal: torch.Tensor, scores, labels) -> MaskSummary:
    n, h, w = masks.shape
    # one small device -> host copy of the per-mask occupancy: [N, H + W] for each stack
    occ_v = torch.cat([masks.any(dim=2), masks.any(dim=1)], dim=1)
    occ_a = torch.cat([amodal.any(dim=2), amodal.any(dim=1)], dim=1)
    occ = torch.cat([occ_v, occ_a], dim=1).cpu().numpy()
    sc = scores.float().cpu().numpy()
    lb = labels.cpu().numpy().astype(np.int64, copy=False)
    boxes = boxes_from_occupancy(occ[:, :h], occ[:, h : h + w])
    aboxes = boxes_from_occupancy(occ[:, h + w : 2 * h + w], occ[:, 2 * h + w :])
    keep = np.flatnonzero(boxes[:, 2] > 0)
    if keep.size < n:
        idx = torch.from_numpy(keep).to(masks.device)
        masks, amodal = masks[idx], amodal[idx]
        boxes, aboxes, sc, lb = boxes[keep], aboxes[keep], sc[keep], lb[keep]
    # all crops in one packed copy
    parts, sizes = [], []
    for stack, bx in ((masks, boxes), (amodal, aboxes)):
        for i, (x, y, bw, bh) in enumerate(bx.tolist()):
            parts.append(stack[i, y : y + bh, x : x + bw].reshape(-1))
            sizes.append((bh, bw))
    flat = torch.cat(parts).cpu().numpy() if parts else np.zeros(0, bool)
    pieces = np.split(flat, np.cumsum([bh * bw for bh, bw in sizes])[:-1]) if parts else []
    crops_all = [p.reshape(s) for p, s in zip(pieces, sizes, strict=True)]
    k = len(keep)
    crops, acrops = crops_all[:k], crops_all[k:]
    vis_area = np.array([np.count_nonzero(c) for c in crops], np.float64)
    amodal_area = np.array([np.count_nonzero(c) for c in acrops], np.float64)
    return MaskSummary(
        keep=keep, masks=masks, boxes=boxes, amodal_boxes=aboxes, crops=crops, amodal_crops=acrops,
        occlusion=_occlusion(vis_area, amodal_area), scores=sc, labels=lb,
        label_image=_paint_labels(boxes, crops, h, w),
    )


def _summarize_reference(masks: torch.Tensor, amodal: torch.Tensor, scores, labels) -> MaskSummary:
    """The plain implementation this module started with (kept as the reference of the fast paths)."""
    vis_area = masks.flatten(1).sum(dim=1)
    keep_t = vis_area > 0
    keep = np.flatnonzero(keep_t.cpu().numpy())
    masks, amodal, vis_area = masks[keep_t], amodal[keep_t], vis_area[keep_t]
    scores, labels = scores[keep_t], labels[keep_t]
    amodal_area = amodal.flatten(1).sum(dim=1).clamp(min=1)
    occlusion = (1.0 - vis_area.double() / amodal_area.double()).clamp(0.0, 1.0)
    boxes = mask_bboxes(masks)
    aboxes = mask_bboxes(amodal)
    label_np = label_image(masks)
    crops, acrops = [], []
    for i in range(masks.shape[0]):
        x, y, bw, bh = (int(v) for v in boxes[i])
        ax, ay, aw, ah = (int(v) for v in aboxes[i])
        crops.append(_host(masks[i, y : y + bh, x : x + bw]))
        acrops.append(_host(amodal[i, ay : ay + ah, ax : ax + aw]))
    return MaskSummary(
        keep=keep, masks=masks, boxes=boxes, amodal_boxes=aboxes, crops=crops, amodal_crops=acrops,
        occlusion=occlusion.cpu().numpy(), scores=scores.float().cpu().numpy(),
        labels=labels.cpu().numpy().astype(np.int64, copy=False), label_image=label_np,
    )


def filter_for_config(cloud: CloudConfig, points: np.ndarray, colors: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`filter_cloud` with the ``cloud.*`` settings (voxel grid, statistical outliers); no-op when both off."""
    if cloud.voxel_size > 0 or cloud.outlier_removal:
        return filter_cloud(points, colors, voxel_size=cloud.voxel_size, outlier_removal=cloud.outlier_removal,
                            neighbors=cloud.outlier_neighbors, std_ratio=cloud.outlier_std_ratio)
    return points, colors


def attach_geometry(instances: InstanceResult | Sequence[InstanceResult], min_points: int, *,
                    plane: SupportPlane | None = None) -> None:
    """Fill each instance's centroid (any points) and 3D box (at least ``min_points`` points, and 1) from its points.

    Args:
        instances: one instance or a frame's instances (their boxes are then fitted in one call).
        min_points: fewer points than this and the box stays zero (``cloud.min_points``).
        plane: None = the general fit, :func:`~.geometry.oriented_box` (``geometry.box_mode: free``); else boxes
            standing on this plane, :func:`~.geometry.support_boxes` (those need 3 points: fewer and the box stays
            zero).
    """
    if isinstance(instances, InstanceResult):
        instances = [instances]
    for inst in instances:
        if inst.points.shape[0] > 0:
            inst.centroid = centroid(inst.points)
    boxed = [inst for inst in instances if inst.points.shape[0] >= max(min_points, 1)]
    if plane is None:
        for inst in boxed:
            inst.box_center, inst.box_quat, inst.box_size = oriented_box(inst.points)
        return
    for inst, box in zip(boxed, support_boxes([inst.points for inst in boxed], plane), strict=True):
        if box is not None:
            inst.box_center, inst.box_quat, inst.box_size = box


def _geometric_proposals(config: Config, depth: np.ndarray, K: Intrinsics
                         ) -> tuple[SupportPlane | None, np.ndarray | None, float]:
    """``(plane, boxes, ms)``: the frame's support plane (:func:`~.support_plane.fit_plane`), the boxes of the depth
    clusters standing on it (:func:`~.geometric_proposals.cluster_boxes`; None without a plane) and the time taken."""
    t0 = time.perf_counter()
    plane = fit_plane(config, depth, K)
    extra = None if plane is None else cluster_boxes(depth, K, plane, min_height=config.filter.min_height)
    return plane, extra, (time.perf_counter() - t0) * 1e3


def box_plane(config: Config, plane: SupportPlane | None, *, searched: bool, depth: np.ndarray, K: Intrinsics
              ) -> SupportPlane | None:
    """The plane ``geometry.box_mode`` stands this frame's boxes on; None = the general fit (:func:`attach_geometry`).

    ``free``: None. ``auto``: ``plane``, the frame's support plane when the support-plane check or the geometric
    proposals found one (None otherwise). ``support``: ``plane``, else one fitted now with the ``filter.*``
    settings (:func:`~.support_plane.fit_plane`) unless the frame was already searched for one (``searched``: then
    there is none); None when there is none.
    """
    mode = config.geometry.box_mode
    if mode == "free":
        return None
    if plane is not None or mode == "auto" or searched:
        return plane
    return fit_plane(config, depth, K)


class Segmenter:
    """Amodal instance segmentation of one RGB-D frame at a time.

    Args:
        config: the validated configuration (``model.*``, ``depth.*``, ``cloud.*``, ``occlusion.*`` are used).
        log: called with one human-readable line for notable events (model loaded, untrained weights ...);
            defaults to this module's logger.
        reference: run the plain code path instead of the fast paths (the network in its default memory
            format, masks pasted one RoI at a time, mask statistics by torch reductions over the full stack).
            The results are the same up to float rounding; ``isr bench`` and the tests use it to check the
            fast paths.
        overlap_proposals: compute the geometric proposals (``model.geometric_proposals: auto``: support plane and
            depth clusters, a few ms of CPU) in a worker thread while the network's backbone and RPN run, instead
            of before them. The results are the same. None (default): on an accelerator, where the CPU is idle
            while the network runs, and not on the CPU, where the network already keeps the cores busy (measured
            on 2 cores: the frame got slower, see docs/benchmarks.md). Never on the reference path.

    Call :meth:`load` once (loads and warms the model), then :meth:`process` per frame.
    """

    def __init__(self, config: Config, log: Callable[[str], None] | None = None, *, reference: bool = False,
                 overlap_proposals: bool | None = None) -> None:
        self.config = config
        self._log = log or _log.info
        self.reference = bool(reference)
        self.overlap_proposals = overlap_proposals
        self.predictor = None
        self.meta = None
        self.oom_retries = 0  # frames retried at a reduced size after running out of accelerator memory
        self.oom_skipped = 0  # frames given up after the retry ran out of memory too
        self._pool: ThreadPoolExecutor | None = None

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
            mask_threshold=m.mask_threshold, nms_threshold=m.nms_threshold, mask_nms_threshold=m.mask_nms_threshold,
            mask_nms=m.mask_nms, max_instances=m.max_instances, proposals=m.proposals, min_size=m.min_size,
            max_size=m.max_size,
            **({"channels_last": False, "paste": "loop"} if self.reference else {"reuse_buffers": True}),
        )
        self.meta = meta
        import open3d  # noqa: F401  (its first import costs ~0.5 s: pay it here, not on the first filtered frame)

        if m.warmup:
            secs = kernels.warm_up()  # compile the numba loops now (or load them from numba's cache), not on frame 1
            if secs > 0.5:
                self._log(f"compiled the CPU loops (numba) in {secs:.1f} s; later starts load them from its cache")
            self.predictor.warmup()
            cloud = np.random.default_rng(0).random((64, 3))
            oriented_box(cloud)  # first call pays ~0.6 s of numpy set-up
            support_boxes([cloud], SupportPlane(np.array([0.0, 0.0, -1.0]), 2.0, 1.0, 64))  # and cv2's import, ~25 ms
        self._log(
            f"model loaded: weights={m.weights} backbone={meta.backbone} input={meta.input_mode} "
            f"classes={len(meta.classes) - 1} device={self.predictor.device} precision={m.precision} "
            f"cpu_loops={'numba' if kernels.ENABLED else 'numpy'}"
        )

    def update_config(self, config: Config) -> None:
        """Apply a new config. Run-time values (thresholds, depth range, cloud options) take effect at once;
        a change of any other ``model.*`` value needs :meth:`release` + :meth:`load`."""
        self.config = config
        if self.predictor is not None:
            m = config.model
            self.predictor.update(
                score_threshold=m.score_threshold, mask_threshold=m.mask_threshold, max_instances=m.max_instances,
                mask_nms_threshold=m.mask_nms_threshold, mask_nms=m.mask_nms, proposals=m.proposals,
            )

    def release(self) -> None:
        """Free the model (and its GPU memory) and stop the worker thread."""
        if self.predictor is not None:
            self.predictor.release()
        self.predictor = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _overlap(self) -> bool:
        """Whether the geometric proposals run in the worker thread beside the network (see ``overlap_proposals``)."""
        if self.reference:
            return False
        if self.overlap_proposals is not None:
            return bool(self.overlap_proposals)
        return self.predictor.device.type != "cpu"

    def _worker(self) -> ThreadPoolExecutor:
        """The one worker thread the geometric proposals run in (made on first use)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="isr-proposals")
        return self._pool

    # ------------------------------------------------------------------ per frame
    #: on an out-of-memory error the frame is retried once with the network input sides scaled by this
    OOM_RETRY_SCALE = 0.5

    def process(self, color: np.ndarray, depth: np.ndarray, K: Intrinsics) -> FrameResult:
        """Segment one frame.

        Out of accelerator memory (``torch.cuda.OutOfMemoryError``): the CUDA cache is emptied and the frame is
        retried once with the network input at :attr:`OOM_RETRY_SCALE` of its size (results are still in the
        frame's pixels); if that fails too, the cache is emptied again and :class:`FrameSkipped` is raised.
        ``oom_retries`` / ``oom_skipped`` count these events.

        Args:
            color (np.ndarray[H, W, 3] uint8): RGB image.
            depth (np.ndarray[H, W] float32): registered depth in meters, NaN where invalid.
            K: intrinsics of the color camera (size must match the images).

        Returns:
            FrameResult with instances sorted by descending score and per-stage timings (ms).

        Raises:
            FrameError: the frame is malformed (sizes, intrinsics). FrameSkipped: out of memory twice.
            RuntimeError: :meth:`load` was not called.
        """
        if self.predictor is None:
            raise RuntimeError("Segmenter.process() called before load().")
        check_frame(color, depth, K)
        try:
            return self._process(color, depth, K)
        except torch.cuda.OutOfMemoryError as first:
            _free_accelerator_cache()
            self.oom_retries += 1
            pred = self.predictor
            h, w = depth.shape
            min_s, max_s = pred.input_size(h, w)
            small = (max(32, int(min_s * self.OOM_RETRY_SCALE)), max(32, int(max_s * self.OOM_RETRY_SCALE)))
            self._log(f"out of accelerator memory on a {w}x{h} frame ({one_line(first)[:200]}); "
                      f"cache emptied, retrying once with the network input at {small[1]}x{small[0]}")
            saved = (pred.min_size, pred.max_size)
            pred.min_size, pred.max_size = small
            try:
                return self._process(color, depth, K)
            except torch.cuda.OutOfMemoryError as second:
                _free_accelerator_cache()
                self.oom_skipped += 1
                raise FrameSkipped(
                    "out_of_memory",
                    f"out of accelerator memory twice (also at the reduced network input {small[1]}x{small[0]}): "
                    f"{one_line(second)[:200]}. Lower model.max_size / model.max_instances, or free GPU "
                    "memory used by other processes.",
                ) from second
            finally:
                pred.min_size, pred.max_size = saved

    def _process(self, color: np.ndarray, depth: np.ndarray, K: Intrinsics) -> FrameResult:
        cfg = self.config
        h, w = depth.shape
        plane, fitted, extra, t_prop = None, False, None, 0.0
        net_depth = depth if cfg.model.network_depth else np.full_like(depth, np.nan)
        if cfg.model.geometric_proposals == "auto" and self._overlap():
            # the plane and the depth clusters are computed in a worker thread while the backbone and the RPN run;
            # the frame pays only the wait for them (``proposals``)
            job = self._worker().submit(_geometric_proposals, cfg, depth, K)
            waited = [0.0]

            def extra_proposals() -> np.ndarray | None:
                t0 = time.perf_counter()
                found = job.result()
                waited[0] += (time.perf_counter() - t0) * 1e3
                return found[1]

            det = self.predictor.predict(color, net_depth, extra_proposals=extra_proposals)
            plane, _, _ = job.result()
            fitted, t_prop = True, waited[0]
        else:
            if cfg.model.geometric_proposals == "auto":
                plane, extra, t_prop = _geometric_proposals(cfg, depth, K)
                fitted = True
            det = self.predictor.predict(color, net_depth, extra_proposals=extra)
        timings = {k: float(v) for k, v in det.timings.items()}
        if fitted:
            timings["proposals"] = t_prop

        t0 = time.perf_counter()
        summary = summarize_masks(det.masks, det.amodal_masks, det.scores, det.labels,
                                  path="reference" if self.reference else "auto", regions=det.regions)
        masks = summary.masks
        boxes_h, aboxes_h, occ_h = summary.boxes, summary.amodal_boxes, summary.occlusion
        scores_h, labels_h, crops, acrops = summary.scores, summary.labels, summary.crops, summary.amodal_crops
        label_np = summary.label_image
        timings["postprocess"] = timings.get("postprocess", 0.0) + (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        if self.predictor.device.type != "cpu" and not self.reference:
            # lift where the masks are: upload depth (and color) once, pinned and asynchronous
            depth_in = _upload(depth, self.predictor.device)
            color_in = _upload(color, self.predictor.device) if cfg.cloud.with_rgb else None
        else:
            depth_in, color_in = depth, (color if cfg.cloud.with_rgb else None)
        clouds = lift_instances(
            depth_in, masks, K, color=color_in, depth_min=cfg.depth.min,
            depth_max=cfg.depth.max, flying_pixel_threshold=cfg.depth.flying_pixel_threshold,
            erode_px=cfg.depth.erode_px, boxes=None if self.reference else boxes_h,
        )
        timings["lift"] = (time.perf_counter() - t0) * 1e3

        on_plane = np.zeros(len(clouds), bool)
        if cfg.filter.support_plane == "auto":
            t0 = time.perf_counter()
            plane, on_plane = support_plane_check(cfg, depth, K, [c.points for c in clouds], label_np,
                                                  plane=plane, refit=not fitted)
            timings["support_plane"] = (time.perf_counter() - t0) * 1e3

        t_filter = 0.0
        classes = self.meta.classes if self.meta is not None else ["__background__", "object"]
        instances: list[InstanceResult] = []
        dropped: list[InstanceResult] = []
        for i, cloud in enumerate(clouds):
            t0 = time.perf_counter()
            pts, cols = filter_for_config(cfg.cloud, cloud.points, cloud.colors)
            t_filter += time.perf_counter() - t0
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
            if on_plane[i]:
                dropped.append(inst)
            else:
                instances.append(inst)
        if dropped:
            label_np = renumber_instances(instances, label_np)
        timings["cloud_filter"] = t_filter * 1e3

        t0 = time.perf_counter()
        searched = fitted or cfg.filter.support_plane == "auto"  # then ``plane`` is the frame's, or it has none
        attach_geometry(instances, cfg.cloud.min_points,
                        plane=box_plane(cfg, plane, searched=searched, depth=depth, K=K))
        timings["geometry"] = (time.perf_counter() - t0) * 1e3
        timings["total"] = sum(v for k, v in timings.items() if k != "total")
        # the plane is reported when the support-plane check ran (proposals may fit one without the check)
        return FrameResult(width=w, height=h, instances=instances, label_image=label_np, timings=timings,
                           support_plane=plane if cfg.filter.support_plane == "auto" else None, dropped=dropped)
