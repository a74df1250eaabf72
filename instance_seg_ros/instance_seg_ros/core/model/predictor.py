"""Run the amodal Mask R-CNN on one camera frame.

>>> model, meta = load_model("none", backbone="resnet18_fpn", input_mode="rgb")
>>> predictor = Predictor(model, meta, device="auto", score_threshold=0.5)
>>> det = predictor.predict(color, depth)          # color [H, W, 3] uint8 RGB, depth [H, W] float32 m
>>> det.masks.shape, det.timings["inference"]      # torch.Size([N, H, W]) bool on the device, ms

The network input size is, per side, ``min_size`` / ``max_size`` when set, else the inference size
the weights' meta records (``infer_min_size`` / ``infer_max_size``: a model trained by ``isr train`` at
240x320 runs at 240x320), else the camera's own resolution (no upscaling to torchvision's 800 px). Results stay
torch tensors **on the device**; the caller decides what to copy back.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.models.detection.transform import resize_boxes

from .. import kernels
from .amodal_maskrcnn import AmodalMaskRCNN
from .inputs import check_model_input, frame_to_input
from .meta import ModelMeta

__all__ = [
    "PASTE_MODES",
    "Detections",
    "Predictor",
    "PredictorError",
    "mask_overlap_keep",
    "paste_masks_batched",
    "paste_masks_opencv",
    "paste_masks_thresholded",
    "paste_probs_opencv",
    "resolve_device",
]

_log = logging.getLogger(__name__)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: How RoI masks are pasted into the image: ``loop`` (one ``F.interpolate`` per RoI: the reference), ``opencv`` (one
#: ``cv2.resize`` per RoI channel: cheapest on a CPU), ``batched`` (all RoIs in two batched matrix products, few kernel
#: launches: for accelerators), ``auto`` (batched on accelerators, opencv on the CPU).
PASTE_MODES = ("auto", "loop", "batched", "opencv")
#: how overlapping visible masks are settled (:func:`mask_overlap_keep` / :func:`mask_ownership_keep`)
MASK_NMS_MODES = ("containment", "ownership")


class PredictorError(ValueError):
    """A predictor setting is invalid or cannot be honoured here; the message says what to change."""


@dataclass
class Detections:
    """Detections of one frame, sorted by descending score; tensors live on the predictor's device.

    Attributes:
        boxes (Tensor[N, 4] float32): x1, y1, x2, y2 in image pixels (the box the masks were pasted in;
            it bounds the amodal mask).
        labels (Tensor[N] int64): class index into ``class_names`` (1.. ; 0 is the background).
        scores (Tensor[N] float32): detection confidence, all ≥ the score threshold.
        masks (Tensor[N, H, W] bool): visible masks.
        amodal_masks (Tensor[N, H, W] bool): full-shape masks; ``amodal_masks ⊇ masks`` always.
        occlusion_pred (Tensor[N] float32): the occlusion head's predicted hidden fraction in [0, 1]; used by the
            training evaluation only (the pipeline publishes the hidden fraction computed from the masks).
        class_names (list[str]): the model's class names (``class_names[label]``).
        timings (dict[str, float]): milliseconds for ``preprocess``, ``inference``, ``postprocess``.
        regions (Tensor[N, 4] int64 | None): per detection, ``x0, y0, x1, y1`` (ends exclusive, inside the image)
            of the region its masks were pasted into: no pixel of either mask lies outside it, so the masks' boxes
            and crops can be found there instead of over the whole image. None: not known.
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    masks: torch.Tensor
    amodal_masks: torch.Tensor
    occlusion_pred: torch.Tensor
    class_names: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    regions: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the masks."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def names(self) -> list[str]:
        """Class name of each detection."""
        return [self.class_names[i] for i in self.labels.tolist()]

    def to(self, device: torch.device | str) -> Detections:
        """A copy with every tensor on ``device`` (e.g. ``"cpu"`` before converting to numpy)."""
        t = {k: getattr(self, k).to(device) for k in ("boxes", "labels", "scores", "masks", "amodal_masks",
                                                         "occlusion_pred")}
        regions = None if self.regions is None else self.regions.to(device)
        return Detections(**t, class_names=self.class_names, timings=dict(self.timings), regions=regions)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → cuda when available else cpu; ``cpu``, ``cuda``, ``cuda:N`` are checked against this machine."""
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    head, _, idx = name.partition(":")
    if head == "cpu" and not idx:
        return torch.device("cpu")
    if head == "cuda" and (not idx or idx.isdigit()):
        if not torch.cuda.is_available():
            raise PredictorError(f"device {device!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'.")
        if idx and int(idx) >= torch.cuda.device_count():
            raise PredictorError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)."
            )
        return torch.device(name)
    raise PredictorError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}.")


def _paste_setup(
    probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What both paste paths share (torchvision's geometry): the all-False output ``[N, K, H, W]`` bool, the RoI
    masks padded by one pixel ``[N, K, M+2, M+2]`` and the boxes expanded to match, ``[N, 4]`` int64 pixels."""
    n, k = probs.shape[:2]
    out = torch.zeros((n, k, *image_size), dtype=torch.bool, device=probs.device)
    if n == 0:
        return out, probs, boxes.to(torch.int64).reshape(0, 4)
    padded, _ = expand_masks(probs, padding=1)
    return out, padded, _paste_boxes(boxes, probs.shape[-1])


def _paste_boxes(boxes: torch.Tensor, m: int) -> torch.Tensor:
    """``[N, 4]`` int64: the boxes that ``m x m`` RoI masks padded by one pixel are pasted into (torchvision's
    ``expand_boxes`` by ``(m + 2) / m``); nothing of a mask is pasted outside its box."""
    return expand_boxes(boxes.float(), (m + 2) / m).to(torch.int64)


