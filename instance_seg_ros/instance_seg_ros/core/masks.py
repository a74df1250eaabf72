"""Mask bounding boxes and crops: the one implementation every module uses (``(x, y, w, h)``, tight, zeros when empty).

numpy only: importing this module does not import torch, so the simulator, the synth workers and the dataset use
it without paying for torch. Torch tensors are still accepted (duck-typed): one on an accelerator is reduced there
and only its [N, H] / [N, W] occupancy comes to the host; a CPU tensor is read as a numpy view.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .types import FrameError

__all__ = ["box_and_crop", "boxes_from_occupancy", "crop", "mask_bbox", "mask_bboxes"]


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _occupancy(masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """(rows bool[N, H], cols bool[N, W]) of [N, H, W] masks; non-bool masks count ``!= 0`` (floats ``> 0.5``)."""
    if _is_tensor(masks):
        m = masks.detach()
        if m.device.type != "cpu":  # reduce on the device; only the occupancy travels
            if m.ndim != 3:
                raise FrameError(f"masks must have shape [N, H, W], got {list(m.shape)}.")
            if m.dtype.is_floating_point:
                m = m > 0.5
            elif str(m.dtype) != "torch.bool":
                m = m != 0
            return m.any(dim=2).cpu().numpy(), m.any(dim=1).cpu().numpy()
        masks = m.numpy()
    if not isinstance(masks, np.ndarray):
        raise FrameError(f"masks must be a numpy array or a torch tensor, got {type(masks).__name__}.")
    if masks.ndim != 3:
        raise FrameError(f"masks must have shape [N, H, W], got {list(masks.shape)}.")
    m = masks
    if m.dtype != np.bool_:
        m = m > 0.5 if np.issubdtype(m.dtype, np.floating) else m != 0
    return m.any(axis=2), m.any(axis=1)


def mask_bboxes(masks: Any) -> np.ndarray:
    """Tight boxes of [N, H, W] masks (numpy or torch, any device) as np.ndarray[N, 4] int64 ``(x, y, w, h)``.

    An empty mask gives ``(0, 0, 0, 0)``.
    """
    return boxes_from_occupancy(*_occupancy(masks))


def boxes_from_occupancy(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """[N, 4] int64 ``(x, y, w, h)`` from per-mask row / column occupancy (bool [N, H], [N, W]); zeros when empty."""
    n, h = rows.shape
    w = cols.shape[1]
    y0 = rows.argmax(axis=1)
    y1 = h - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = w - cols[:, ::-1].argmax(axis=1)
    box = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1).astype(np.int64)
    box *= rows.any(axis=1, keepdims=True)
    return box.reshape(n, 4)


def mask_bbox(mask: Any) -> tuple[int, int, int, int]:
    """Tight box ``(x, y, w, h)`` of one [H, W] mask (numpy or torch); ``(0, 0, 0, 0)`` when empty."""
    if mask.ndim != 2:
        raise FrameError(f"mask must have shape [H, W], got {list(mask.shape)}.")
    b = mask_bboxes(mask[None])[0]
    return int(b[0]), int(b[1]), int(b[2]), int(b[3])


def box_and_crop(mask: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Tight box ``(x, y, w, h)`` of one [H, W] mask and a bool copy of the mask cropped to it (``(0, 0, 0, 0)``
    and a [0, 0] crop when empty): the ``bbox`` / ``mask`` pair of an :class:`~.types.InstanceResult`."""
    box = mask_bbox(mask)
    return box, np.array(crop(np.asarray(mask), box), dtype=bool)


def crop(mask: Any, bbox: tuple[int, int, int, int]) -> Any:
    """``mask[..., y:y+h, x:x+w]`` (a view, numpy or torch) for ``bbox = (x, y, w, h)``; the box must lie inside
    the mask."""
    x, y, bw, bh = (int(v) for v in bbox)
    H, W = mask.shape[-2:]
    if bw < 0 or bh < 0 or x < 0 or y < 0 or x + bw > W or y + bh > H:
        raise ValueError(f"bbox (x, y, w, h) = {tuple(bbox)} does not lie inside the {W}x{H} mask.")
    return mask[..., y : y + bh, x : x + bw]
