"""rosbag2 I/O without ROS: a rosbags typestore with our messages, message builders from numpy and the
core result types, and the reverse parser (InstanceArray -> FrameResult) for the evaluator.

The typestore is ROS 2 Kilted's (falling back to Jazzy's) plus ``instance_seg_msgs/msg/Instance`` and
``InstanceArray``, parsed from the package's ``.msg`` files (the installed share directory through
``ament_index_python`` when available, else the repository's ``instance_seg_msgs/msg``).

Messages are rosbags dataclasses; byte fields are numpy ``uint8`` *views* of the source arrays (no
copy until serialisation). Decoding images back to numpy: :mod:`instance_seg_ros.core.images`
(``color_from_msg``, ``depth_from_msg``, ``color_from_compressed_msg``, ``intrinsics_from_camera_info``
accept rosbags messages).

Example::

    ts = typestore()
    msg = image_msg(rgb, "rgb8", stamp_ns=t, frame_id="camera_color_optical_frame")
    raw = ts.serialize_cdr(msg, msg.__msgtype__)
    for topic, t, msg in read_messages("run.mcap.d"): ...
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.types import FrameResult, InstanceResult, Intrinsics

__all__ = [
    "BagError",
    "INSTANCE_ARRAY",
    "OPTICAL_FRAME",
    "camera_info_msg",
    "compressed_image_msg",
    "frame_result_from_instance_array",
    "header",
    "image_msg",
    "instance_array_msg",
    "msg_dir",
    "pointcloud2_arrays",
    "pointcloud2_msg",
    "read_messages",
    "stamp_ns",
    "typestore",
]

INSTANCE = "instance_seg_msgs/msg/Instance"
INSTANCE_ARRAY = "instance_seg_msgs/msg/InstanceArray"
OPTICAL_FRAME = "camera_color_optical_frame"

_ENCODINGS = {
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1), "mono16": (np.uint16, 1), "16UC1": (np.uint16, 1), "32FC1": (np.float32, 1),
}
_FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32


class BagError(ValueError):
    """Bad input to a message builder, or a bag that cannot be read; the message says what to change."""


# ---------------------------------------------------------------------------------------- typestore
def msg_dir() -> Path:
    """Directory of ``Instance.msg`` / ``InstanceArray.msg`` (installed share dir first, then the repository)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            share = Path(get_package_share_directory("instance_seg_msgs")) / "msg"
            if (share / "Instance.msg").is_file():
                return share
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    repo = Path(__file__).resolve().parents[3] / "instance_seg_msgs" / "msg"
    if (repo / "Instance.msg").is_file():
        return repo
    raise BagError("Cannot find instance_seg_msgs/msg/Instance.msg: build the instance_seg_msgs package "
                   "(colcon build) or run from the repository.")


@functools.lru_cache(maxsize=1)
def typestore() -> Any:
    """The rosbags Typestore (ROS 2 Kilted, else Jazzy) with Instance and InstanceArray registered."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(getattr(Stores, "ROS2_KILTED", Stores.ROS2_JAZZY))
    d = msg_dir()
    types: dict[str, Any] = {}
    for name in ("Instance", "InstanceArray"):
        types.update(get_types_from_msg((d / f"{name}.msg").read_text(), f"instance_seg_msgs/msg/{name}"))
    store.register(types)
    return store


def _t(name: str) -> Any:
    return typestore().types[name]


# ---------------------------------------------------------------------------------------- builders
def stamp_ns(msg_or_header: Any) -> int:
    """Nanoseconds of a Header (or of a message's ``header``)."""
    h = getattr(msg_or_header, "header", msg_or_header)
    return int(h.stamp.sec) * 1_000_000_000 + int(h.stamp.nanosec)


def header(stamp_ns: int = 0, frame_id: str = OPTICAL_FRAME) -> Any:
    time = _t("builtin_interfaces/msg/Time")(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))
    return _t("std_msgs/msg/Header")(stamp=time, frame_id=frame_id)


