"""What the node does with a matched (image, depth, camera_info) set before and after the pipeline, as plain
functions of messages, configuration and counters (tested without a node).

- :func:`decode_frame`: the three messages to ``(color, depth, K)``, or :class:`FrameRejected` with the reason the
  node counts in /diagnostics (``frame_id_mismatch``, ``bad_image``, ``bad_depth``, ``bad_camera_info``).
- :func:`decode_depth_and_info`: depth and camera_info alone (grasp_node's decoding shares it).
- :func:`count_processed` and :func:`frame_summary`: what a processed frame adds to :class:`~.diagnostics.NodeStats`
  and the ``last_frame`` values of the status.
- :func:`publisher_id`: the publishing writer's GID from a subscription's message info.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sensor_msgs.msg import CompressedImage

from ..core.config import Config
from ..core.images import color_from_compressed_msg, color_from_msg, depth_from_msg, intrinsics_from_camera_info
from ..core.types import FrameError, FrameResult, Intrinsics
from .diagnostics import NodeStats, frame_id_mismatch_text

__all__ = ["FrameRejected", "count_processed", "decode_depth_and_info", "decode_frame", "frame_summary",
           "publisher_id"]


class FrameRejected(Exception):
    """A frame the node refuses: ``reason`` is its counter key (``rejected.<reason>``), the message says why."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


def publisher_id(info: Any) -> bytes | None:
    """The publishing writer's GID from a subscription's message info (None when the middleware gives none)."""
    try:
        gid = info.get("publisher_gid") if isinstance(info, dict) else None
        data = gid.get("data") if isinstance(gid, dict) else gid
        return bytes(data) if data is not None else None
    except Exception:  # unknown shape: fall back to stamp-only restart detection
        return None


def decode_frame(
    color_msg: Any, depth_msg: Any, info_msg: Any, cfg: Config, *, frame_id_check: bool
) -> tuple[np.ndarray, np.ndarray, Intrinsics]:
    """``(color [H, W, 3] uint8 RGB, depth [H, W] float32 meters, K)`` of a matched set (Image or CompressedImage,
    depth Image, CameraInfo), within ``cfg.input``'s size limits.

    Raises:
        FrameRejected: the frame ids differ (when ``frame_id_check``), or a message cannot be decoded.
    """
    mismatch = frame_id_check and frame_id_mismatch_text(
        color_msg.header.frame_id, depth_msg.header.frame_id, info_msg.header.frame_id)
    if mismatch:
        raise FrameRejected("frame_id_mismatch", mismatch)
    limits = {"max_width": cfg.input.max_width, "max_height": cfg.input.max_height}
    try:
        if isinstance(color_msg, CompressedImage):
            color = color_from_compressed_msg(color_msg, **limits)
        else:
            color = color_from_msg(color_msg, **limits)
    except FrameError as exc:
        raise FrameRejected("bad_image", str(exc)) from exc
    depth, K = decode_depth_and_info(depth_msg, info_msg, scale_16uc1=cfg.depth.scale_16uc1, **limits)
    return color, depth, K


def decode_depth_and_info(depth_msg: Any, info_msg: Any, *, scale_16uc1: float,
                          **limits: int) -> tuple[np.ndarray, Intrinsics]:
    """A depth image (float32 meters, NaN where invalid) and its camera_info's intrinsics; ``limits``:
    ``max_width`` / ``max_height``.

    Raises:
        FrameRejected: ``bad_depth`` or ``bad_camera_info`` (undecodable, e.g. a wrong encoding, or NaN intrinsics).
    """
    try:
        depth = depth_from_msg(depth_msg, scale_16uc1=scale_16uc1, **limits)
    except FrameError as exc:
        raise FrameRejected("bad_depth", str(exc)) from exc
    try:
        K = intrinsics_from_camera_info(info_msg)
    except FrameError as exc:
        raise FrameRejected("bad_camera_info", str(exc)) from exc
    return depth, K


def count_processed(stats: NodeStats, result: FrameResult, *, support_plane: bool) -> None:
    """Count a processed frame, and with the support-plane check on, whether it found a plane and what it dropped."""
    stats.inc("frames_processed")
    if support_plane:
        stats.inc("support_plane.frames_with_plane" if result.support_plane is not None
                  else "support_plane.frames_without_plane")
        stats.inc("support_plane.instances_dropped", len(result.dropped))


def frame_summary(stamp_ns: int, result: FrameResult, frame_id: str) -> dict[str, Any]:
    """The ``last_frame`` values of the status: what the last published frame held."""
    return {"stamp_ns": stamp_ns, "instances": len(result.instances), "dropped_on_support_plane": len(result.dropped),
            "size": f"{result.width}x{result.height}", "frame_id": frame_id}
