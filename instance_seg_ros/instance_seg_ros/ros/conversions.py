"""numpy / core results <-> ROS 2 messages, without per-element Python loops.

Message byte fields (``uint8[]``) are typed ``array.array('B')`` by rclpy; we fill them with one
``memcpy`` from a numpy buffer (``array.frombytes(memoryview)``) so the generated setter's per-element
validation never runs, and read them back with ``np.frombuffer`` (zero-copy).
Decoding of incoming images (encodings, validation) lives in :mod:`instance_seg_ros.core.images`.
"""

from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField, RegionOfInterest
from std_msgs.msg import Header

from instance_seg_msgs.msg import Instance, InstanceArray

from ..core.types import FrameResult, InstanceResult, Intrinsics

__all__ = [
    "byte_array",
    "camera_info_msg",
    "compressed_image_msg",
    "frame_result_from_msg",
    "header",
    "image_msg",
    "instance_array_msg",
    "instance_msg",
    "label_image_msg",
    "pointcloud2_msg",
    "pointcloud2_to_arrays",
    "stamp_from_ns",
    "stamp_to_ns",
]

_ENCODING_DTYPES = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}

# PointCloud2 layout: x, y, z float32 and, optionally, rgb packed in a float32 (PCL / RViz convention).
_XYZ_FIELDS = [
    PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
    PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
    PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
]
_RGB_FIELD = PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1)
_XYZRGB_FIELDS = [*_XYZ_FIELDS, _RGB_FIELD]


