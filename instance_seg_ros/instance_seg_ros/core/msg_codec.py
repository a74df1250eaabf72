"""The one codec of our messages: InstanceArray / Instance, PointCloud2, mask and other images, CameraInfo.

Why it lives in ``core/`` (no ROS import): two kinds of message objects carry the same messages, rclpy's (the
node, :mod:`instance_seg_ros.ros.conversions`) and rosbags' (the ROS-free tools, :mod:`instance_seg_ros.tools.bagio`).
Both expose every field as an attribute, so one reader serves both (attribute access only, duck-typed, as
:mod:`.images` decodes incoming images). They differ only in how a message object is made (rclpy fills the
defaults a message already holds; rosbags builds dataclasses from every field), so the writers here produce
*field trees* and each side keeps a thin backend that turns a tree into its own objects. The layout of
``Instance.msg``, the image encodings and the PointCloud2 fields are written here once: a change to
``Instance.msg`` is a change to :func:`instance_fields` and :func:`instance_from_msg`, nowhere else.

A field tree is a ``dict`` of field name -> value:

- ``dict``: a sub-message (its own tree);
- ``list`` of dicts: a sequence of sub-messages; ``tuple`` of dicts: a constant one (a backend may build its
  messages once and share them);
- ``np.ndarray`` (uint8) or ``array.array('B')``: a byte field (``uint8[]``), a view of the caller's array where
  possible (no copy);
- ``list`` of numbers: a numeric array field (CameraInfo ``d``, ``k``, ``r``, ``p``);
- anything else: a scalar, or the backend's own header message for a ``header`` field (passed through as given;
  a tree without ``header`` leaves the message's default).

Every malformed input, written or read, raises :class:`MessageError` (a ``ValueError``) whose message says what
was expected; numpy's own exceptions never leak out of the reader.
"""

from __future__ import annotations

import array
import threading
from typing import Any

import numpy as np

from .types import FrameResult, InstanceResult, Intrinsics

__all__ = [
    "IMAGE_ENCODINGS",
    "MASK_ENCODING",
    "XYZRGB_FIELDS",
    "XYZ_FIELDS",
    "MessageError",
    "camera_info_fields",
    "compressed_image_fields",
    "frame_result_from_instance_array",
    "header_fields",
    "image_fields",
    "instance_array_fields",
    "instance_fields",
    "instance_from_msg",
    "mask_bytes",
    "mask_image_fields",
    "mask_from_image",
    "pointcloud2_arrays",
    "pointcloud2_fields",
    "split_stamp",
    "stamp_ns",
    "stamp_to_ns",
]

#: Image encodings we write: encoding -> (dtype, channels). Reading: :mod:`.images`.
IMAGE_ENCODINGS: dict[str, tuple[type[np.generic], int]] = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}
#: Masks are mono8 crops of their box, 255 = object pixel (``Instance.msg``).
MASK_ENCODING = "mono8"

_FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32
#: PointCloud2 layout: x, y, z float32 and, with colors, rgb packed in a float32 (the PCL / RViz convention).
XYZ_FIELDS = tuple({"name": c, "offset": 4 * i, "datatype": _FLOAT32, "count": 1} for i, c in enumerate("xyz"))
XYZRGB_FIELDS = (*XYZ_FIELDS, {"name": "rgb", "offset": 12, "datatype": _FLOAT32, "count": 1})

# numpy fallback of _pack_into: x, y, z as one 12-byte item (one item copy per point instead of an inner loop of
# length 3), the color bytes as strided 1-D copies.
_XYZRGB = np.dtype({"names": ["xyz", "rgb"], "formats": ["V12", "<u4"], "offsets": [0, 12], "itemsize": 16})
# cv2.mixChannels pairs (source channel -> destination channel; -1 writes 0): x, y, z into float channels 0-2 of a
# 4-float record; r, g, b into bytes 14, 13, 12 of a 16-byte record and 0 into byte 15.
_XYZ_PAIRS = (0, 0, 1, 1, 2, 2)
_BGR0_PAIRS = (2, 12, 1, 13, 0, 14, -1, 15)
_U8_255 = np.uint8(255)
_scratch = threading.local()


