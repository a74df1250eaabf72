"""Network input: RGB (+ depth) numpy frames → the float tensor the model takes.

The model takes ``Tensor[C, H, W] float32`` with C = 3 (``rgb``) or 4 (``rgbd``):

- channels 0-2: RGB / 255, in [0, 1] (the model's transform then applies the backbone's mean/std);
- channel 3 (rgbd only): depth in meters, NaN / inf / ≤ 0 (invalid) → 0, clipped to
  ``[0, depth_max_m]`` (default :data:`DEPTH_MAX_M` = 2.0 m), divided by ``depth_max_m`` → [0, 1].
  The transform normalizes it with :data:`DEPTH_MEAN` / :data:`DEPTH_STD` (0.5 / 0.25, i.e. 1.0 m
  and 0.5 m for a 2 m range), so valid tabletop depths land around [-2, 2] and "no depth" at -2.

Training data loaders and the :class:`~instance_seg_ros.core.model.predictor.Predictor` both go
through :func:`frame_to_input`, so the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "DEPTH_MAX_M",
    "DEPTH_MEAN",
    "DEPTH_STD",
    "INPUT_MODES",
    "InputError",
    "check_model_input",
    "depth_to_channel",
    "frame_to_input",
]

INPUT_MODES = ("rgb", "rgbd")
#: Depth beyond this (meters) is clipped to it in the depth channel.
DEPTH_MAX_M = 2.0
#: Normalization of the depth channel (which is in [0, 1] = depth / DEPTH_MAX_M).
DEPTH_MEAN = 0.5
DEPTH_STD = 0.25


class InputError(ValueError):
    """A frame cannot be turned into network input; the message says what to pass instead."""


def depth_to_channel(depth: torch.Tensor, depth_max_m: float = DEPTH_MAX_M) -> torch.Tensor:
    """Depth in meters (Tensor[H, W] float, NaN = invalid) → Tensor[H, W] float32 in [0, 1].

    Invalid (NaN, ±inf, ≤ 0) → 0; beyond ``depth_max_m`` → 1.
    """
    if not depth_max_m > 0:
        raise InputError(f"depth_max_m must be positive, got {depth_max_m!r}.")
    d = depth.to(torch.float32)
    d = torch.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0)
    return d.clamp_(0.0, depth_max_m).mul_(1.0 / depth_max_m)


def check_model_input(color: np.ndarray, depth: np.ndarray | None, input_mode: str) -> None:
    """Raise :class:`InputError` unless ``color`` is ``[H, W, 3] uint8`` and ``depth`` (when the input
    mode needs it, or is given) is ``[H, W]`` float of the same size."""
    if input_mode not in INPUT_MODES:
        raise InputError(f"input_mode must be one of {', '.join(INPUT_MODES)}, got {input_mode!r}.")
    if not isinstance(color, np.ndarray) or color.ndim != 3 or color.shape[2] != 3 or color.dtype != np.uint8:
        desc = f"{color.dtype} array of shape {color.shape}" if isinstance(color, np.ndarray) else type(color).__name__
        raise InputError(f"color must be an RGB uint8 array of shape [H, W, 3], got a {desc}.")
    if color.shape[0] < 1 or color.shape[1] < 1:
        raise InputError(f"color must not be empty, got shape {color.shape}.")
    if depth is None:
        if input_mode == "rgbd":
            raise InputError("This model takes rgbd input: pass a depth image (meters, NaN = invalid) with the color.")
        return
    if not isinstance(depth, np.ndarray) or depth.ndim != 2:
        desc = f"array of shape {depth.shape}" if isinstance(depth, np.ndarray) else type(depth).__name__
        raise InputError(f"depth must be a [H, W] float array in meters, got a {desc}.")
    if depth.shape != color.shape[:2]:
        raise InputError(
            f"depth {depth.shape} must have the color image's size {color.shape[:2]}; register depth to color first."
        )
    if not np.issubdtype(depth.dtype, np.floating):
        raise InputError(
            f"depth must be float meters (NaN = invalid), got dtype {depth.dtype}; convert 16UC1 millimetres first."
        )


def frame_to_input(
    color: np.ndarray,
    depth: np.ndarray | None = None,
    *,
    input_mode: str = "rgb",
    depth_max_m: float = DEPTH_MAX_M,
    device: torch.device | str = "cpu",
    non_blocking: bool = False,
) -> torch.Tensor:
    """One frame → the model's input ``Tensor[C, H, W] float32`` on ``device``.

    Args:
        color (np.ndarray[H, W, 3] uint8): RGB.
        depth (np.ndarray[H, W] float32 | None): meters, NaN = invalid; required for ``rgbd``, ignored for ``rgb``.
        input_mode: ``rgb`` (C = 3) or ``rgbd`` (C = 4).
        depth_max_m: depth range of the depth channel (see the module docstring).
        device: where the tensor goes; the uint8 → float conversion runs there (cheaper to copy bytes).
        non_blocking: pin host memory and copy asynchronously (CUDA only).
    """
    check_model_input(color, depth, input_mode)
    device = torch.device(device)
    pin = non_blocking and device.type == "cuda"

    def upload(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if pin:
            t = t.pin_memory()
        return t.to(device, non_blocking=pin)

    rgb = upload(color).permute(2, 0, 1).to(torch.float32).mul_(1.0 / 255.0)
    if input_mode == "rgb":
        return rgb
    d = upload(depth.astype(np.float32, copy=False))
    return torch.cat([rgb, depth_to_channel(d, depth_max_m)[None]], dim=0)