def paste_regions(boxes: torch.Tensor, m: int, image_size: tuple[int, int]) -> torch.Tensor:
    """``[N, 4]`` int64 ``x0, y0, x1, y1`` (ends exclusive, clipped to the image): where the paste of ``m x m`` RoI
    masks into ``boxes`` can set pixels (:func:`_paste_boxes`, as :func:`paste_masks_thresholded` clips it)."""
    return _clip_regions(_paste_boxes(boxes, m), image_size)


def _clip_regions(ib: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Expanded integer boxes ``ib`` ``[N, 4]`` (inclusive ends) as ``x0, y0, x1, y1`` with exclusive ends, clipped
    to the image (empty: ``x1 == x0`` or ``y1 == y0``)."""
    h, w = image_size
    x0, y0 = ib[:, 0].clamp(0, w), ib[:, 1].clamp(0, h)
    x1 = torch.maximum((ib[:, 2] + 1).clamp_max(w), x0)
    y1 = torch.maximum((ib[:, 3] + 1).clamp_max(h), y0)
    return torch.stack([x0, y0, x1, y1], dim=1)


def paste_masks_thresholded(
    probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], threshold: float
) -> torch.Tensor:
    """Paste RoI mask probabilities into the image and threshold them.

    Same geometry as torchvision's ``paste_masks_in_image`` (1-pixel padding, bilinear resize to
    the box), but all channels of an RoI in one resize, and bool output (no float image per mask).

    Args:
        probs (Tensor[N, K, M, M] float): K mask channels per RoI (e.g. visible and amodal).
        boxes (Tensor[N, 4] float): boxes in image pixels.
        image_size ((H, W)): output size.
        threshold (float): a pixel is inside when its probability is above this.

    Returns:
        Tensor[N, K, H, W] bool.
    """
    out, padded, ib = _paste_setup(probs, boxes, image_size)
    clipped = _clip_regions(ib, image_size).tolist()  # where pixels are set: paste_regions
    for i, ((x0, y0, x1, y1), (cx0, cy0, cx1, cy1)) in enumerate(zip(ib.tolist(), clipped, strict=True)):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        m = F.interpolate(padded[i : i + 1].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
        out[i, :, cy0:cy1, cx0:cx1] = m[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] > threshold
    return out


def _opencv_pastes(probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]):
    """What :func:`paste_masks_opencv` and :func:`paste_probs_opencv` share: for each RoI channel whose box reaches
    into the image, ``(i, k, (y0, y1, x0, x1), values)``: the clipped region of the image (as
    :func:`paste_regions`) and the probabilities there (``float32[y1 - y0, x1 - x0]``), from ``cv2.resize``
    (``INTER_LINEAR``) of the RoI mask padded by one pixel to its expanded box (torchvision's geometry)."""
    import cv2

    padded, _ = expand_masks(probs, padding=1)
    ib = _paste_boxes(boxes, probs.shape[-1])
    src = padded.detach().to(torch.float32).numpy()  # [N, K, M + 2, M + 2]
    clipped = _clip_regions(ib, image_size).tolist()
    for i, ((x0, y0, x1, y1), (cx0, cy0, cx1, cy1)) in enumerate(zip(ib.tolist(), clipped, strict=True)):
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        for k in range(src.shape[1]):
            m = cv2.resize(src[i, k], (w, h), interpolation=cv2.INTER_LINEAR)
            yield i, k, (cy0, cy1, cx0, cx1), m[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]


def paste_masks_opencv(
    probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], threshold: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`paste_masks_thresholded` on the CPU with OpenCV: each RoI channel resized by ``cv2.resize``
    (``INTER_LINEAR``: the same half-pixel bilinear sampling and edge clamping as ``F.interpolate(bilinear,
    align_corners=False)``) and thresholded straight into the output. Same geometry (padding, expanded boxes, the
    clip of :func:`paste_regions`); about 2.5x cheaper per RoI than the torch call here. OpenCV computes the sample
    positions in double precision, so a probability may differ by a few 1e-6 and a pixel that close to
    ``threshold`` may flip. CPU tensors only.

    Args:
        out: an all-False ``Tensor[N, K, H, W]`` bool to paste into (e.g. a buffer kept from frame to frame), instead
            of a new one.

    Returns:
        Tensor[N, K, H, W] bool (CPU): ``out`` when given.
    """
    n, k = probs.shape[:2]
    if out is None:
        out = torch.zeros((n, k, *image_size), dtype=torch.bool)
    o = out.numpy()
    for i, c, (y0, y1, x0, x1), m in _opencv_pastes(probs, boxes, image_size) if n else ():
        np.greater(m, threshold, out=o[i, c, y0:y1, x0:x1])
    return out


def mask_overlap_keep(masks: torch.Tensor, threshold: float, stride: int = 4) -> torch.Tensor:
    """Indices of the detections to keep when each one's visible mask may lie at most ``threshold`` inside the
    visible mask of a higher-scored kept one (``masks`` sorted by score, best first).

    A pixel shows one surface, so two visible masks that share most of the smaller one are one object seen twice:
    a duplicate, or a part (a label, a print panel, a highlight) of the whole. The overlap is measured on a
    ``stride`` grid as intersection / the candidate's own area, so a lower-scored detection that contains a better
    one (a whole object around a part found first) is kept.

    Args:
        masks (Tensor[N, H, W] bool): visible masks, best score first.
        threshold: in [0, 1]; 1 keeps everything.
    """
    n = masks.shape[0]
    if n < 2:
        return torch.arange(n, device=masks.device)
    m = masks[:, ::stride, ::stride].reshape(n, -1).to(torch.float32)
    area = m.sum(dim=1)
    inter = m @ m.T
    inside = (inter / area[:, None].clamp_min(1.0)).cpu().numpy()  # [i, j]: share of i inside j
    keep: list[int] = []
    for i in range(n):
        if all(inside[i, j] <= threshold for j in keep):  # an empty mask overlaps nothing: kept
            keep.append(i)
    return torch.as_tensor(keep, dtype=torch.long, device=masks.device)


def paste_probs_batched(probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """RoI mask probabilities pasted into an image of ``image_size`` (same geometry as
    :func:`paste_masks_batched`), as floats: ``Tensor[N, K, H, W]``, 0 outside each box. Meant for small (coarse)
    images: it holds every RoI's full image at once."""
    n, k = probs.shape[:2]
    h_img, w_img = image_size
    if n == 0:
        return torch.zeros((0, k, h_img, w_img), dtype=torch.float32, device=probs.device)
    _, padded, ib = _paste_setup(probs, boxes, image_size)
    wy, wx = _paste_weights(ib, padded.shape[-1], image_size)
    return _resize_rois(padded.to(torch.float32), wy, wx)


def paste_probs_opencv(probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """:func:`paste_probs_batched` on the CPU with ``cv2.resize`` per RoI channel (as :func:`paste_masks_opencv`;
    probabilities equal to a few 1e-6): ``Tensor[N, K, H, W]`` float32, 0 outside each box."""
    n, k = probs.shape[:2]
    out = torch.zeros((n, k, *image_size), dtype=torch.float32)
    o = out.numpy()
    for i, c, (y0, y1, x0, x1), m in _opencv_pastes(probs, boxes, image_size) if n else ():
        o[i, c, y0:y1, x0:x1] = m
    return out


def _coarse_q_opencv(probs: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], scores: torch.Tensor,
                     mask_threshold: float) -> torch.Tensor:
    """:func:`mask_ownership_keep`'s ``q`` (``[N, H * W]`` float32: score x coarse probability, 0 where the probability
    is at most ``mask_threshold``) computed region by region as the probabilities are pasted (:func:`_opencv_pastes`)
    instead of over whole coarse images: the same float32 products and comparisons."""
    n = probs.shape[0]
    q = torch.zeros((n, *size), dtype=torch.float32)
    o, sc, thr = q.numpy(), scores.float().numpy(), np.float32(mask_threshold)
    for i, _, (y0, y1, x0, x1), m in _opencv_pastes(probs[:, None].float(), boxes, size) if n else ():
        region = np.multiply(m, sc[i], out=o[i, y0:y1, x0:x1])
        region[m <= thr] = 0.0
    return q.flatten(1)


def mask_ownership_keep(
    masks: torch.Tensor, probs: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, threshold: float,
    mask_threshold: float = 0.5, stride: int = 4, inplace: bool = False, opencv: bool = False, _dense: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resolve overlapping visible masks pixel by pixel: each pixel claimed by several detections belongs to the
    one with the highest ``score x mask probability`` there; a detection that owns no more than
    ``1 - threshold`` of its own mask is dropped (a duplicate, or a part such as a label or a highlight of a
    surer whole), and ownership is settled again among the rest.

    Unlike :func:`mask_overlap_keep`, a lower-scored detection that the network is surer of where two masks
    overlap keeps those pixels: when a higher-scored mask spills over a touching object (a merge), the object's
    own detection survives and the spill is given back to it. The kept visible masks are disjoint: a pixel
    shows one surface. Ownership is computed on a ``stride`` grid from the RoI probabilities.

    Args:
        masks (Tensor[N, H, W] bool): visible masks (thresholded), best score first.
        probs (Tensor[N, M, M] float): their RoI visible-mask probabilities.
        boxes (Tensor[N, 4] float): their boxes in image pixels.
        scores (Tensor[N] float): detection scores.
        threshold: in [0, 1]; 1 keeps every detection (overlaps are still given to one owner).
        inplace: settle the overlaps in ``masks`` itself instead of a copy (for a caller that owns ``masks``): the
            kept masks are moved up to its first rows and the result is a view of them.
        opencv: paste the coarse probabilities with OpenCV (as :func:`paste_probs_opencv`; CPU tensors; equal to a
            few 1e-6) and form the ``score x probability`` weights region by region, instead of
            :func:`paste_probs_batched` and whole-image products.

    Returns:
        (kept indices ``Tensor[K]`` long, in the input order; the kept masks ``Tensor[K, H, W]`` bool, disjoint).
    """
    n, h, w = masks.shape
    dev = masks.device
    if n < 2:
        return torch.arange(n, device=dev), masks
    hc, wc = -(-h // stride), -(-w // stride)
    coarse_boxes = boxes.float() / stride
    if opencv and dev.type == "cpu":
        q = _coarse_q_opencv(probs, coarse_boxes, (hc, wc), scores, mask_threshold)
    else:
        pc = paste_probs_batched(probs[:, None].float(), coarse_boxes, (hc, wc))[:, 0].flatten(1)  # [N, hc * wc]
        below = pc <= mask_threshold
        q = pc.mul_(scores.float()[:, None]).masked_fill_(below, 0.0)  # in place: pc is our own
    if dev.type == "cpu" and not _dense:  # numpy's bool reductions are several times cheaper than torch's
        kept = torch.from_numpy(np.flatnonzero(_alive_np(q.numpy(), threshold)))
    else:
        kept = _alive_torch(q, threshold)
    if inplace:  # the kept rows moved up in place (no new image stack): out is a view of masks' first rows
        for dst, src in enumerate(kept.tolist()):
            if dst != src:
                masks[dst] = masks[src]
        out = masks[: len(kept)]
    else:
        out = masks[kept]  # a copy
    qk = q[kept].reshape(-1, hc, wc)
    # shared pixels: to the higher score x probability there (q is one number per detection and pixel, so the
    # pairwise verdicts agree where three masks meet); where the coarse grid has no probability for either, to the
    # higher-scored detection (the earlier one). On the CPU pair by pair (numpy); elsewhere all at once.
    if out.device.type == "cpu" and not _dense:
        _settle_pairs_np(out.numpy(), qk.numpy(), _paste_boxes(boxes[kept], probs.shape[-1]).numpy(), stride)
    else:
        _settle_dense(out, qk, stride)
    return kept, out


def _alive_torch(q: torch.Tensor, threshold: float) -> torch.Tensor:
    """The detections :func:`mask_ownership_keep` keeps (indices, ascending), from ``q`` ``[N, cells]`` (score x
    coarse probability, 0 where a detection does not claim the cell): while some detection owns no more than
    ``1 - threshold`` of its claimed cells, the lowest-scored such one is dropped and ownership settled again."""
    n, dev = q.shape[0], q.device
    claimed = q > 0
    area = claimed.sum(1)
    empty = area == 0  # nothing on the coarse grid to contest: kept, like an empty mask in mask_overlap_keep
    area = area.clamp_min(1)
    # only cells claimed by two or more detections can change hands; every other claimed cell stays its claimant's
    contested = claimed.sum(0) >= 2
    qc = q[:, contested]  # [N, C]
    sole = area - claimed[:, contested].sum(1)
    alive = torch.ones(n, dtype=torch.bool, device=dev)
    idx = torch.arange(n, device=dev)[:, None]
    for _ in range(n):
        best = torch.where(alive[:, None], qc, torch.zeros_like(qc)).max(dim=0)
        owned = ((best.indices[None] == idx) & (best.values[None] > 0)).sum(1) + sole
        share = torch.where(empty, 1.0, owned / area)
        losing = alive & (share < 1.0 - threshold)
        if not bool(losing.any()):
            break
        # drop the lowest-scored loser only, then settle ownership again (its pixels may go back to others)
        alive[int(torch.nonzero(losing)[-1])] = False
    return torch.nonzero(alive)[:, 0]


def _alive_np(q: np.ndarray, threshold: float) -> np.ndarray:
    """:func:`_alive_torch` in numpy (bool[N] alive), with the same float32 arithmetic and the same tie rule (the
    first of equal maxima owns a cell)."""
    if kernels.ENABLED:
        return kernels.alive(q, threshold)
    n = q.shape[0]
    claimed = (q > 0).view(np.uint8)  # counted with uint8 / int32 sums: several times cheaper than count_nonzero
    area = np.add.reduce(claimed, axis=1, dtype=np.int32)
    empty = area == 0
    area32 = np.maximum(area, 1).astype(np.float32)
    claimants = np.add.reduce(claimed, axis=0, dtype=np.uint8 if n < 256 else np.int32)
    work = q.take(np.flatnonzero(claimants >= 2), axis=1)  # [N, contested cells], a copy
    sole = area - np.add.reduce((work > 0).view(np.uint8), axis=1, dtype=np.int32)
    alive = np.ones(n, bool)
    limit = np.float32(1.0 - threshold)
    for _ in range(n):
        best = work.argmax(axis=0)
        won = best[work[best, np.arange(work.shape[1])] > 0]
        owned = np.bincount(won, minlength=n) + sole
        share = np.where(empty, np.float32(1.0), owned.astype(np.float32) / area32)
        losing = alive & (share < limit)
        if not losing.any():
            break
        drop = int(np.flatnonzero(losing)[-1])
        alive[drop] = False
        work[drop] = 0.0
    return alive


def _settle_pairs_np(out: np.ndarray, qk: np.ndarray, ib: np.ndarray, stride: int) -> None:
    """:func:`mask_ownership_keep`'s shared pixels settled in ``out`` ``[K, H, W]`` bool (in place), pair by pair
    inside the intersection of the two masks' paste boxes ``ib`` ``[K, 4]`` (nothing is pasted outside them): to the
    higher ``qk`` ``[K, H / stride, W / stride]`` there, ties to the earlier detection (the higher-scored)."""
    h, w = out.shape[1:]
    lo = np.maximum(ib[:, None, :2], ib[None, :, :2]).clip(min=0)  # [K, K, (x, y)]
    hi = np.minimum(ib[:, None, 2:], ib[None, :, 2:]) + 1
    hi[..., 0] = hi[..., 0].clip(max=w)
    hi[..., 1] = hi[..., 1].clip(max=h)
    first, second = np.nonzero(np.triu((hi > lo).all(axis=2), k=1))  # the pairs whose paste boxes intersect
    if kernels.ENABLED:  # the same pairs in the same order, pixel by pixel in one compiled loop
        kernels.settle_pairs(out, np.ascontiguousarray(qk, np.float32), np.stack([first, second], axis=1),
                             lo[first, second], hi[first, second], stride)
        return
    for i, j in zip(first, second, strict=True):
        (x0, y0), (x1, y1) = lo[i, j], hi[i, j]
        ys, xs = np.nonzero(out[i, y0:y1, x0:x1] & out[j, y0:y1, x0:x1])
        if len(ys) == 0:
            continue
        ys += y0
        xs += x0
        cy, cx = ys // stride, xs // stride
        j_wins = qk[j, cy, cx] > qk[i, cy, cx]
        out[i, ys[j_wins], xs[j_wins]] = False
        out[j, ys[~j_wins], xs[~j_wins]] = False


def _settle_dense(out: torch.Tensor, qk: torch.Tensor, stride: int) -> None:
    """:func:`_settle_pairs_np`'s result for any device, over the whole image at once (cheap on an accelerator):
    each pixel stays only in the claiming mask with the highest ``qk``, the earliest one among equals, which is the
    one that wins every pairwise comparison."""
    h, w = out.shape[1:]
    if out.shape[0] < 2:
        return
    rows = torch.arange(h, device=out.device) // stride
    cols = torch.arange(w, device=out.device) // stride
    v = torch.where(out, qk[:, rows][:, :, cols], -1.0)  # [K, H, W]; q >= 0 where a mask claims
    first = out & (v == v.max(dim=0, keepdim=True).values)
    first &= first.cumsum(dim=0, dtype=torch.int16) == 1
    out.copy_(first)


def _resize_weights(start: torch.Tensor, size: torch.Tensor, n_src: int, n_out: int) -> torch.Tensor:
    """Per-RoI 1-D bilinear resize weights as matrices: ``[N, n_out, n_src]`` float32.

    Row ``j`` of RoI ``i`` holds the weights with which output pixel ``j`` (an image coordinate) samples the
    ``n_src`` source cells when the source is resized to ``size[i]`` pixels placed at ``start[i]``
    (``F.interpolate(mode="bilinear", align_corners=False)``'s sampling); rows outside ``[start, start + size)``
    are zero.
    """
    dst = torch.arange(n_out, device=start.device)
    r = dst[None, :] - start[:, None]  # position inside the RoI, [N, n_out]
    inside = (r >= 0) & (r < size[:, None])
    scale = float(n_src) / size.to(torch.float32)  # PyTorch's area_pixel_compute_scale: in / out as float
    src = ((r.to(torch.float32) + 0.5) * scale[:, None] - 0.5).clamp_(min=0.0)
    i0 = src.to(torch.int64).clamp_(max=n_src - 1)  # truncation == floor for src >= 0
    l1 = src - i0.to(torch.float32)
    i1 = (i0 + 1).clamp_(max=n_src - 1)
    wgt = torch.zeros((start.shape[0], n_out, n_src), dtype=torch.float32, device=start.device)
    keep = inside.to(torch.float32)
    wgt.scatter_add_(2, i0[..., None], ((1.0 - l1) * keep)[..., None])
    wgt.scatter_add_(2, i1[..., None], (l1 * keep)[..., None])
    return wgt


def paste_masks_batched(
    probs: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    threshold: float,
    *,
    max_elements: int = 1 << 24,
) -> torch.Tensor:
    """:func:`paste_masks_thresholded` with all RoIs at once: the bilinear resize of each RoI's padded mask to
    its box is separable, so it is two batched matrix products with per-RoI resize matrices (a handful of
    kernel launches instead of several per RoI). Same geometry and sampling; probabilities may differ from the
    per-RoI resize by float rounding, so a pixel within ~1e-6 of ``threshold`` may flip.

    Args:
        probs (Tensor[N, K, M, M] float), boxes (Tensor[N, 4] float), image_size ((H, W)), threshold (float):
            as :func:`paste_masks_thresholded`.
        max_elements: RoIs are processed in chunks of at most this many float32 intermediate elements
            (``K * H * W`` per RoI), which bounds the temporary memory (64 MB by default).

    Returns:
        Tensor[N, K, H, W] bool.
    """
    n, k = probs.shape[:2]
    h_img, w_img = image_size
    out, padded, ib = _paste_setup(probs, boxes, image_size)
    if n == 0:
        return out
    wy, wx = _paste_weights(ib, padded.shape[-1], image_size)
    src = padded.to(torch.float32)
    step = max(1, int(max_elements) // max(1, k * h_img * w_img))
    for a in range(0, n, step):
        b = min(a + step, n)
        torch.gt(_resize_rois(src[a:b], wy[a:b], wx[a:b]), threshold, out=out[a:b])
    return out


def _paste_weights(ib: torch.Tensor, m: int, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-RoI resize matrices that paste padded ``m x m`` RoI masks into their expanded integer boxes ``ib``
    (``[N, 4]``) of an image of ``image_size``: ``(wy [N, H, m], wx [N, W, m])``."""
    x0, y0 = ib[:, 0], ib[:, 1]
    w = (ib[:, 2] - x0 + 1).clamp_(min=1)
    h = (ib[:, 3] - y0 + 1).clamp_(min=1)
    return _resize_weights(y0, h, m, image_size[0]), _resize_weights(x0, w, m, image_size[1])


def _resize_rois(src: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor) -> torch.Tensor:
    """``src`` ``[n, K, m, m]`` float pasted with :func:`_paste_weights`' matrices: ``[n, K, H, W]`` float."""
    cols = torch.einsum("nkij,nwj->nkiw", src, wx)  # [n, K, m, W]
    return torch.einsum("nhi,nkiw->nkhw", wy, cols)


class Predictor:
    """Amodal instance segmentation of single frames with one model on one device.

    Args:
        model (AmodalMaskRCNN): e.g. from :func:`~.weights.load_model`; moved to ``device``, eval mode.
        meta (ModelMeta): its metadata (class names, input mode).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        precision: ``fp32`` | ``fp16`` | ``bf16`` (CUDA autocast; CPU always runs fp32, with a log note).
        score_threshold, mask_threshold, nms_threshold (float in [0, 1]), max_instances (int ≥ 1):
            may be changed between frames (attributes or :meth:`update`).
        min_size, max_size (int): network input short / long side; 0 = the weights' inference size
            (``meta.infer_min_size`` / ``infer_max_size``) when set, else the frame's own size.
        threads (int): ``torch.set_num_threads`` (process-wide) when > 0.
        log: callable taking one message (e.g. a ROS logger's ``info``); ``logging`` otherwise.
        channels_last (bool | None): run the network in channels-last (NHWC) memory format, which cuDNN's
            tensor-core kernels prefer under fp16/bf16 autocast. ``None`` = on CUDA only: on CPUs (oneDNN) it
            measured slower here (resnet50_fpn 640x480: 1144 vs 965 ms; efficientnet_lite0_fpn at 320x240: even).
        paste: how RoI masks are pasted into the image, one of :data:`PASTE_MODES` (``auto``: ``batched`` on
            accelerators, ``opencv`` on the CPU; ``loop`` is the plain per-RoI ``F.interpolate``, the reference).
        reuse_buffers: with the ``opencv`` paste, paste into one mask stack kept from frame to frame (only the
            regions the last frame wrote are cleared: no new multi-megabyte allocation, and its page faults, per
            frame). The masks of a :class:`Detections` are then views of it, **valid until the next**
            :meth:`predict`: for a caller that consumes them at once, as the :class:`~..pipeline.Segmenter` does.
    """

    def __init__(
        self,
        model: AmodalMaskRCNN,
        meta: ModelMeta,
        *,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        nms_threshold: float = 0.5,
        mask_nms_threshold: float = 1.0,
        mask_nms: str = "containment",
        max_instances: int = 30,
        proposals: int = 0,
        min_size: int = 0,
        max_size: int = 0,
        threads: int = 0,
        log: Callable[[str], Any] | None = None,
        channels_last: bool | None = None,
        paste: str = "auto",
        reuse_buffers: bool = False,
    ) -> None:
        if not isinstance(model, AmodalMaskRCNN):
            raise PredictorError(f"model must be an AmodalMaskRCNN, got {type(model).__name__}.")
        if not isinstance(meta, ModelMeta):
            raise PredictorError(f"meta must be a ModelMeta, got {type(meta).__name__}.")
        if meta.input_mode != model.input_mode or meta.num_classes != model.num_classes:
            raise PredictorError(
                f"meta ({meta.input_mode}, {meta.num_classes} classes) does not describe this model "
                f"({model.input_mode}, {model.num_classes} classes); pass the meta returned with the model."
            )
        self._log_fn = log
        self.model = model
        self.meta = meta
        self.device = resolve_device(device)
        if precision not in PRECISIONS:
            raise PredictorError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
        if precision != "fp32" and self.device.type != "cuda":
            self._log(f"precision {precision} needs CUDA; running fp32 on {self.device}.")
            precision = "fp32"
        self.precision = precision
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise PredictorError(f"threads must be an integer >= 0, got {threads!r}.")
        if threads > 0:
            torch.set_num_threads(threads)
        self.score_threshold = 0.5
        self.mask_threshold = 0.5
        self.nms_threshold = 0.5
        self.mask_nms_threshold = 1.0
        self.mask_nms = "containment"
        self.max_instances = 30
        self.proposals = 0
        # the model's own RPN test settings (as built; the live values may have been changed by another Predictor)
        built = getattr(model, "builder_kwargs", {}) or {}
        self._model_proposals = int(built.get("rpn_post_nms_top_n_test", model.rpn._post_nms_top_n["testing"]))
        self._model_pre_nms = int(built.get("rpn_pre_nms_top_n_test", model.rpn._pre_nms_top_n["testing"]))
        self.min_size = 0
        self.max_size = 0
        self.update(
            score_threshold=score_threshold,
            mask_threshold=mask_threshold,
            nms_threshold=nms_threshold,
            mask_nms_threshold=mask_nms_threshold,
            mask_nms=mask_nms,
            max_instances=max_instances,
            proposals=proposals,
            min_size=min_size,
            max_size=max_size,
        )
        if paste not in PASTE_MODES:
            raise PredictorError(f"paste must be one of {', '.join(PASTE_MODES)}, got {paste!r}.")
        self.paste = ("opencv" if self.device.type == "cpu" else "batched") if paste == "auto" else paste
        if self.paste == "opencv" and self.device.type != "cpu":
            raise PredictorError(f"paste 'opencv' runs on the CPU only, and the device is {self.device}.")
        self.channels_last = (self.device.type == "cuda") if channels_last is None else bool(channels_last)
        self._last_size: tuple[int, int] | None = None
        self._input_buf: torch.Tensor | None = None  # the CPU network input's frame-sized work tensor (_cpu_input)
        self.reuse_buffers = bool(reuse_buffers)
        self._paste_buf: torch.Tensor | None = None  # reuse_buffers: the mask stack [slots, 2, H, W] bool
        self._paste_dirty: list[list[tuple[int, int, int, int]]] = []  # per slot, the regions written into it
        self.model.eval()
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._on_device = True

    def _log(self, msg: str) -> None:
        if self._log_fn is not None:
            self._log_fn(msg)
        else:
            _log.info(msg)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def input_mode(self) -> str:
        return self.model.input_mode

    def update(self, **settings: Any) -> None:
        """Change run-time settings: ``score_threshold``, ``mask_threshold``, ``nms_threshold``,
        ``mask_nms_threshold`` (floats in [0, 1]), ``max_instances`` (≥ 1), ``proposals`` (RPN proposals kept
        after its NMS, 0 = the model's own), ``min_size`` / ``max_size`` (≥ 0, 0 = native)."""
        floats = ("score_threshold", "mask_threshold", "nms_threshold", "mask_nms_threshold")
        ints = {"max_instances": 1, "proposals": 0, "min_size": 0, "max_size": 0}
        for k, v in settings.items():
            if k == "mask_nms":
                if v not in MASK_NMS_MODES:
                    raise PredictorError(f"mask_nms must be one of {', '.join(MASK_NMS_MODES)}, got {v!r}.")
                self.mask_nms = v
            elif k in floats:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    raise PredictorError(f"{k} must be a number in [0, 1], got {v!r}.")
                setattr(self, k, float(v))
            elif k in ints:
                if isinstance(v, bool) or not isinstance(v, int) or v < ints[k]:
                    raise PredictorError(f"{k} must be an integer >= {ints[k]}, got {v!r}.")
                setattr(self, k, v)
            else:
                raise PredictorError(
                    f"Unknown predictor setting {k!r}; known: {', '.join((*floats, *ints, 'mask_nms'))}.")

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """``(min_size, max_size)`` the network input is resized to for a ``height`` x ``width`` frame:
        each side from the predictor's setting when nonzero, else the weights' inference size
        (``meta.infer_min_size`` / ``infer_max_size``, set by ``isr train``) when nonzero, else the frame's own."""
        min_s = self.min_size or int(getattr(self.meta, "infer_min_size", 0) or 0) or min(height, width)
        max_s = self.max_size or int(getattr(self.meta, "infer_max_size", 0) or 0) or max(height, width)
        return min_s, max_s

    # ----------------------------------------------------------------- running
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _autocast(self):
        if self.device.type == "cuda" and self.precision != "fp32":
            return torch.autocast("cuda", dtype=PRECISIONS[self.precision])
        return contextlib.nullcontext()

    def _ensure_on_device(self) -> None:
        if not self._on_device:
            self._log(f"Moving the model back to {self.device} after release().")
            self.model.to(self.device)
            self._on_device = True

    def predict(self, color: np.ndarray, depth: np.ndarray | None = None, *,
                extra_proposals: np.ndarray | Callable[[], np.ndarray | None] | None = None) -> Detections:
        """Detect instances in one frame.

        Args:
            color (np.ndarray[H, W, 3] uint8): RGB.
            depth (np.ndarray[H, W] float32 | None): meters, NaN = invalid; required for rgbd models.
            extra_proposals (np.ndarray[N, 4] float | None): boxes (x0, y0, x1, y1, pixels of this frame) added to
                the region proposals, e.g. :func:`~instance_seg_ros.core.geometric_proposals.cluster_boxes`; the box
                head scores and refines them like the RPN's own. A callable returning them (or None) is called once
                the backbone and the RPN have run, so they can be computed meanwhile (in another thread).

        Returns:
            :class:`Detections` on the predictor's device.

        Raises:
            InputError: a malformed frame (what to pass instead).
        """
        check_model_input(color, depth, self.model.input_mode)
        self._ensure_on_device()
        model = self.model
        h, w = int(color.shape[0]), int(color.shape[1])
        self._last_size = (h, w)
        rh = model.roi_heads
        rh.score_thresh = self.score_threshold
        rh.nms_thresh = self.nms_threshold
        rh.detections_per_img = self.max_instances
        post = self.proposals or self._model_proposals
        model.rpn._post_nms_top_n["testing"] = post
        model.rpn._pre_nms_top_n["testing"] = max(self._model_pre_nms, post)
        min_s, max_s = self.input_size(h, w)
        model.transform.min_size = (min_s,)
        model.transform.max_size = max_s

        with torch.inference_mode():
            t0 = time.perf_counter()
            if self.device.type == "cpu":
                images = self._cpu_input(color, depth)
            else:
                x = frame_to_input(
                    color, depth, input_mode=model.input_mode, depth_max_m=model.depth_max_m,
                    device=self.device, non_blocking=True,
                )
                images, _ = model.transform([x])  # normalize, resize to the network size (none at native size)
            if self.channels_last:
                images.tensors = images.tensors.contiguous(memory_format=torch.channels_last)
            self._sync()
            t1 = time.perf_counter()
            with self._autocast():
                features = model.backbone(images.tensors)
                proposals, _ = model.rpn(images, features)
                if callable(extra_proposals):
                    extra_proposals = extra_proposals()
                if extra_proposals is not None and len(extra_proposals):
                    nh, nw = images.image_sizes[0]
                    extra = torch.as_tensor(np.asarray(extra_proposals, np.float32), device=proposals[0].device)
                    extra = resize_boxes(extra, [h, w], [nh, nw])  # frame pixels -> network input pixels
                    proposals = [torch.cat([proposals[0], extra.to(proposals[0].dtype)])]
                dets, _ = model.roi_heads(features, proposals, images.image_sizes)
            self._sync()
            t2 = time.perf_counter()
            det = self._postprocess(dets[0], images.image_sizes[0], (h, w))
            self._sync()
            t3 = time.perf_counter()
        det.timings = {
            "preprocess": (t1 - t0) * 1e3,
            "inference": (t2 - t1) * 1e3,
            "postprocess": (t3 - t2) * 1e3,
        }
        return det

    def _cpu_input(self, color: np.ndarray, depth: np.ndarray | None) -> ImageList:
        """The network input on the CPU, bit for bit what :func:`~.inputs.frame_to_input` and the model's transform
        (normalize, resize, pad) give, built in one frame-sized work tensor kept from frame to frame and normalized
        in place, instead of four fresh frame-sized tensors: fewer passes over memory, and no page faults of new
        multi-megabyte allocations. The same operations in the same order, so the same float results."""
        model, tf = self.model, self.model.transform
        h, w = color.shape[:2]
        c = 4 if model.input_mode == "rgbd" else 3
        buf = self._input_buf
        if buf is None or tuple(buf.shape) != (c, h, w):
            buf = self._input_buf = torch.empty((c, h, w), dtype=torch.float32)
        buf[:3].copy_(torch.from_numpy(np.ascontiguousarray(color)).permute(2, 0, 1)).mul_(1.0 / 255.0)
        if c == 4:  # depth_to_channel, in place
            d = buf[3].copy_(torch.from_numpy(np.ascontiguousarray(depth)))
            d.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0).clamp_(0.0, model.depth_max_m)
            d.mul_(1.0 / model.depth_max_m)
        mean = torch.as_tensor(tf.image_mean, dtype=torch.float32)
        std = torch.as_tensor(tf.image_std, dtype=torch.float32)
        buf.sub_(mean[:, None, None]).div_(std[:, None, None])
        image, _ = tf.resize(buf, None)
        batched = tf.batch_images([image], size_divisible=tf.size_divisible)  # a copy: buf is free again
        return ImageList(batched, [(int(image.shape[-2]), int(image.shape[-1]))])

    def _clean_stack(self, n: int, size: tuple[int, int]) -> torch.Tensor:
        """``reuse_buffers``: an all-False ``[n, 2, H, W]`` view of the kept mask stack; only the regions written by
        the last frame are cleared (the stack grows, once, when a frame has more detections than it has slots)."""
        buf = self._paste_buf
        if buf is None or buf.shape[0] < n or tuple(buf.shape[2:]) != tuple(size):
            buf = self._paste_buf = torch.zeros((max(n, 1), 2, *size), dtype=torch.bool)
            self._paste_dirty = [[] for _ in range(buf.shape[0])]
        else:
            o = buf.numpy()
            for slot, regions in enumerate(self._paste_dirty):
                for x0, y0, x1, y1 in regions:
                    o[slot, :, y0:y1, x0:x1] = False
                regions.clear()
        return buf[:n]

    def _postprocess(self, d: dict[str, torch.Tensor], net_size: tuple[int, int], size: tuple[int, int]) -> Detections:
        scores = d["scores"].float()
        keep = torch.where(scores >= self.score_threshold)[0]
        keep = keep[scores[keep].argsort(descending=True)][: self.max_instances]
        boxes = d["boxes"][keep].float()
        if tuple(net_size) != tuple(size):
            boxes = resize_boxes(boxes, list(net_size), list(size))
        probs = torch.cat([d["masks"][keep], d["amodal_masks"][keep]], dim=1)  # [N, 2, 28, 28]
        paste = {"batched": paste_masks_batched, "opencv": paste_masks_opencv}.get(self.paste, paste_masks_thresholded)
        reuse = self.reuse_buffers and self.paste == "opencv"
        if reuse:
            pasted = paste_masks_opencv(probs, boxes, size, self.mask_threshold, out=self._clean_stack(len(keep), size))
        else:
            pasted = paste(probs, boxes, size, self.mask_threshold)
        masks = pasted[:, 0]
        regions = paste_regions(boxes, probs.shape[-1], size)
        region_list = regions.tolist()
        if reuse:
            self._paste_dirty[: len(region_list)] = [[tuple(r)] for r in region_list]
        if self.paste == "opencv":  # amodal |= visible in place, inside the paste regions (nothing lies outside)
            o = pasted.numpy()
            for i, (x0, y0, x1, y1) in enumerate(region_list):
                np.logical_or(o[i, 1, y0:y1, x0:x1], o[i, 0, y0:y1, x0:x1], out=o[i, 1, y0:y1, x0:x1])
            amodal = pasted[:, 1]
        else:
            amodal = pasted[:, 1] | masks
        occ = d["occlusion"][keep].float() if "occlusion" in d else torch.zeros_like(scores[keep])
        labels = d["labels"][keep]
        scores = scores[keep]
        if self.mask_nms == "ownership" and len(scores) > 1:
            kept, masks = mask_ownership_keep(masks, probs[:, 0], boxes, scores, self.mask_nms_threshold,
                                              self.mask_threshold, inplace=True,  # masks: our paste's
                                              opencv=self.paste == "opencv")
            if len(kept) < len(scores):
                if reuse:  # the amodal rows moved up in place like the visible ones: views, no new stack
                    for dst, src in enumerate(kept.tolist()):
                        if dst != src:
                            pasted[dst, 1] = pasted[src, 1]
                            self._paste_dirty[dst].append(tuple(region_list[src]))
                    amodal = pasted[: len(kept), 1]
                else:
                    amodal = amodal[kept]
                boxes, labels, scores, occ, regions = (t[kept] for t in (boxes, labels, scores, occ, regions))
        elif self.mask_nms_threshold < 1.0 and len(scores) > 1:
            kept = mask_overlap_keep(masks, self.mask_nms_threshold)
            if len(kept) < len(scores):
                boxes, labels, scores, masks, amodal, occ, regions = (
                    t[kept] for t in (boxes, labels, scores, masks, amodal, occ, regions))
        return Detections(
            boxes=boxes,
            labels=labels,
            scores=scores,
            masks=masks,
            amodal_masks=amodal,
            occlusion_pred=occ,
            class_names=self.meta.classes,
            regions=regions,
        )

    def warmup(self, height: int | None = None, width: int | None = None) -> dict[str, float]:
        """Run one dummy frame (the last frame's size, else the meta's max_size x min_size) so the
        first real frame is not slow; returns its timings."""
        if height is None or width is None:
            height, width = self._last_size or (self.meta.min_size, self.meta.max_size)
        color = np.zeros((height, width, 3), np.uint8)
        depth = np.ones((height, width), np.float32) if self.model.input_mode == "rgbd" else None
        return self.predict(color, depth).timings

    def release(self) -> None:
        """Free accelerator memory (lifecycle deactivate): the model moves to the CPU and CUDA's cache is
        emptied; the kept CPU work buffers are dropped. The next :meth:`predict` / :meth:`warmup` moves it back."""
        self._input_buf, self._paste_buf, self._paste_dirty = None, None, []
        if self.device.type == "cuda":
            self.model.to("cpu")
            self._on_device = False
            torch.cuda.empty_cache()