def _bytes_view(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def image_msg(arr: np.ndarray, encoding: str, *, stamp_ns: int = 0, frame_id: str = OPTICAL_FRAME) -> Any:
    """sensor_msgs/Image of ``arr`` (``[H, W]`` or ``[H, W, C]``, dtype/channels matching ``encoding``: rgb8,
    bgr8, rgba8, bgra8, mono8, mono16, 16UC1, 32FC1). ``data`` is a uint8 view of ``arr`` (no copy)."""
    if encoding not in _ENCODINGS:
        raise BagError(f"Unsupported encoding {encoding!r}; use one of {', '.join(_ENCODINGS)}.")
    dtype, channels = _ENCODINGS[encoding]
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3) or arr.dtype != dtype or (arr.shape[2] if arr.ndim == 3 else 1) != channels:
        raise BagError(f"Encoding {encoding} needs a {np.dtype(dtype).name} array with {channels} channel(s), "
                       f"got {arr.dtype.name} of shape {arr.shape}.")
    h, w = arr.shape[:2]
    if arr.dtype.byteorder == ">":
        raise BagError("Pass a little-endian (native) array.")
    return _t("sensor_msgs/msg/Image")(
        header=header(stamp_ns, frame_id), height=int(h), width=int(w), encoding=encoding, is_bigendian=0,
        step=int(w * channels * np.dtype(dtype).itemsize), data=_bytes_view(arr),
    )


def compressed_image_msg(
    rgb: np.ndarray, fmt: str = "jpeg", *, quality: int = 90, stamp_ns: int = 0, frame_id: str = OPTICAL_FRAME
) -> Any:
    """sensor_msgs/CompressedImage (``jpeg`` or ``png``) of an RGB uint8 ``[H, W, 3]`` image, with the
    ``format`` string image_transport writes (``rgb8; jpeg compressed bgr8``)."""
    import cv2

    ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise BagError(f"Unsupported compression {fmt!r}; use jpeg or png.")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise BagError(f"compressed_image_msg needs uint8 [H, W, 3] RGB, got {rgb.dtype.name} {rgb.shape}.")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise BagError("Image encoding failed.")
    return _t("sensor_msgs/msg/CompressedImage")(
        header=header(stamp_ns, frame_id), format=f"rgb8; {'jpeg' if ext == '.jpg' else 'png'} compressed bgr8",
        data=buf.reshape(-1),
    )


