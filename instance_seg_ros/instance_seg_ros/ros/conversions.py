"""numpy / core results <-> ROS 2 messages (rclpy), without per-element Python loops.

The messages' layout, encodings and checks are :mod:`instance_seg_ros.core.msg_codec`'s (shared with the rosbags
tools, :mod:`instance_seg_ros.tools.bagio`); this module is its rclpy backend: :func:`fill` writes a codec field
tree into an rclpy message, filling the sub-messages the message already holds in place (half the objects a
build-then-assign would construct). Byte fields (``uint8[]``) are typed ``array.array('B')`` by rclpy; we fill them
with one ``memcpy`` from a numpy buffer (``array.frombytes(memoryview)``) so the generated setter's per-element
validation never runs. The node's InstanceArray (~400 messages at 30 instances) skips the tree:
:func:`instance_array_msg` writes the same values straight into the messages' slots (see "the fast InstanceArray"
below). Reading back is the codec's duck-typed reader
(:func:`~instance_seg_ros.core.msg_codec.frame_result_from_instance_array`, ``np.frombuffer``, zero-copy).
Decoding of incoming images (encodings, validation) lives in :mod:`instance_seg_ros.core.images`.
"""

from __future__ import annotations

import array
import functools
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, RegionOfInterest
from std_msgs.msg import Header

from instance_seg_msgs.msg import Instance, InstanceArray

from ..core import msg_codec as codec
from ..core.msg_codec import stamp_to_ns
from ..core.types import FrameResult, Intrinsics

__all__ = [
    "camera_info_msg",
    "compressed_image_msg",
    "fill",
    "header",
    "image_msg",
    "instance_array_msg",
    "label_image_msg",
    "stamp_from_ns",
    "stamp_to_ns",
]


def _set_bytes(msg: Any, name: str, data: array.array) -> None:
    """``msg.<name> = data`` without a copy. Since Kilted, unchecked setters (``ROS_PYTHON_CHECK_FIELDS`` unset, the
    default) copy every value, ``array('B')`` included, while checked ones keep an ``array('B')`` as it is."""
    if getattr(msg, "_check_fields", True) is False:
        msg._check_fields = True
        try:
            setattr(msg, name, data)
        finally:
            msg._check_fields = False
    else:
        setattr(msg, name, data)


@functools.cache
def _element_type(msg_type: type, name: str) -> type:
    """The message class of the elements of sequence field ``name`` of ``msg_type``: a fixed table of the message
    sequences our codec writes (no module is imported by a name read from data)."""
    from sensor_msgs.msg import PointCloud2, PointField

    from instance_seg_msgs.msg import Instance, InstanceArray

    table = {(PointCloud2, "fields"): PointField, (InstanceArray, "instances"): Instance}
    try:
        return table[msg_type, name]
    except KeyError:
        raise TypeError(f"{msg_type.__name__}.{name} is not a message sequence this codec writes; add it to "
                        "ros/conversions._element_type.") from None


_shared_sequences: dict[tuple[type, str, int], tuple[tuple[dict[str, Any], ...], list[Any]]] = {}


def _shared(msg_type: type, name: str, trees: tuple[dict[str, Any], ...]) -> list[Any]:
    """The messages of a constant sequence (a codec tuple such as its PointCloud2 fields), built once."""
    key = (msg_type, name, id(trees))
    hit = _shared_sequences.get(key)
    if hit is None or hit[0] is not trees:
        cls = _element_type(msg_type, name)
        hit = _shared_sequences[key] = (trees, [fill(cls(), t) for t in trees])
    return hit[1]


def fill(msg: Any, tree: dict[str, Any]) -> Any:
    """Write a :mod:`~instance_seg_ros.core.msg_codec` field tree into the rclpy message ``msg`` (in place); returns
    ``msg``."""
    for name, value in tree.items():
        kind = type(value)
        if kind in _SCALARS:
            setattr(msg, name, value)
        elif kind is dict:
            fill(getattr(msg, name), value)
        elif kind is np.ndarray:  # the codec's byte fields are flat, contiguous uint8: one memcpy
            data = array.array("B")
            data.frombytes(value)
            _set_bytes(msg, name, data)
        elif kind is array.array:
            _set_bytes(msg, name, value)
        elif kind is tuple:
            setattr(msg, name, list(_shared(type(msg), name, value)))
        elif kind is list and value and type(value[0]) is dict:
            cls = _element_type(type(msg), name)
            setattr(msg, name, [fill(cls(), t) for t in value])
        else:  # a header message, a list of numbers
            setattr(msg, name, value)
    return msg


_SCALARS = frozenset({int, float, bool, str})


def stamp_from_ns(ns: int) -> Time:
    sec, nanosec = codec.split_stamp(ns)
    return Time(sec=sec, nanosec=nanosec)


