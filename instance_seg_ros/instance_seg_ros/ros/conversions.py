"""numpy / core results <-> ROS 2 messages (rclpy), without per-element Python loops.

The messages' layout, encodings and checks are :mod:`instance_seg_ros.core.msg_codec`'s (shared with the rosbags
tools, :mod:`instance_seg_ros.tools.bagio`); this module is its rclpy backend: :func:`fill` writes a codec field
tree into an rclpy message, filling the sub-messages the message already holds in place (half the objects a
build-then-assign would construct). Byte fields (``uint8[]``) are typed ``array.array('B')`` by rclpy; we fill them
with one ``memcpy`` from a numpy buffer (``array.frombytes(memoryview)``) so the generated setter's per-element
validation never runs. Reading back is the codec's duck-typed reader
(:func:`~instance_seg_ros.core.msg_codec.frame_result_from_instance_array`, ``np.frombuffer``, zero-copy).
Decoding of incoming images (encodings, validation) lives in :mod:`instance_seg_ros.core.images`.
"""

from __future__ import annotations

import array
import functools
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from instance_seg_msgs.msg import InstanceArray

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
    """The node's ``instances`` output; the header is the color image's. Every sub-message of each Instance is its
    own default one, filled in place, and every array is one memcpy."""
    return fill(InstanceArray(), codec.instance_array_fields(result, hdr))