class MessageError(ValueError):
    """A message cannot be written from these arrays, or read back; the message says what was expected."""


# ---------------------------------------------------------------------------------------- stamps and headers
def stamp_to_ns(stamp: Any) -> int:
    """Nanoseconds of a ``builtin_interfaces/Time`` (``sec * 10**9 + nanosec``)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stamp_ns(msg_or_header: Any) -> int:
    """Nanoseconds of a Header's stamp (or of a message's ``header``)."""
    return stamp_to_ns(getattr(msg_or_header, "header", msg_or_header).stamp)


def split_stamp(ns: int) -> tuple[int, int]:
    """``(sec, nanosec)`` of a stamp in nanoseconds."""
    return int(ns // 1_000_000_000), int(ns % 1_000_000_000)


def header_fields(stamp: int = 0, frame_id: str = "") -> dict[str, Any]:
    """The tree of a ``std_msgs/Header`` stamped ``stamp`` nanoseconds."""
    sec, nanosec = split_stamp(stamp)
    return {"stamp": {"sec": sec, "nanosec": nanosec}, "frame_id": frame_id}


def _with_header(tree: dict[str, Any], header: Any) -> dict[str, Any]:
    if header is not None:
        tree["header"] = header
    return tree


# ---------------------------------------------------------------------------------------- writers
def _bytes_view(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def image_fields(arr: np.ndarray, encoding: str, header: Any = None) -> dict[str, Any]:
    """``sensor_msgs/Image`` of ``arr`` (``[H, W]`` or ``[H, W, C]``, dtype and channels matching ``encoding``, one
    of :data:`IMAGE_ENCODINGS`); ``data`` is a uint8 view of ``arr`` (no copy)."""
    if encoding not in IMAGE_ENCODINGS:
        raise MessageError(f"Unsupported encoding {encoding!r}; use one of {', '.join(IMAGE_ENCODINGS)}.")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3) or arr.dtype != dtype or (arr.shape[2] if arr.ndim == 3 else 1) != channels:
        raise MessageError(f"Encoding {encoding} needs a {np.dtype(dtype).name} array with {channels} channel(s), "
                           f"got {arr.dtype.name} of shape {arr.shape}.")
    h, w = arr.shape[:2]
    return _with_header({"height": int(h), "width": int(w), "encoding": encoding, "is_bigendian": 0,
                         "step": int(w * channels * arr.itemsize), "data": _bytes_view(arr)}, header)


def mask_bytes(mask: np.ndarray) -> np.ndarray:
    """A mask as the uint8 bytes of its mono8 image: 255 where set, else 0."""
    m = np.asarray(mask)
    return (m.view(np.uint8) * _U8_255) if m.dtype == np.bool_ else np.where(m > 0, 255, 0).astype(np.uint8)


def mask_image_fields(mask: np.ndarray, header: Any = None) -> dict[str, Any]:
    """The mono8 ``sensor_msgs/Image`` of a [h, w] mask (:data:`MASK_ENCODING`, 255 = set): what
    ``image_fields(mask_bytes(mask), MASK_ENCODING, header)`` writes, without re-checking the bytes made here (an
    InstanceArray holds two per instance)."""
    m = mask_bytes(mask)
    if m.ndim != 2:
        raise MessageError(f"A mask must have shape [h, w], got {m.shape}.")
    h, w = m.shape
    tree = {"height": h, "width": w, "encoding": MASK_ENCODING, "is_bigendian": 0, "step": w, "data": m.reshape(-1)}
    if header is not None:
        tree["header"] = header
    return tree


def compressed_image_fields(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90, header: Any = None
                            ) -> dict[str, Any]:
    """``sensor_msgs/CompressedImage`` (``jpeg`` or ``png``) of an RGB uint8 ``[H, W, 3]`` image, with the
    ``format`` string image_transport writes (``rgb8; jpeg compressed bgr8``)."""
    import cv2

    ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise MessageError(f"Unsupported compression {fmt!r}; use jpeg or png.")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise MessageError(f"A compressed image needs uint8 [H, W, 3] RGB, got {rgb.dtype.name} {rgb.shape}.")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise MessageError("Image encoding failed.")
    return _with_header({"format": f"rgb8; {'jpeg' if ext == '.jpg' else 'png'} compressed bgr8",
                         "data": buf.reshape(-1)}, header)


def roi_fields(box: tuple[int, int, int, int]) -> dict[str, Any]:
    """``sensor_msgs/RegionOfInterest`` of a box ``(x, y, w, h)``."""
    x, y, w, h = box
    return {"x_offset": int(x), "y_offset": int(y), "height": int(h), "width": int(w), "do_rectify": False}


def camera_info_fields(k: Intrinsics, header: Any = None) -> dict[str, Any]:
    """``sensor_msgs/CameraInfo`` of a distortion-free pinhole camera (plumb_bob, d = 0)."""
    return _with_header({
        "height": int(k.height), "width": int(k.width), "distortion_model": "plumb_bob", "d": [0.0] * 5,
        "k": [k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0],
        "r": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "p": [k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0],
        "binning_x": 0, "binning_y": 0, "roi": roi_fields((0, 0, 0, 0)),
    }, header)


def _scratch_bytes(nbytes: int) -> np.ndarray:
    """A uint8[nbytes] view of this thread's packing buffer (kept between calls, grown as needed): packing into warm
    memory and copying once into the message's own array is cheaper than packing into freshly allocated pages."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = _scratch.buf = np.empty(max(nbytes, 2 * (0 if buf is None else buf.size)), np.uint8)
    return buf[:nbytes]