def camera_info_msg(k: Intrinsics, *, stamp_ns: int = 0, frame_id: str = OPTICAL_FRAME) -> Any:
    """sensor_msgs/CameraInfo of a distortion-free pinhole camera (plumb_bob, d = 0)."""
    roi = _t("sensor_msgs/msg/RegionOfInterest")(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return _t("sensor_msgs/msg/CameraInfo")(
        header=header(stamp_ns, frame_id), height=int(k.height), width=int(k.width), distortion_model="plumb_bob",
        d=np.zeros(5, dtype=np.float64),
        k=np.array([k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0]),
        r=np.eye(3).reshape(-1),
        p=np.array([k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0]),
        binning_x=0, binning_y=0, roi=roi,
    )


def pointcloud2_msg(
    points: np.ndarray, colors: np.ndarray | None = None, *, stamp_ns: int = 0, frame_id: str = OPTICAL_FRAME
) -> Any:
    """Unorganized sensor_msgs/PointCloud2: x, y, z float32 and, with ``colors`` (uint8[N, 3]), ``rgb`` packed
    in a float32 (the PCL / RViz convention)."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    n = pts.shape[0]
    field_t = _t("sensor_msgs/msg/PointField")
    fields = [field_t(name=c, offset=4 * i, datatype=_FLOAT32, count=1) for i, c in enumerate("xyz")]
    if colors is not None:
        rgb = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        if rgb.shape[0] != n:
            raise BagError(f"colors has {rgb.shape[0]} rows but points has {n}.")
        buf = np.empty((n, 4), dtype=np.float32)
        buf[:, :3] = pts
        buf[:, 3] = ((rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]).view(
            np.float32)
        fields.append(field_t(name="rgb", offset=12, datatype=_FLOAT32, count=1))
    else:
        buf = pts
    step = 4 * buf.shape[1]
    return _t("sensor_msgs/msg/PointCloud2")(
        header=header(stamp_ns, frame_id), height=1, width=n, fields=fields, is_bigendian=False,
        point_step=step, row_step=step * n, data=_bytes_view(buf), is_dense=True,
    )


def pointcloud2_arrays(msg: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``(points float32[N, 3], colors uint8[N, 3] | None)`` of a PointCloud2 with float32 x, y, z (+ rgb)."""
    n = int(msg.width) * int(msg.height)
    offsets = {f.name: int(f.offset) for f in msg.fields}
    if not {"x", "y", "z"} <= offsets.keys():
        raise BagError("PointCloud2 has no x, y, z fields.")
    has_rgb = "rgb" in offsets
    if n == 0:
        return np.zeros((0, 3), np.float32), (np.zeros((0, 3), np.uint8) if has_rgb else None)
    raw = np.frombuffer(np.asarray(msg.data, dtype=np.uint8), dtype=np.uint8)
    if raw.size < n * int(msg.point_step):
        raise BagError(f"PointCloud2 data has {raw.size} bytes, expected {n * int(msg.point_step)}.")
    rows = raw[: n * int(msg.point_step)].reshape(n, int(msg.point_step))
    pts = np.stack([rows[:, offsets[c]:offsets[c] + 4].copy().view(np.float32)[:, 0] for c in "xyz"], axis=1)
    colors = None
    if has_rgb:
        packed = rows[:, offsets["rgb"]:offsets["rgb"] + 4].copy().view(np.uint32)[:, 0]
        colors = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)
    return pts, colors


def _roi(box: Sequence[int]) -> Any:
    x, y, w, h = (int(v) for v in box)
    return _t("sensor_msgs/msg/RegionOfInterest")(x_offset=x, y_offset=y, height=h, width=w, do_rectify=False)


def _mask_image(mask: np.ndarray, stamp: int, frame_id: str) -> Any:
    m = np.asarray(mask)
    m8 = np.where(m.astype(bool), np.uint8(255), np.uint8(0)).astype(np.uint8)
    return image_msg(m8, "mono8", stamp_ns=stamp, frame_id=frame_id)


def instance_array_msg(result: FrameResult, *, stamp_ns: int = 0, frame_id: str = OPTICAL_FRAME) -> Any:
    """instance_seg_msgs/InstanceArray of a FrameResult: mask crops as mono8 (255 = object), a PointCloud2 per
    instance (x, y, z + rgb when it has colors), centroid and oriented box."""
    point_t, quat_t = _t("geometry_msgs/msg/Point"), _t("geometry_msgs/msg/Quaternion")
    pose_t, vec_t = _t("geometry_msgs/msg/Pose"), _t("geometry_msgs/msg/Vector3")
    inst_t = _t(INSTANCE)
    instances = []
    for r in result.instances:
        c, bc = np.asarray(r.centroid, np.float64), np.asarray(r.box_center, np.float64)
        q, s = np.asarray(r.box_quat, np.float64), np.asarray(r.box_size, np.float64)
        instances.append(inst_t(
            index=int(r.index), track_id=int(r.track_id), class_id=int(r.class_id), class_name=str(r.class_name),
            score=float(r.score), bbox=_roi(r.bbox), mask=_mask_image(r.mask, stamp_ns, frame_id),
            amodal_bbox=_roi(r.amodal_bbox), amodal_mask=_mask_image(r.amodal_mask, stamp_ns, frame_id),
            occlusion=float(r.occlusion), is_occluded=bool(r.is_occluded),
            points=pointcloud2_msg(r.points, r.colors, stamp_ns=stamp_ns, frame_id=frame_id),
            depth_coverage=float(r.depth_coverage),
            centroid=point_t(x=float(c[0]), y=float(c[1]), z=float(c[2])),
            box_pose=pose_t(position=point_t(x=float(bc[0]), y=float(bc[1]), z=float(bc[2])),
                            orientation=quat_t(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))),
            box_size=vec_t(x=float(s[0]), y=float(s[1]), z=float(s[2])),
        ))
    return _t(INSTANCE_ARRAY)(header=header(stamp_ns, frame_id), height=int(result.height), width=int(result.width),
                              instances=instances)


