"""Training-time augmentation of amodal samples (numpy / OpenCV arrays, no tensors; runs in DataLoader workers).

Every geometric step is applied to the color image, the depth image and the visible and amodal
masks alike, and the boxes / areas / occlusion of the targets are recomputed from the transformed
masks, so they can never disagree. Photometric steps touch only color (jitter) or depth (noise).

- :func:`resize_crop`: resize by a factor, then crop or pad to a fixed canvas (random scale, and the
  resize to the network input size in one interpolation);
- :func:`hflip`: horizontal flip;
- :func:`color_jitter`: brightness, contrast, saturation, hue (torchvision ``ColorJitter`` semantics);
- :func:`depth_noise`: depth-proportional Gaussian noise and dropped (NaN) pixels.

:class:`Augment` chains them with one :class:`AugmentConfig`; with ``AugmentConfig.none()`` it is the
deterministic resize alone (``isr train --no-augment``).

Example::

    aug = Augment(AugmentConfig(), out_size=(240, 320))
    sample = aug(dataset[0], np.random.default_rng(0))   # color [240, 320, 3], masks [N, 240, 320]
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

from .dataset import AmodalSample, target_boxes
from .types import Intrinsics

__all__ = [
    "Augment",
    "AugmentConfig",
    "AugmentError",
    "color_jitter",
    "depth_noise",
    "hflip",
    "net_scale",
    "resize_crop",
]

#: Padding color where a zoomed-out image does not cover the canvas: the ImageNet mean (normalizes to ~0).
PAD_COLOR = (124, 116, 104)
#: Instances with fewer visible pixels than this after augmentation are dropped.
MIN_VISIBLE_PIXELS = 4


class AugmentError(ValueError):
    """An augmentation setting is invalid; the message says what to change."""


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths (all off = ``AugmentConfig.none()``).

    Attributes:
        hflip (float): probability of a horizontal flip.
        brightness, contrast, saturation (float ≥ 0): factors drawn from ``[1 - v, 1 + v]``.
        hue (float in [0, 0.5]): hue shift drawn from ``[-hue, hue]`` of a full turn.
        depth_noise (float ≥ 0): std of the relative depth noise at 1 m; it grows with depth²
            (stereo-like), i.e. ``sigma(z) = depth_noise * z**2`` meters.
        depth_dropout (float in [0, 1]): at most this fraction of depth pixels becomes invalid (NaN).
        scale (tuple[float, float]): random scale factor range (1, 1 = off), applied on top of the
            resize to the network input size; the result is cropped / padded back to that size.
        scale_prob (float): probability of applying the random scale.
        modality_dropout (float in [0, 1]): probability that one input modality is removed from a sample (half
            the time the whole depth image becomes invalid, half the time color becomes flat gray), so an RGB-D
            network learns to use both and still works when one of them is missing or misleading.
    """

    hflip: float = 0.5
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.03
    depth_noise: float = 0.004
    depth_dropout: float = 0.02
    scale: tuple[float, float] = (0.75, 1.33)
    scale_prob: float = 0.5
    modality_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hflip", "scale_prob", "depth_dropout", "modality_dropout"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise AugmentError(f"augment {name} must be a probability in [0, 1], got {v!r}.")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
                raise AugmentError(f"augment {name} must be a number in [0, 1), got {v!r}.")
        if not (isinstance(self.depth_noise, (int, float)) and 0.0 <= self.depth_noise <= 1.0):
            raise AugmentError(f"augment depth_noise must be a relative std in [0, 1], got {self.depth_noise!r}.")
        if not (isinstance(self.hue, (int, float)) and 0.0 <= self.hue <= 0.5):
            raise AugmentError(f"augment hue must be within [0, 0.5] of a full turn, got {self.hue!r}.")
        lo, hi = self.scale
        if not (0.1 <= lo <= hi <= 10.0):
            raise AugmentError(f"augment scale must be (low, high) with 0.1 <= low <= high <= 10, got {self.scale!r}.")

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (only the resize to the network size remains)."""
        return cls(hflip=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, depth_noise=0.0,
                   depth_dropout=0.0, scale=(1.0, 1.0), scale_prob=0.0)


def net_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The factor torchvision's ``GeneralizedRCNNTransform`` resizes a ``height`` x ``width`` image by:
    ``min(min_size / short side, max_size / long side)``."""
    return min(min_size / min(height, width), max_size / max(height, width))