def _pack_into(out: np.ndarray, pts: np.ndarray, rgb: np.ndarray) -> None:
    """Write N records of 16 bytes into ``out`` (C-contiguous, aligned uint8[16 N], e.g. :func:`_scratch_bytes`), every
    byte: x, y, z float32 from ``pts`` (float32[N, 3]), then rgb as the little-endian uint32 ``0x00RRGGBB`` (bytes b,
    g, r, 0) from ``rgb`` (uint8[N, 3]). Two ``cv2.mixChannels`` passes (plain channel copies, bit for bit); numpy's
    strided copies without OpenCV."""
    n = pts.shape[0]
    if n == 0:
        return
    pts, rgb = np.ascontiguousarray(pts), np.ascontiguousarray(rgb)
    try:
        import cv2
    except ImportError:  # pragma: no cover - OpenCV is a dependency of the package
        out.view(_XYZRGB)["xyz"] = pts.view("V12")[:, 0]
        out[12::16] = rgb[:, 2]
        out[13::16] = rgb[:, 1]
        out[14::16] = rgb[:, 0]
        out[15::16] = 0
        return
    cv2.mixChannels([pts.reshape(n, 1, 3)], [out.view(np.float32).reshape(n, 1, 4)], _XYZ_PAIRS)
    cv2.mixChannels([rgb.reshape(n, 1, 3)], [out.reshape(n, 1, 16)], _BGR0_PAIRS)


def _pack_xyzrgb(pts: np.ndarray, rgb: np.ndarray) -> array.array:
    """[N, 3] float32 points + [N, 3] uint8 RGB -> the ``array('B')`` of N records of 16 bytes: x, y, z float32,
    then rgb as the little-endian uint32 ``0x00RRGGBB`` (bytes b, g, r, 0; read as a float32 by PCL / RViz).
    Packed in this thread's scratch buffer, then copied once into the array (one ``memcpy``; rclpy keeps the array as
    it is). Not ``array * n``: CPython 3.11 repeats a one-byte array byte by byte, slower than the packing itself."""
    buf = _scratch_bytes(16 * pts.shape[0])
    _pack_into(buf, pts, rgb)
    out = array.array("B")
    out.frombytes(buf)
    return out