def header(frame_id: str = "", stamp_ns: int = 0) -> Header:
    return Header(frame_id=frame_id, stamp=stamp_from_ns(stamp_ns))


def image_msg(arr: np.ndarray, encoding: str, hdr: Header | None = None) -> Image:
    """An Image from a ``[H, W]`` or ``[H, W, C]`` array whose dtype/channels match ``encoding``."""
    return fill(Image(), codec.image_fields(arr, encoding, hdr))


def compressed_image_msg(
    rgb: np.ndarray, fmt: str = "jpeg", hdr: Header | None = None, quality: int = 90
) -> CompressedImage:
    """A CompressedImage (``jpeg`` or ``png``) of an RGB uint8 image, as image_transport would publish it."""
    return fill(CompressedImage(), codec.compressed_image_fields(rgb, fmt, quality, hdr))


def camera_info_msg(k: Intrinsics, hdr: Header | None = None) -> CameraInfo:
    return fill(CameraInfo(), codec.camera_info_fields(k, hdr))


def label_image_msg(labels: np.ndarray, hdr: Header | None = None) -> Image:
    """mono16 label image: 0 background, else the instance ``index``."""
    return image_msg(np.asarray(labels, dtype=np.uint16), "mono16", hdr)


def instance_array_msg(result: FrameResult, hdr: Header) -> InstanceArray:
    """The node's ``instances`` output; the header is the color image's (shared by every image and cloud in it, as
    :func:`fill` does). Built by :func:`_fast_instance_array`: the same message, object for object and byte for byte,
    as ``fill(InstanceArray(), codec.instance_array_fields(result, hdr))``, in about half the time; that plain build
    when ``hdr`` is None or the messages check their fields (``ROS_PYTHON_CHECK_FIELDS=1``)."""
    if hdr is None or not _fast_build_ok():
        return fill(InstanceArray(), codec.instance_array_fields(result, hdr))
    return _fast_instance_array(result, hdr)


# ---------------------------------------------------------------------------------------- the fast InstanceArray
# The codec's field tree is general and cheap per field, but an InstanceArray of 30 instances holds ~400 messages: the
# tree, the default sub-messages each constructor builds (and fill then overwrites) and the setters cost more than the
# data. The fast build below writes the same values straight into new message objects: ``cls.__new__`` plus one store
# per slot (``_<field>``, what the generated setters store when they do not check), no constructor, no defaults, no
# tree. Its content is instance_fields' (core/msg_codec.py): a change there must be made here too; test_msgs_roundtrip
# checks that the two builds stay equal, object for object, and carry the same bytes.

_new = object.__new__


def _make_roi(x: int, y: int, h: int, w: int) -> RegionOfInterest:
    m = _new(RegionOfInterest)
    m._x_offset, m._y_offset, m._height, m._width, m._do_rectify, m._check_fields = x, y, h, w, False, False
    return m


def _make_image(hdr: Header, h: int, w: int, data: array.array) -> Image:
    m = _new(Image)
    m._header, m._height, m._width, m._encoding, m._is_bigendian, m._step, m._data, m._check_fields = (
        hdr, h, w, codec.MASK_ENCODING, 0, w, data, False)
    return m


def _make_cloud(hdr: Header, n: int, fields: list[Any], step: int, data: array.array) -> PointCloud2:
    m = _new(PointCloud2)
    (m._header, m._height, m._width, m._fields, m._is_bigendian, m._point_step, m._row_step, m._data, m._is_dense,
     m._check_fields) = hdr, 1, n, fields, False, step, step * n, data, True, False
    return m


def _make_point(cls: type, xyz: tuple[float, float, float]) -> Any:  # Point, Vector3
    m = _new(cls)
    (m._x, m._y, m._z), m._check_fields = xyz, False
    return m


def _make_pose(position: Point, q: tuple[float, float, float, float]) -> Pose:
    o = _new(Quaternion)
    (o._x, o._y, o._z, o._w), o._check_fields = q, False
    m = _new(Pose)
    m._position, m._orientation, m._check_fields = position, o, False
    return m


#: The slots each maker above stores, per class; the fast build runs only when the generated classes have exactly
#: these (and do not check their fields).
_FAST_SLOTS = {
    RegionOfInterest: ("_x_offset", "_y_offset", "_height", "_width", "_do_rectify"),
    Image: ("_header", "_height", "_width", "_encoding", "_is_bigendian", "_step", "_data"),
    PointCloud2: ("_header", "_height", "_width", "_fields", "_is_bigendian", "_point_step", "_row_step", "_data",
                  "_is_dense"),
    Point: ("_x", "_y", "_z"), Vector3: ("_x", "_y", "_z"), Quaternion: ("_x", "_y", "_z", "_w"),
    Pose: ("_position", "_orientation"),
    Instance: ("_index", "_track_id", "_class_id", "_class_name", "_score", "_bbox", "_mask", "_amodal_bbox",
               "_amodal_mask", "_occlusion", "_is_occluded", "_points", "_depth_coverage", "_centroid", "_box_pose",
               "_box_size"),
    InstanceArray: ("_header", "_height", "_width", "_instances"),
}