def _resize_stack(masks: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """uint8[N, H, W] → uint8[N, h, w], nearest neighbour (cv2 takes at most 512 channels per call)."""
    n = masks.shape[0]
    h, w = size_hw
    if n == 0:
        return np.zeros((0, h, w), np.uint8)
    out = []
    for i in range(0, n, 500):
        chunk = np.ascontiguousarray(masks[i:i + 500].transpose(1, 2, 0))
        r = cv2.resize(chunk, (w, h), interpolation=cv2.INTER_NEAREST)
        out.append(r.reshape(h, w, -1).transpose(2, 0, 1))
    return np.ascontiguousarray(np.concatenate(out, axis=0))


def _place(src: np.ndarray, out_hw: tuple[int, int], offset: tuple[int, int], fill) -> np.ndarray:
    """Put ``src`` ([H, W, ...]) into a canvas of ``out_hw`` with its top-left at ``offset`` (y, x), which
    may be negative (crop); the rest is ``fill``."""
    oh, ow = out_hw
    oy, ox = offset
    canvas = np.empty((oh, ow) + src.shape[2:], dtype=src.dtype)
    canvas[...] = fill
    sy0, sx0 = max(0, -oy), max(0, -ox)
    dy0, dx0 = max(0, oy), max(0, ox)
    hh = min(src.shape[0] - sy0, oh - dy0)
    ww = min(src.shape[1] - sx0, ow - dx0)
    if hh > 0 and ww > 0:
        canvas[dy0:dy0 + hh, dx0:dx0 + ww] = src[sy0:sy0 + hh, sx0:sx0 + ww]
    return canvas


def resize_crop(
    color: np.ndarray,
    depth: np.ndarray | None,
    masks: np.ndarray,
    factor: float,
    out_size: tuple[int, int],
    offset: tuple[int, int] | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, tuple[int, int]]:
    """Resize by ``factor`` then crop / pad to ``out_size``.

    Args:
        color (np.ndarray[H, W, 3] uint8): bilinear resize (like the model's transform), pad :data:`PAD_COLOR`.
        depth (np.ndarray[H, W] float32 | None): nearest resize (no blending across edges), pad NaN.
        masks (np.ndarray[N, H, W] uint8): nearest resize, pad 0 (pass visible and amodal stacked).
        factor (float > 0): resize factor.
        out_size ((h, w)): the canvas.
        offset ((y, x) | None): top-left of the resized image in the canvas; ``None`` = random (``rng``)
            when the sizes differ, else (0, 0).

    Returns:
        (color, depth, masks, offset) on the ``out_size`` canvas.
    """
    if not factor > 0:
        raise AugmentError(f"resize factor must be positive, got {factor!r}.")
    h, w = color.shape[:2]
    rh, rw = max(1, round(h * factor)), max(1, round(w * factor))
    oh, ow = out_size
    if offset is None:
        rng = rng if rng is not None else np.random.default_rng()

        def pick(r: int, o: int) -> int:
            return int(rng.integers(min(0, o - r), max(0, o - r) + 1))

        offset = (pick(rh, oh), pick(rw, ow))
    c = color if (rh, rw) == (h, w) else cv2.resize(color, (rw, rh), interpolation=cv2.INTER_LINEAR)
    c = _place(c, out_size, offset, PAD_COLOR)
    d = None
    if depth is not None:
        d = depth if (rh, rw) == (h, w) else cv2.resize(depth, (rw, rh), interpolation=cv2.INTER_NEAREST)
        d = _place(d.astype(np.float32, copy=False), out_size, offset, np.nan)
    m = masks if (rh, rw) == (h, w) else _resize_stack(masks, (rh, rw))
    if masks.shape[0]:
        m = _place(m.transpose(1, 2, 0), out_size, offset, 0).transpose(2, 0, 1)
    else:
        m = np.zeros((0, oh, ow), np.uint8)
    return c, d, np.ascontiguousarray(m), offset


def hflip(
    color: np.ndarray, depth: np.ndarray | None, masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Mirror left-right: color [H, W, 3], depth [H, W] | None, masks [N, H, W]."""
    d = None if depth is None else np.ascontiguousarray(depth[:, ::-1])
    return np.ascontiguousarray(color[:, ::-1]), d, np.ascontiguousarray(masks[:, :, ::-1])


def color_jitter(
    color: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
) -> np.ndarray:
    """torchvision ``ColorJitter`` on an RGB uint8 [H, W, 3] image, in a random order of the four steps.

    Brightness scales the image, contrast blends with its mean gray, saturation blends with its
    grayscale, hue rotates the HSV hue by a fraction of a full turn. Returns uint8 [H, W, 3].
    """
    img = color.astype(np.float32)
    for step in rng.permutation(4):
        if step == 0 and brightness > 0:
            img *= rng.uniform(1 - brightness, 1 + brightness)
        elif step == 1 and contrast > 0:
            f = rng.uniform(1 - contrast, 1 + contrast)
            mean = float(_gray(img).mean())
            img = img * f + mean * (1 - f)
        elif step == 2 and saturation > 0:
            f = rng.uniform(1 - saturation, 1 + saturation)
            img = img * f + _gray(img)[..., None] * (1 - f)
        elif step == 3 and hue > 0:
            shift = rng.uniform(-hue, hue)
            u8 = np.clip(img, 0, 255).astype(np.uint8)
            hsv = cv2.cvtColor(u8, cv2.COLOR_RGB2HSV_FULL)
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 256))) % 256
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
        np.clip(img, 0, 255, out=img)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _gray(img: np.ndarray) -> np.ndarray:
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def depth_noise(depth: np.ndarray, rng: np.random.Generator, sigma: float = 0.0, dropout: float = 0.0) -> np.ndarray:
    """Depth [H, W] float32 meters (NaN invalid) + N(0, (sigma z²)²) noise, and a random share in
    ``[0, dropout]`` of pixels set to NaN. Returns a new float32 array."""
    d = depth.astype(np.float32, copy=True)
    if sigma > 0:
        with np.errstate(invalid="ignore"):
            d += (rng.standard_normal(d.shape, dtype=np.float32) * np.float32(sigma)) * d * d
    if dropout > 0:
        frac = rng.uniform(0.0, dropout)
        d[rng.random(d.shape, dtype=np.float32) < frac] = np.nan
    with np.errstate(invalid="ignore"):
        d[~(d > 0)] = np.nan
    return d


def _with_masks(sample: AmodalSample, color, depth, visible, amodal, intrinsics) -> AmodalSample:
    """A sample holding the transformed arrays, with targets recomputed from the masks; instances with
    fewer than :data:`MIN_VISIBLE_PIXELS` visible pixels left are dropped."""
    amodal = amodal | visible
    areas = visible.sum(axis=(1, 2)).astype(np.float32)
    keep = areas >= MIN_VISIBLE_PIXELS
    t = sample.targets
    new = {}
    for k, v in t.items():
        if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == keep.shape[0]:
            new[k] = v[keep]
    visible, amodal = visible[keep], amodal[keep]
    areas = areas[keep]
    amodal_areas = amodal.sum(axis=(1, 2)).astype(np.float32)
    new.update(
        masks=visible,
        amodal_masks=amodal,
        boxes=target_boxes(visible),
        amodal_boxes=target_boxes(amodal),
        areas=areas,
        amodal_areas=amodal_areas,
        occlusion=np.where(amodal_areas > 0, 1.0 - areas / np.maximum(amodal_areas, 1), 0.0).astype(np.float32),
    )
    return dataclasses.replace(sample, color=color, depth=depth, intrinsics=intrinsics, targets=new)


def _transform_intrinsics(k: Intrinsics | None, factor: float, offset: tuple[int, int], out_hw, flip: bool):
    if k is None:
        return None
    s = k.scaled(factor, factor)
    cx, cy = s.cx + offset[1], s.cy + offset[0]
    if flip:
        cx = out_hw[1] - 1 - cx
    return Intrinsics(s.fx, s.fy, cx, cy, out_hw[1], out_hw[0])


class Augment:
    """Random training augmentation, and the resize to the network input size, of an :class:`AmodalSample`.

    Args:
        config: strengths (:class:`AugmentConfig`).
        min_size, max_size (int | None): the network input size. Each sample is resized by
            :func:`net_scale` (times the random scale) onto a canvas of the size the network will see, so
            the model's own transform does not resize again. ``None`` = keep the sample's size.

    Call with ``(sample, rng)``; returns a new sample (color [h, w, 3] uint8, depth [h, w] float32 | None,
    masks / amodal masks [N, h, w] uint8, boxes / areas / occlusion recomputed, intrinsics updated).
    """

    def __init__(self, config: AugmentConfig | None = None, *, min_size: int | None = None,
                 max_size: int | None = None) -> None:
        self.config = config if config is not None else AugmentConfig()
        if (min_size is None) != (max_size is None):
            raise AugmentError("Give both min_size and max_size, or neither.")
        if min_size is not None and not (0 < min_size <= max_size):
            raise AugmentError(f"Need 0 < min_size <= max_size, got {min_size} and {max_size}.")
        self.min_size, self.max_size = min_size, max_size

    def out_size(self, height: int, width: int) -> tuple[tuple[int, int], float]:
        """((h, w) of the network canvas, base resize factor) for a ``height`` x ``width`` sample."""
        if self.min_size is None:
            return (height, width), 1.0
        s = net_scale(height, width, self.min_size, self.max_size)
        return (max(1, math.floor(height * s)), max(1, math.floor(width * s))), s

    def __call__(self, sample: AmodalSample, rng: np.random.Generator) -> AmodalSample:
        cfg = self.config
        h, w = sample.color.shape[:2]
        out_size, base = self.out_size(h, w)
        factor = base
        lo, hi = cfg.scale
        if hi > lo and rng.random() < cfg.scale_prob:
            factor *= math.exp(rng.uniform(math.log(lo), math.log(hi)))  # log-uniform: zoom in / out alike
        flip = bool(rng.random() < cfg.hflip)
        offset = None if abs(factor - base) > 1e-9 else (0, 0)
        vis, amo = sample.targets["masks"], sample.targets["amodal_masks"]
        n = vis.shape[0]
        color, depth, m, offset = resize_crop(sample.color, sample.depth, np.concatenate([vis, amo]), factor,
                                              out_size, offset=offset, rng=rng)
        if flip:
            color, depth, m = hflip(color, depth, m)
        if cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue:
            color = color_jitter(color, rng, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
        if depth is not None and (cfg.depth_noise or cfg.depth_dropout):
            depth = depth_noise(depth, rng, cfg.depth_noise, cfg.depth_dropout)
        if depth is not None and cfg.modality_dropout and rng.random() < cfg.modality_dropout:
            if rng.random() < 0.5:
                depth = np.full_like(depth, np.nan)
            else:
                color = np.full_like(color, 128)
        k = _transform_intrinsics(sample.intrinsics, factor, offset, out_size, flip)
        return _with_masks(sample, color, depth, m[:n], m[n:], k)
