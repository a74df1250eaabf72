"""rosbag2 I/O without ROS: a rosbags typestore with our messages, the rosbags backend of the message codec
(builders from numpy and the core result types), and reading bags (messages, topics, the checks ``isr eval``
makes before it replays one).

The messages' layout, encodings and checks are :mod:`instance_seg_ros.core.msg_codec`'s (shared with the node's
rclpy messages); :func:`build` turns a codec field tree into rosbags dataclasses. Parsing an InstanceArray back
(:func:`frame_result_from_instance_array`, :func:`pointcloud2_arrays`) is the codec's duck-typed reader, which
raises :class:`~instance_seg_ros.core.msg_codec.MessageError`.

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

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..core import msg_codec as codec
from ..core.msg_codec import MessageError, frame_result_from_instance_array, pointcloud2_arrays, stamp_ns
from ..core.types import FrameResult, Intrinsics

__all__ = [
    "BagError",
    "INSTANCE_ARRAY",
    "MissingTopicError",
    "OPTICAL_FRAME",
    "build",
    "camera_info_msg",
    "compressed_image_msg",
    "frame_result_from_instance_array",
    "header",
    "image_msg",
    "instance_array_msg",
    "msg_dir",
    "open_bag",
    "pointcloud2_arrays",
    "pointcloud2_msg",
    "read_messages",
    "require_topic",
    "stamp_ns",
    "storage_of",
    "topic_listing",
    "topics",
    "typestore",
]

INSTANCE_ARRAY = "instance_seg_msgs/msg/InstanceArray"
OPTICAL_FRAME = "camera_color_optical_frame"

_F = TypeVar("_F", bound=Callable[..., Any])


class BagError(ValueError):
    """Bad input to a message builder, or a bag that cannot be read; the message says what to change."""


class MissingTopicError(BagError):
    """A requested topic is not in the bag (or has the wrong type).

    Attributes:
        topic (str): the topic asked for. available (dict[str, tuple[str, int]]): the bag's topics with
            their message type and count.
    """

    def __init__(self, message: str, topic: str, available: dict[str, tuple[str, int]]) -> None:
        super().__init__(message)
        self.topic = topic
        self.available = available


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


# ---------------------------------------------------------------------------------------- builders
_NUMPY_TYPES = {"bool": np.bool_, "int8": np.int8, "uint8": np.uint8, "byte": np.uint8, "char": np.uint8,
                "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32, "int64": np.int64,
                "uint64": np.uint64, "float32": np.float32, "float64": np.float64}


def build(typename: str, tree: dict[str, Any]) -> Any:
    """The rosbags message ``typename`` of a :mod:`~instance_seg_ros.core.msg_codec` field tree (which names every
    field); byte fields stay views of the tree's arrays."""
    from rosbags.interfaces import Nodetype

    ts = typestore()
    kwargs: dict[str, Any] = {}
    for name, (kind, spec) in ts.fielddefs[typename][1]:
        value = tree[name]
        if kind == Nodetype.NAME:
            kwargs[name] = build(spec, value) if isinstance(value, dict) else value
        elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            (item_kind, item), _ = spec
            if item_kind == Nodetype.NAME:
                kwargs[name] = [build(item, v) for v in value]
            elif isinstance(value, np.ndarray):
                kwargs[name] = value
            elif item[0] in ("uint8", "byte", "char") and not isinstance(value, (list, tuple)):
                kwargs[name] = np.frombuffer(value, dtype=np.uint8)  # array('B'), bytes: a view
            else:
                kwargs[name] = np.asarray(value, dtype=_NUMPY_TYPES[item[0]])
        else:
            kwargs[name] = value
    return ts.types[typename](**kwargs)