def byte_array(arr: np.ndarray) -> array.array:
    """One memcpy of a numpy array's bytes into the ``array('B')`` that rclpy byte fields hold."""
    out = array.array("B")
    out.frombytes(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
    return out


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stamp_from_ns(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def header(frame_id: str = "", stamp_ns: int = 0) -> Header:
    return Header(frame_id=frame_id, stamp=stamp_from_ns(stamp_ns))


def image_msg(arr: np.ndarray, encoding: str, hdr: Header | None = None) -> Image:
    """An Image from a ``[H, W]`` or ``[H, W, C]`` array whose dtype/channels match ``encoding``."""
    msg = Image()
    _fill_image(msg, arr, encoding, hdr)
    return msg


def _fill_image(msg: Image, arr: np.ndarray, encoding: str, hdr: Header | None) -> None:
    """Fill an existing Image in place (a message's default sub-message: no second construction)."""
    if encoding not in _ENCODING_DTYPES:
        raise ValueError(f"Unsupported encoding '{encoding}'; use one of {', '.join(_ENCODING_DTYPES)}.")
    dtype, channels = _ENCODING_DTYPES[encoding]
    arr = np.asarray(arr)
    if arr.dtype != dtype or (arr.shape[2] if arr.ndim == 3 else 1) != channels or arr.ndim not in (2, 3):
        raise ValueError(
            f"Encoding {encoding} needs a {np.dtype(dtype).name} array with {channels} channel(s), "
            f"got {arr.dtype.name} of shape {arr.shape}."
        )
    h, w = arr.shape[:2]
    if hdr is not None:
        msg.header = hdr
    msg.height, msg.width, msg.encoding = int(h), int(w), encoding
    msg.is_bigendian = 0
    msg.step = int(w * channels * arr.itemsize)
    _set_data(msg, byte_array(arr))


def compressed_image_msg(
    rgb: np.ndarray, fmt: str = "jpeg", hdr: Header | None = None, quality: int = 90
) -> CompressedImage:
    """A CompressedImage (``jpeg`` or ``png``) of an RGB uint8 image, as image_transport would publish it."""
    import cv2

    ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise ValueError(f"Unsupported compression '{fmt}'; use jpeg or png.")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise ValueError("Image encoding failed.")
    msg = CompressedImage()
    if hdr is not None:
        msg.header = hdr
    msg.format = f"rgb8; {'jpeg' if ext == '.jpg' else 'png'} compressed bgr8"
    msg.data = byte_array(buf)
    return msg


def camera_info_msg(k: Intrinsics, hdr: Header | None = None) -> CameraInfo:
    msg = CameraInfo()
    if hdr is not None:
        msg.header = hdr
    msg.width, msg.height = int(k.width), int(k.height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def label_image_msg(labels: np.ndarray, hdr: Header | None = None) -> Image:
    """mono16 label image: 0 background, else the instance ``index``."""
    return image_msg(np.asarray(labels, dtype=np.uint16), "mono16", hdr)


def pointcloud2_msg(points: np.ndarray, colors: np.ndarray | None = None, hdr: Header | None = None) -> PointCloud2:
    """An unorganized (height 1) PointCloud2 with x, y, z float32 and, with ``colors``, a packed rgb field."""
    msg = PointCloud2()
    _fill_cloud(msg, points, colors, hdr)
    return msg


# x, y, z as one 12-byte item: numpy copies one item per point instead of running an inner loop of length 3 per
# point; the color bytes are 3 strided 1-D copies. ~2x faster than float32 column arithmetic for a few thousand points.
_XYZRGB = np.dtype({"names": ["xyz", "rgb"], "formats": ["V12", "<u4"], "offsets": [0, 12], "itemsize": 16})
_ZERO_BYTE = array.array("B", b"\0")


def _pack_xyzrgb(pts: np.ndarray, rgb: np.ndarray) -> array.array:
    """[N, 3] float32 points + [N, 3] uint8 RGB -> the ``array('B')`` of N records of 16 bytes: x, y, z float32,
    then rgb as the little-endian uint32 ``0x00RRGGBB`` (bytes b, g, r, 0; read as a float32 by PCL / RViz).
    Packed straight into the array's own (zeroed) buffer: no intermediate copy."""
    n = pts.shape[0]
    out = _ZERO_BYTE * (16 * n)
    b8 = np.frombuffer(out, np.uint8)
    b8.view(_XYZRGB)["xyz"] = np.ascontiguousarray(pts).view("V12")[:, 0]
    b8[12::16] = rgb[:, 2]
    b8[13::16] = rgb[:, 1]
    b8[14::16] = rgb[:, 0]
    return out


def _set_data(msg, data: array.array) -> None:
    """``msg.data = data`` without a copy. Since Kilted, unchecked setters (``ROS_PYTHON_CHECK_FIELDS`` unset, the
    default) copy every value, ``array('B')`` included, while checked ones keep an ``array('B')`` as it is."""
    if getattr(msg, "_check_fields", True) is False:
        msg._check_fields = True
        try:
            msg.data = data
        finally:
            msg._check_fields = False
    else:
        msg.data = data


def _fill_cloud(msg: PointCloud2, points: np.ndarray, colors: np.ndarray | None, hdr: Header | None) -> None:
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    n = pts.shape[0]
    if colors is not None:
        rgb = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        if rgb.shape[0] != n:
            raise ValueError(f"colors has {rgb.shape[0]} rows but points has {n}.")
        data = _pack_xyzrgb(pts, rgb)
        fields = _XYZRGB_FIELDS
    else:
        data = byte_array(pts)
        fields = _XYZ_FIELDS
    if hdr is not None:
        msg.header = hdr
    msg.height, msg.width = 1, n
    msg.fields = list(fields)
    msg.is_bigendian = False
    msg.point_step = 16 if colors is not None else 12
    msg.row_step = msg.point_step * n
    msg.is_dense = True
    _set_data(msg, data)


def pointcloud2_to_arrays(msg: PointCloud2) -> tuple[np.ndarray, np.ndarray | None]:
    """``(points float32[N, 3], colors uint8[N, 3] | None)`` from a cloud written by :func:`pointcloud2_msg`
    (or any cloud with float32 x, y, z and an optional packed rgb field)."""
    n = int(msg.width) * int(msg.height)
    offsets = {f.name: f.offset for f in msg.fields}
    if not {"x", "y", "z"} <= offsets.keys():
        raise ValueError("PointCloud2 has no x, y, z fields.")
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if n == 0:
        return np.zeros((0, 3), np.float32), (np.zeros((0, 3), np.uint8) if "rgb" in offsets else None)
    rows = raw[: n * msg.point_step].reshape(n, msg.point_step)
    pts = np.stack([rows[:, offsets[c]: offsets[c] + 4].copy().view(np.float32)[:, 0] for c in "xyz"], axis=1)
    colors = None
    if "rgb" in offsets:
        packed = rows[:, offsets["rgb"]: offsets["rgb"] + 4].copy().view(np.uint32)[:, 0]
        colors = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)
    return pts, colors


def _roi(box: tuple[int, int, int, int]) -> RegionOfInterest:
    msg = RegionOfInterest()
    _fill_roi(msg, box)
    return msg


def _fill_roi(msg: RegionOfInterest, box: tuple[int, int, int, int]) -> None:
    x, y, w, h = box
    msg.x_offset, msg.y_offset, msg.width, msg.height = int(x), int(y), int(w), int(h)
    msg.do_rectify = False


def _mask_bytes(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    return (m.view(np.uint8) * np.uint8(255)) if m.dtype == bool else np.where(m > 0, 255, 0).astype(np.uint8)


def _mask_msg(mask: np.ndarray, hdr: Header) -> Image:
    return image_msg(_mask_bytes(mask), "mono8", hdr)


def _fill_xyz(msg, v: np.ndarray) -> None:
    msg.x, msg.y, msg.z = float(v[0]), float(v[1]), float(v[2])


def instance_msg(inst: InstanceResult, hdr: Header) -> Instance:
    """One Instance: every sub-message is the Instance's own default one, filled in place (half the objects a
    build-then-assign would construct), and every array is one memcpy (see :func:`byte_array`)."""
    msg = Instance()
    msg.index = int(inst.index)
    msg.track_id = int(inst.track_id)
    msg.class_id = int(inst.class_id)
    msg.class_name = str(inst.class_name)
    msg.score = float(inst.score)
    _fill_roi(msg.bbox, inst.bbox)
    _fill_image(msg.mask, _mask_bytes(inst.mask), "mono8", hdr)
    _fill_roi(msg.amodal_bbox, inst.amodal_bbox)
    _fill_image(msg.amodal_mask, _mask_bytes(inst.amodal_mask), "mono8", hdr)
    msg.occlusion = float(inst.occlusion)
    msg.is_occluded = bool(inst.is_occluded)
    _fill_cloud(msg.points, inst.points, inst.colors, hdr)
    msg.depth_coverage = float(inst.depth_coverage)
    _fill_xyz(msg.centroid, np.asarray(inst.centroid, dtype=np.float64))
    pose = msg.box_pose
    _fill_xyz(pose.position, np.asarray(inst.box_center, dtype=np.float64))
    q = np.asarray(inst.box_quat, dtype=np.float64)
    o = pose.orientation
    o.x, o.y, o.z, o.w = float(q[0]), float(q[1]), float(q[2]), float(q[3])
    _fill_xyz(msg.box_size, np.asarray(inst.box_size, dtype=np.float64))
    return msg


def instance_array_msg(result: FrameResult, hdr: Header) -> InstanceArray:
    """The node's ``instances`` output; the header is the color image's."""
    msg = InstanceArray()
    msg.header = hdr
    msg.height, msg.width = int(result.height), int(result.width)
    msg.instances = [instance_msg(inst, hdr) for inst in result.instances]
    return msg


def _mask_from_msg(img: Image) -> np.ndarray:
    if img.height == 0 or img.width == 0:
        return np.zeros((int(img.height), int(img.width)), dtype=bool)
    raw = np.frombuffer(img.data, dtype=np.uint8).reshape(img.height, img.step)[:, : img.width]
    return raw > 127


def frame_result_from_msg(msg: InstanceArray) -> FrameResult:
    """Parse an InstanceArray back into core types (for evaluation, the demo and tests)."""
    instances = []
    h, w = int(msg.height), int(msg.width)
    label = np.zeros((h, w), dtype=np.uint16)
    for m in msg.instances:
        pts, colors = pointcloud2_to_arrays(m.points)
        inst = InstanceResult(
            index=int(m.index),
            class_id=int(m.class_id),
            class_name=m.class_name,
            score=float(m.score),
            bbox=(m.bbox.x_offset, m.bbox.y_offset, m.bbox.width, m.bbox.height),
            mask=_mask_from_msg(m.mask),
            amodal_bbox=(m.amodal_bbox.x_offset, m.amodal_bbox.y_offset, m.amodal_bbox.width, m.amodal_bbox.height),
            amodal_mask=_mask_from_msg(m.amodal_mask),
            occlusion=float(m.occlusion),
            is_occluded=bool(m.is_occluded),
            points=pts,
            colors=colors,
            depth_coverage=float(m.depth_coverage),
            centroid=np.array([m.centroid.x, m.centroid.y, m.centroid.z]),
            box_center=np.array([m.box_pose.position.x, m.box_pose.position.y, m.box_pose.position.z]),
            box_quat=np.array([m.box_pose.orientation.x, m.box_pose.orientation.y, m.box_pose.orientation.z,
                               m.box_pose.orientation.w]),
            box_size=np.array([m.box_size.x, m.box_size.y, m.box_size.z]),
            track_id=int(m.track_id),
        )
        x, y, bw, bh = inst.bbox
        if bw and bh and inst.mask.shape == (bh, bw):
            region = label[y:y + bh, x:x + bw]
            region[inst.mask & (region == 0)] = inst.index
        instances.append(inst)
    return FrameResult(width=w, height=h, instances=instances, label_image=label)