def pointcloud2_fields(points: np.ndarray, colors: np.ndarray | None = None, header: Any = None) -> dict[str, Any]:
    """Unorganized (height 1) ``sensor_msgs/PointCloud2``: x, y, z float32 (:data:`XYZ_FIELDS`) and, with
    ``colors`` (uint8[N, 3]), rgb packed in a float32 (:data:`XYZRGB_FIELDS`)."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    n = pts.shape[0]
    if colors is not None:
        rgb = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        if rgb.shape[0] != n:
            raise MessageError(f"colors has {rgb.shape[0]} rows but points has {n}.")
        data: Any = _pack_xyzrgb(pts, rgb)
        fields, step = XYZRGB_FIELDS, 16
    else:
        data, fields, step = _bytes_view(pts), XYZ_FIELDS, 12
    return _with_header({"height": 1, "width": n, "fields": fields, "is_bigendian": False, "point_step": step,
                         "row_step": step * n, "data": data, "is_dense": True}, header)


def _xyz(v: Any) -> dict[str, float]:
    x, y, z = np.asarray(v, dtype=np.float64)[:3].tolist()
    return {"x": x, "y": y, "z": z}


def instance_fields(inst: InstanceResult, header: Any = None) -> dict[str, Any]:
    """``instance_seg_msgs/Instance`` of one :class:`~.types.InstanceResult`: mask crops as mono8 (255 = object),
    a PointCloud2 (x, y, z + rgb when it has colors), centroid and oriented box. ``header`` goes on the images and
    the cloud."""
    qx, qy, qz, qw = np.asarray(inst.box_quat, dtype=np.float64)[:4].tolist()
    return {
        "index": int(inst.index),
        "track_id": int(inst.track_id),
        "class_id": int(inst.class_id),
        "class_name": str(inst.class_name),
        "score": float(inst.score),
        "bbox": roi_fields(inst.bbox),
        "mask": mask_image_fields(inst.mask, header),
        "amodal_bbox": roi_fields(inst.amodal_bbox),
        "amodal_mask": mask_image_fields(inst.amodal_mask, header),
        "occlusion": float(inst.occlusion),
        "is_occluded": bool(inst.is_occluded),
        "points": pointcloud2_fields(inst.points, inst.colors, header),
        "depth_coverage": float(inst.depth_coverage),
        "centroid": _xyz(inst.centroid),
        "box_pose": {"position": _xyz(inst.box_center),
                     "orientation": {"x": qx, "y": qy, "z": qz, "w": qw}},
        "box_size": _xyz(inst.box_size),
    }


def instance_array_fields(result: FrameResult, header: Any = None) -> dict[str, Any]:
    """``instance_seg_msgs/InstanceArray`` of a :class:`~.types.FrameResult` (the node's ``instances`` output)."""
    return _with_header({"height": int(result.height), "width": int(result.width),
                         "instances": [instance_fields(inst, header) for inst in result.instances]}, header)


# ---------------------------------------------------------------------------------------- reader
def _byte_buffer(data: Any, what: str) -> np.ndarray:
    """A flat uint8 view of a message's byte field (numpy array, ``array('B')``, bytes; a list is copied)."""
    try:
        if isinstance(data, np.ndarray):
            return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if isinstance(data, (list, tuple)):
            return np.asarray(data, dtype=np.uint8)
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as exc:
        raise MessageError(f"{what} data of type {type(data).__name__} is not a byte buffer ({exc}).") from exc


def pointcloud2_arrays(msg: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``(points float32[N, 3], colors uint8[N, 3] | None)`` of a PointCloud2 with float32 x, y, z and an optional
    packed rgb field (any cloud :func:`pointcloud2_fields` writes, or a PCL-style one).

    Raises:
        MessageError: no x, y, z fields, a field outside ``point_step``, or fewer data bytes than the cloud needs.
    """
    n = int(msg.width) * int(msg.height)
    offsets = {f.name: int(f.offset) for f in msg.fields}
    if not {"x", "y", "z"} <= offsets.keys():
        raise MessageError("PointCloud2 has no x, y, z fields.")
    has_rgb = "rgb" in offsets
    if n == 0:
        return np.zeros((0, 3), np.float32), (np.zeros((0, 3), np.uint8) if has_rgb else None)
    step = int(msg.point_step)
    used = [offsets[c] for c in ("x", "y", "z", "rgb") if c in offsets]
    if min(used) < 0 or max(used) + 4 > step:
        raise MessageError(f"PointCloud2 field offsets {used} do not fit its point_step {step}.")
    raw = _byte_buffer(msg.data, "PointCloud2")
    if raw.size < n * step:
        raise MessageError(f"PointCloud2 data has {raw.size} bytes, expected {n * step}.")
    rows = raw[: n * step].reshape(n, step)
    pts = np.stack([rows[:, offsets[c]:offsets[c] + 4].copy().view(np.float32)[:, 0] for c in "xyz"], axis=1)
    colors = None
    if has_rgb:
        packed = rows[:, offsets["rgb"]:offsets["rgb"] + 4].copy().view(np.uint32)[:, 0]
        colors = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)
    return pts, colors


def mask_from_image(img: Any) -> np.ndarray:
    """bool[H, W] of a mono8 mask image (set where > 127).

    Raises:
        MessageError: not mono8, a step below the width, or fewer data bytes than ``height * step``.
    """
    h, w, step = int(img.height), int(img.width), int(img.step)
    if h == 0 or w == 0:
        return np.zeros((h, w), dtype=bool)
    raw = _byte_buffer(img.data, "mask image")
    if img.encoding != MASK_ENCODING or raw.size < h * step or step < w:
        raise MessageError(f"A mask must be a mono8 image of {h}x{w} with step >= width, got {img.encoding} with "
                           f"{raw.size} bytes and step {step}.")
    return raw[: h * step].reshape(h, step)[:, :w] > 127


def _box(roi: Any) -> tuple[int, int, int, int]:
    return int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)


def _vec(v: Any) -> np.ndarray:
    return np.array([v.x, v.y, v.z], dtype=np.float64)


def instance_from_msg(m: Any) -> InstanceResult:
    """One ``Instance`` message back as an :class:`~.types.InstanceResult` (the inverse of :func:`instance_fields`)."""
    pts, colors = pointcloud2_arrays(m.points)
    o = m.box_pose.orientation
    return InstanceResult(
        index=int(m.index), class_id=int(m.class_id), class_name=str(m.class_name), score=float(m.score),
        bbox=_box(m.bbox), mask=mask_from_image(m.mask), amodal_bbox=_box(m.amodal_bbox),
        amodal_mask=mask_from_image(m.amodal_mask), occlusion=float(m.occlusion), is_occluded=bool(m.is_occluded),
        points=pts, colors=colors, depth_coverage=float(m.depth_coverage), centroid=_vec(m.centroid),
        box_center=_vec(m.box_pose.position), box_quat=np.array([o.x, o.y, o.z, o.w], dtype=np.float64),
        box_size=_vec(m.box_size), track_id=int(m.track_id),
    )


def frame_result_from_instance_array(msg: Any) -> FrameResult:
    """An InstanceArray (rclpy or rosbags message) back as a :class:`~.types.FrameResult`; ``label_image`` is rebuilt
    from the visible masks (the first instance wins where they overlap, as in the node).

    Raises:
        MessageError: a malformed mask image or point cloud (the message says which field and why).
    """
    h, w = int(msg.height), int(msg.width)
    label = np.zeros((h, w), dtype=np.uint16)
    instances = []
    for m in msg.instances:
        inst = instance_from_msg(m)
        x, y, bw, bh = inst.bbox
        if bw and bh and inst.mask.shape == (bh, bw) and x + bw <= w and y + bh <= h:
            region = label[y:y + bh, x:x + bw]
            region[inst.mask & (region == 0)] = inst.index
        instances.append(inst)
    return FrameResult(width=w, height=h, instances=instances, label_image=label)