def _bag_errors(fn: _F) -> _F:
    """The codec's MessageError raised as a BagError (this module's one error for bad builder input)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MessageError as exc:
            raise BagError(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def header(stamp_ns: int = 0, frame_id: str = OPTICAL_FRAME) -> Any:
    return build("std_msgs/msg/Header", codec.header_fields(stamp_ns, frame_id))


@_bag_errors
def image_msg(arr: np.ndarray, encoding: str, *, stamp_ns: int = 0, frame_id: str = OPTICAL_FRAME) -> Any:
    """sensor_msgs/Image of ``arr`` (``[H, W]`` or ``[H, W, C]``, dtype/channels matching ``encoding``: rgb8,
    bgr8, rgba8, bgra8, mono8, mono16, 16UC1, 32FC1). ``data`` is a uint8 view of ``arr`` (no copy)."""
    return build("sensor_msgs/msg/Image", codec.image_fields(arr, encoding, header(stamp_ns, frame_id)))


@_bag_errors
def compressed_image_msg(
    rgb: np.ndarray, fmt: str = "jpeg", *, quality: int = 90, stamp_ns: int = 0, frame_id: str = OPTICAL_FRAME
) -> Any:
    """sensor_msgs/CompressedImage (``jpeg`` or ``png``) of an RGB uint8 ``[H, W, 3]`` image, with the
    ``format`` string image_transport writes (``rgb8; jpeg compressed bgr8``)."""
    return build("sensor_msgs/msg/CompressedImage",
                 codec.compressed_image_fields(rgb, fmt, quality, header(stamp_ns, frame_id)))


def camera_info_msg(k: Intrinsics, *, stamp_ns: int = 0, frame_id: str = OPTICAL_FRAME) -> Any:
    """sensor_msgs/CameraInfo of a distortion-free pinhole camera (plumb_bob, d = 0)."""
    return build("sensor_msgs/msg/CameraInfo", codec.camera_info_fields(k, header(stamp_ns, frame_id)))


@_bag_errors
def pointcloud2_msg(
    points: np.ndarray, colors: np.ndarray | None = None, *, stamp_ns: int = 0, frame_id: str = OPTICAL_FRAME
) -> Any:
    """Unorganized sensor_msgs/PointCloud2: x, y, z float32 and, with ``colors`` (uint8[N, 3]), ``rgb`` packed
    in a float32 (the PCL / RViz convention)."""
    return build("sensor_msgs/msg/PointCloud2", codec.pointcloud2_fields(points, colors, header(stamp_ns, frame_id)))


@_bag_errors
def instance_array_msg(result: FrameResult, *, stamp_ns: int = 0, frame_id: str = OPTICAL_FRAME) -> Any:
    """instance_seg_msgs/InstanceArray of a FrameResult: mask crops as mono8 (255 = object), a PointCloud2 per
    instance (x, y, z + rgb when it has colors), centroid and oriented box."""
    return build(INSTANCE_ARRAY, codec.instance_array_fields(result, header(stamp_ns, frame_id)))


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


@contextlib.contextmanager
def open_bag(bag: str | Path) -> Iterator[Any]:
    """An open rosbags ``AnyReader`` of ``bag`` (typestore with our messages).

    Raises:
        BagError: no bag at ``bag``, or rosbags cannot open it.
    """
    from rosbags.highlevel import AnyReader

    p = Path(bag)
    if not p.exists():
        raise BagError(f"No bag at {p}; pass the rosbag2 directory (the one holding metadata.yaml).")
    try:
        reader = AnyReader([p], default_typestore=typestore())
        reader.open()
    except Exception as exc:  # rosbags raises its own AnyReaderError / ReaderError for every kind of bad bag
        raise BagError(f"Cannot read {p} as a rosbag2 (mcap or sqlite3): {exc}") from exc
    try:
        yield reader
    finally:
        reader.close()


def topics(reader: Any) -> dict[str, tuple[str, int]]:
    """``{topic: (message type, message count)}`` of an open bag (:func:`open_bag`), sorted by topic."""
    out: dict[str, tuple[str, int]] = {}
    for c in reader.connections:
        typ, n = out.get(c.topic, (c.msgtype, 0))
        out[c.topic] = (typ, n + int(c.msgcount))
    return dict(sorted(out.items()))


def topic_listing(available: dict[str, tuple[str, int]]) -> str:
    """One sentence listing a bag's topics with their types and counts (for error messages)."""
    if not available:
        return "The bag has no topics."
    return "The bag has: " + "; ".join(f"{t} [{typ}, {n} messages]" for t, (typ, n) in available.items()) + "."


def require_topic(available: dict[str, tuple[str, int]], topic: str, option: str, types: tuple[str, ...],
                  bag: Path, extra: str = "") -> str:
    """The type of ``topic`` in the bag, which must be one of ``types``.

    Raises:
        MissingTopicError: the topic is not in the bag, or has another type; the message names the command-line
            ``option`` that chose it (plus ``extra``, a hint) and lists the bag's topics.
    """
    if topic not in available:
        raise MissingTopicError(
            f"Topic {topic} ({option}) is not in the bag {bag}. {topic_listing(available)} Pass {option} with one of "
            f"these{extra}.", topic, available)
    typ = available[topic][0]
    if typ not in types:
        raise MissingTopicError(
            f"Topic {topic} ({option}) has type {typ}, but {' or '.join(types)} is needed. {topic_listing(available)} "
            f"Pass {option} with a topic of that type{extra}.", topic, available)
    return typ


def storage_of(bag: Path) -> str | None:
    """The storage plugin (``mcap``, ``sqlite3``) named by a bag's ``metadata.yaml``; None when unreadable."""
    import yaml

    try:
        meta = yaml.safe_load((Path(bag) / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        return str(meta.get("storage_identifier"))
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