@functools.cache
def _fast_build_ok() -> bool:
    """The generated classes are laid out as the makers expect (slots ``_<field>`` in ``.msg`` order, then
    ``_check_fields``) and do not check their fields (``ROS_PYTHON_CHECK_FIELDS`` unset): else the plain build runs,
    with its checks."""
    for cls, slots in _FAST_SLOTS.items():
        fields = tuple(f"_{f}" for f in cls.get_fields_and_field_types())
        if fields != slots or tuple(getattr(cls, "__slots__", ())) != (*slots, "_check_fields"):
            return False
        if cls()._check_fields is not False:
            return False
    return True


def _mask_data(mask: Any) -> array.array | None:
    """The mono8 bytes (255 = set) of a 2-D bool mask as ``array('B')`` (what ``codec.mask_bytes`` gives, copied as
    :func:`fill` copies it); None for anything else (the caller then takes the codec's path, with its checks)."""
    if type(mask) is not np.ndarray or mask.dtype != np.bool_ or mask.ndim != 2:
        return None
    data = array.array("B")
    if mask.flags.c_contiguous:
        data.frombytes(mask.view(np.uint8))  # 0/1, made 0/255 in place: no temporary
        if len(data):
            np.multiply(np.frombuffer(data, np.uint8), _U8_255, out=np.frombuffer(data, np.uint8))
    else:
        data.frombytes(mask.view(np.uint8) * _U8_255)
    return data


_U8_255 = np.uint8(255)


def _image(mask: Any, hdr: Header) -> Image:
    data = _mask_data(mask)
    if data is None:
        return fill(Image(), codec.mask_image_fields(mask, hdr))
    h, w = mask.shape
    return _make_image(hdr, h, w, data)


def _roi(box: Any) -> RegionOfInterest:
    x, y, w, h = box
    return _make_roi(int(x), int(y), int(h), int(w))


def _cloud(points: Any, colors: Any, hdr: Header) -> PointCloud2:
    if type(points) is np.ndarray and points.dtype == np.float32 and points.ndim == 2 and points.shape[1] == 3:
        n = points.shape[0]
        if colors is None:
            data = array.array("B")
            data.frombytes(codec._bytes_view(points))
            return _make_cloud(hdr, n, list(_shared(PointCloud2, "fields", codec.XYZ_FIELDS)), 12, data)
        if type(colors) is np.ndarray and colors.dtype == np.uint8 and colors.shape == (n, 3):
            return _make_cloud(hdr, n, list(_shared(PointCloud2, "fields", codec.XYZRGB_FIELDS)), 16,
                               codec._pack_xyzrgb(points, colors))
    return fill(PointCloud2(), codec.pointcloud2_fields(points, colors, hdr))


def _xyz(v: Any) -> tuple[float, float, float]:
    if type(v) is np.ndarray and v.dtype == np.float64 and v.shape == (3,):
        x, y, z = v.tolist()
    else:
        x, y, z = np.asarray(v, dtype=np.float64)[:3].tolist()
    return x, y, z


def _fast_instance_array(result: FrameResult, hdr: Header) -> InstanceArray:
    out = []
    for inst in result.instances:  # instance_fields, field for field
        qx, qy, qz, qw = np.asarray(inst.box_quat, dtype=np.float64)[:4].tolist()
        m = _new(Instance)
        (m._index, m._track_id, m._class_id, m._class_name, m._score, m._bbox, m._mask, m._amodal_bbox,
         m._amodal_mask, m._occlusion, m._is_occluded, m._points, m._depth_coverage, m._centroid, m._box_pose,
         m._box_size, m._check_fields) = (
            int(inst.index), int(inst.track_id), int(inst.class_id), str(inst.class_name), float(inst.score),
            _roi(inst.bbox), _image(inst.mask, hdr), _roi(inst.amodal_bbox), _image(inst.amodal_mask, hdr),
            float(inst.occlusion), bool(inst.is_occluded), _cloud(inst.points, inst.colors, hdr),
            float(inst.depth_coverage), _make_point(Point, _xyz(inst.centroid)),
            _make_pose(_make_point(Point, _xyz(inst.box_center)), (qx, qy, qz, qw)),
            _make_point(Vector3, _xyz(inst.box_size)), False)
        out.append(m)
    m = _new(InstanceArray)
    m._header, m._height, m._width, m._instances = hdr, int(result.height), int(result.width), out
    m._check_fields = False
    return m