def _mask_from_image(img: Any) -> np.ndarray:
    h, w, step = int(img.height), int(img.width), int(img.step)
    if h == 0 or w == 0:
        return np.zeros((h, w), dtype=bool)
    raw = np.asarray(img.data, dtype=np.uint8)
    if img.encoding != "mono8" or raw.size < h * step or step < w:
        raise BagError(f"A mask must be a mono8 image of {h}x{w} with step >= width, got {img.encoding} with "
                       f"{raw.size} bytes and step {step}.")
    return raw[: h * step].reshape(h, step)[:, :w] > 127


def frame_result_from_instance_array(msg: Any) -> FrameResult:
    """Parse an InstanceArray (rosbags or rclpy message) back into a FrameResult; ``label_image`` is rebuilt
    from the visible masks (the first instance wins where they overlap, as in the node)."""
    h, w = int(msg.height), int(msg.width)
    label = np.zeros((h, w), dtype=np.uint16)
    instances = []
    for m in msg.instances:
        pts, colors = pointcloud2_arrays(m.points)
        bbox = (int(m.bbox.x_offset), int(m.bbox.y_offset), int(m.bbox.width), int(m.bbox.height))
        abox = (int(m.amodal_bbox.x_offset), int(m.amodal_bbox.y_offset), int(m.amodal_bbox.width),
                int(m.amodal_bbox.height))
        inst = InstanceResult(
            index=int(m.index), class_id=int(m.class_id), class_name=str(m.class_name), score=float(m.score),
            bbox=bbox, mask=_mask_from_image(m.mask), amodal_bbox=abox, amodal_mask=_mask_from_image(m.amodal_mask),
            occlusion=float(m.occlusion), is_occluded=bool(m.is_occluded), points=pts, colors=colors,
            depth_coverage=float(m.depth_coverage),
            centroid=np.array([m.centroid.x, m.centroid.y, m.centroid.z], dtype=np.float64),
            box_center=np.array([m.box_pose.position.x, m.box_pose.position.y, m.box_pose.position.z]),
            box_quat=np.array([m.box_pose.orientation.x, m.box_pose.orientation.y, m.box_pose.orientation.z,
                               m.box_pose.orientation.w]),
            box_size=np.array([m.box_size.x, m.box_size.y, m.box_size.z]),
            track_id=int(m.track_id),
        )
        x, y, bw, bh = bbox
        if bw and bh and inst.mask.shape == (bh, bw) and x + bw <= w and y + bh <= h:
            region = label[y:y + bh, x:x + bw]
            region[inst.mask & (region == 0)] = inst.index
        instances.append(inst)
    return FrameResult(width=w, height=h, instances=instances, label_image=label)


# ---------------------------------------------------------------------------------------- reading
def read_messages(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[tuple[str, int, Any]]:
    """``(topic, bag timestamp ns, deserialized message)`` of a rosbag2 (mcap or sqlite3), in time order."""
    from rosbags.highlevel import AnyReader

    p = Path(path)
    if not p.exists():
        raise BagError(f"No bag at {p}.")
    with AnyReader([p], default_typestore=typestore()) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for conn, t, raw in reader.messages(connections=conns):
            yield conn.topic, int(t), reader.deserialize(raw, conn.msgtype)
