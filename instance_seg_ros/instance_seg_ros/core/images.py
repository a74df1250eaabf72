"""Raw image buffers (sensor_msgs/Image, CompressedImage, CameraInfo fields) to numpy, and back.

Everything here is pure numpy/OpenCV: the ROS adapter and the rosbag evaluator hand in the fields of
a message (or the message itself, duck-typed: rclpy and rosbags messages both work) and get arrays.

Zero copy: :func:`decode_color` returns a *view* of the message buffer for ``rgb8``, ``bgr8``,
``rgba8`` and ``bgra8`` (with or without row padding). Such a view can be read-only (``bytes``
input) and non-contiguous (padded rows, ``bgr`` channel reversal, dropped alpha); call
``np.ascontiguousarray`` before handing it to ``torch.from_numpy``. ``mono8`` and every depth
encoding are converted, so they copy.

Every malformed input raises :class:`FrameError` (a ``ValueError``) whose message names the field,
what it was and what was expected; numpy's own exceptions never leak out.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from .types import FrameError, Intrinsics  # FrameError lives in types; re-exported here

__all__ = [
    "COLOR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "FrameError",
    "LABEL_ENCODINGS",
    "check_frame",
    "color_from_compressed_msg",
    "color_from_msg",
    "decode_color",
    "decode_compressed",
    "decode_depth",
    "decode_labels",
    "depth_from_msg",
    "encode_depth_16uc1",
    "intrinsics_from_camera_info",
    "labels_from_msg",
    "validate_intrinsics",
]


# encoding -> (channels in the buffer, channel order to get RGB)
COLOR_ENCODINGS: dict[str, tuple[int, tuple[int, int, int] | None]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, None),
}
# encoding -> canonical name, bytes per pixel
DEPTH_ENCODINGS: dict[str, tuple[str, int]] = {
    "16uc1": ("16UC1", 2),
    "mono16": ("16UC1", 2),
    "32fc1": ("32FC1", 4),
}
# label image encoding -> canonical name, numpy type (instance_seg_node publishes mono16)
LABEL_ENCODINGS: dict[str, tuple[str, str]] = {
    "mono16": ("mono16", "u2"),
    "16uc1": ("16UC1", "u2"),
    "mono8": ("mono8", "u1"),
    "8uc1": ("8UC1", "u1"),
    "32sc1": ("32SC1", "i4"),
}


# ---------------------------------------------------------------------------------------- helpers
def _as_int(value: Any, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        # numpy scalars and integral floats are fine, anything else is not
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise FrameError(f"{name} must be an integer, got {value!r}.") from None


def _buffer(data: Any, what: str) -> np.ndarray:
    """A flat uint8 view of ``data`` (bytes, bytearray, memoryview, array.array, numpy array).

    No copy, except for a non-contiguous numpy array (made contiguous first).
    """
    if data is None:
        raise FrameError(f"{what} data is missing (None); expected a byte buffer.")
    try:
        if isinstance(data, np.ndarray):
            arr = np.ascontiguousarray(data)
            return arr.reshape(-1).view(np.uint8)
        if isinstance(data, str):
            raise TypeError("str is not a byte buffer")
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as exc:
        raise FrameError(
            f"{what} data of type {type(data).__name__} is not a byte buffer ({exc}); expected bytes, bytearray, "
            "memoryview, array.array('B') or a uint8 numpy array."
        ) from exc


def _check_geometry(
    what: str,
    encoding: str,
    height: Any,
    width: Any,
    step: Any,
    bpp: int,
    nbytes: int,
    max_width: int,
    max_height: int,
) -> tuple[int, int, int]:
    h = _as_int(height, f"{what} height")
    w = _as_int(width, f"{what} width")
    s = _as_int(step, f"{what} step")
    if h <= 0 or w <= 0:
        raise FrameError(f"{what} has size {w}x{h} (width x height); both must be positive.")
    if w > max_width or h > max_height:
        raise FrameError(
            f"{what} size {w}x{h} exceeds the limit {max_width}x{max_height} (input.max_width x input.max_height); "
            "raise the limits if this camera really is that large."
        )
    row = w * bpp
    if s < row:
        raise FrameError(f"{what} step {s} is smaller than width*bytes_per_pixel = {row} ({w} px of {encoding}).")
    if nbytes != h * s:
        raise FrameError(
            f"{what} data has {nbytes} bytes but height*step = {h}*{s} = {h * s} were expected ({encoding})."
        )
    return h, w, s


# ---------------------------------------------------------------------------------------- color
def decode_color(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: Any,
    is_bigendian: bool = False,
    *,
    max_width: int = 4096,
    max_height: int = 4096,
) -> np.ndarray:
    """Decode a sensor_msgs/Image color buffer to RGB.

    Args:
        encoding: ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` or ``mono8`` (case-insensitive).
        height, width, step: as in sensor_msgs/Image (``step`` = bytes per row, padding allowed).
        data: the pixel buffer: bytes, bytearray, memoryview, ``array.array('B')`` (rclpy) or a
            uint8 numpy array (rosbags); ``height * step`` bytes.
        is_bigendian: ignored (8-bit encodings have no byte order); accepted for symmetry.
        max_width, max_height: larger frames are refused as absurd.

    Returns:
        np.ndarray[H, W, 3] uint8, RGB. For the 8-bit color encodings this is a view of ``data``
        (no copy; possibly read-only and non-contiguous); ``mono8`` is replicated into a new array.

    Raises:
        FrameError: unknown encoding, zero or absurd size, ``step`` too small, wrong buffer length.
    """
    del is_bigendian
    enc = str(encoding).strip().lower()
    if enc not in COLOR_ENCODINGS:
        raise FrameError(
            f"color image encoding {encoding!r} is not supported; expected one of {', '.join(COLOR_ENCODINGS)}."
        )
    channels, order = COLOR_ENCODINGS[enc]
    buf = _buffer(data, "color image")
    h, w, s = _check_geometry("color image", enc, height, width, step, channels, buf.size, max_width, max_height)
    # rows of `step` bytes, of which the first w*channels are pixels: a view, padded or not
    img = buf.reshape(h, s)[:, : w * channels].reshape(h, w, channels)
    if order is None:
        return np.repeat(img, 3, axis=2)  # mono8: copy
    if order == (0, 1, 2):
        return img[:, :, :3]
    return img[:, :, 2::-1]  # bgr(a): channel-reversed view


def _compressed_size(buf: np.ndarray) -> tuple[int, int] | None:
    """``(width, height)`` declared by a JPEG / PNG header (Pillow reads the header only), None if unreadable.

    Raises:
        FrameError: the header declares more pixels than Pillow's decompression-bomb limit.
    """
    import io

    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(buf.tobytes())) as im:
            return int(im.size[0]), int(im.size[1])
    except PILImage.DecompressionBombError as exc:
        raise FrameError(f"compressed image refused before decoding: {exc}") from exc
    except Exception:  # not a format Pillow knows: OpenCV decides
        return None


def decode_compressed(fmt: str, data: Any, *, max_width: int = 65535, max_height: int = 65535) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG) to RGB with OpenCV.

    Args:
        fmt: ``CompressedImage.format``, e.g. ``"jpeg"``, ``"png"`` or ``"rgb8; jpeg compressed bgr8"``.
            ``compressedDepth`` (16-bit depth PNG with a custom header) is refused.
        data: the compressed bytes (any buffer, as in :func:`decode_color`).

    Returns:
        np.ndarray[H, W, 3] uint8, RGB (a new array; grayscale images are replicated to 3 channels).

    Raises:
        FrameError: unsupported format, empty or undecodable data, absurd size.
    """
    import cv2

    f = str(fmt).strip().lower()
    if "compresseddepth" in f:
        raise FrameError(
            f"compressed image format {fmt!r} is compressedDepth; decode_compressed handles color JPEG/PNG only, "
            "subscribe to the raw depth topic instead."
        )
    if f and not any(k in f for k in ("jpeg", "jpg", "png")):
        raise FrameError(f"compressed image format {fmt!r} is not supported; expected 'jpeg' or 'png'.")
    buf = _buffer(data, "compressed image")
    if buf.size == 0:
        raise FrameError(f"compressed image data is empty (format {fmt!r}); expected JPEG or PNG bytes.")
    size = _compressed_size(buf)  # from the header, before decoding: a few kB can declare gigabytes of pixels
    if size is not None and (size[0] > max_width or size[1] > max_height):
        raise FrameError(f"compressed image size {size[0]}x{size[1]} (from its header) exceeds the limit "
                         f"{max_width}x{max_height}; it was not decoded.")
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise FrameError(
            f"compressed image data ({buf.size} bytes, format {fmt!r}) could not be decoded: {exc}"
        ) from exc
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise FrameError(
            f"compressed image data ({buf.size} bytes, format {fmt!r}) could not be decoded; expected JPEG or PNG."
        )
    h, w = bgr.shape[:2]
    if w > max_width or h > max_height:
        raise FrameError(f"compressed image size {w}x{h} exceeds the limit {max_width}x{max_height}.")
    if bgr.dtype != np.uint8:  # a 16-bit PNG: keep the high byte
        bgr = (bgr >> 8).astype(np.uint8)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------------------------------- depth
def decode_depth(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: Any,
    is_bigendian: bool = False,
    *,
    scale_16uc1: float = 0.001,
    max_width: int = 4096,
    max_height: int = 4096,
) -> np.ndarray:
    """Decode a sensor_msgs/Image depth buffer to meters.

    Args:
        encoding: ``16UC1`` (alias ``mono16``; units of ``scale_16uc1`` meters, 0 = invalid) or
            ``32FC1`` (meters; NaN, inf and values <= 0 are invalid). Case-insensitive.
        height, width, step, data: as in :func:`decode_color`.
        is_bigendian: byte order of the buffer (honoured for both encodings).
        scale_16uc1: meters per 16UC1 unit (0.001 = millimetres).

    Returns:
        np.ndarray[H, W] float32 meters, NaN where invalid. Always a new, writable, contiguous array.

    Raises:
        FrameError: as :func:`decode_color`.
    """
    enc = str(encoding).strip().lower()
    if enc not in DEPTH_ENCODINGS:
        raise FrameError(f"depth image encoding {encoding!r} is not supported; expected 16UC1, mono16 or 32FC1.")
    if not (np.isfinite(scale_16uc1) and scale_16uc1 > 0):
        raise FrameError(f"scale_16uc1 must be a positive number of meters per unit, got {scale_16uc1!r}.")
    canon, bpp = DEPTH_ENCODINGS[enc]
    buf = _buffer(data, "depth image")
    h, w, s = _check_geometry("depth image", canon, height, width, step, bpp, buf.size, max_width, max_height)
    byteorder = ">" if is_bigendian else "<"
    dtype = np.dtype(f"{byteorder}u2" if canon == "16UC1" else f"{byteorder}f4")
    # strided view of the raw values (works for any step, even an odd one), then one converting copy
    raw = np.ndarray(shape=(h, w), dtype=dtype, buffer=buf, strides=(s, bpp))
    if canon == "16UC1":
        out = (raw * float(scale_16uc1)).astype(np.float32)  # float64 product: exact mm -> m rounding
        out[raw == 0] = np.nan
        return out
    out = raw.astype(np.float32)
    with np.errstate(invalid="ignore"):
        out[~(np.isfinite(out) & (out > 0))] = np.nan
    return out


def encode_depth_16uc1(depth_m: np.ndarray, *, scale: float = 0.001) -> np.ndarray:
    """Meters to 16UC1 units (the reverse of :func:`decode_depth`).

    Args:
        depth_m: np.ndarray[H, W] float meters; NaN, inf and values <= 0 are invalid.
        scale: meters per unit (0.001 = millimetres).

    Returns:
        np.ndarray[H, W] uint16: round(depth / scale), clipped to [1, 65535]; 0 where invalid.
    """
    if not (np.isfinite(scale) and scale > 0):
        raise FrameError(f"scale must be a positive number of meters per unit, got {scale!r}.")
    d = np.asarray(depth_m, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(d) & (d > 0)
    units = np.zeros(d.shape, dtype=np.float64)
    np.divide(d, scale, out=units, where=valid)
    out = np.clip(np.rint(units), 1, 65535).astype(np.uint16)
    out[~valid] = 0
    return out


# ---------------------------------------------------------------------------------------- labels
def decode_labels(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: Any,
    is_bigendian: bool = False,
    *,
    max_width: int = 4096,
    max_height: int = 4096,
) -> np.ndarray:
    """Decode a label image (0 = background, ``i`` = instance index ``i``), e.g. instance_seg_node's
    ``instance_labels``.

    Args:
        encoding: ``mono16`` / ``16UC1``, ``mono8`` / ``8UC1`` or ``32SC1`` (case-insensitive).
        height, width, step, data, is_bigendian: as in :func:`decode_depth`.

    Returns:
        np.ndarray[H, W] uint16 (8- and 16-bit encodings) or int32 (``32SC1``), native byte order. Always a new,
        writable, contiguous array.

    Raises:
        FrameError: as :func:`decode_color`, and negative labels in a ``32SC1`` image.
    """
    enc = str(encoding).strip().lower()
    if enc not in LABEL_ENCODINGS:
        raise FrameError(f"label image encoding {encoding!r} is not supported; expected mono16 (16UC1), mono8 (8UC1) "
                         "or 32SC1.")
    canon, kind = LABEL_ENCODINGS[enc]
    dtype = np.dtype(kind).newbyteorder(">" if is_bigendian else "<")
    buf = _buffer(data, "label image")
    h, w, s = _check_geometry("label image", canon, height, width, step, dtype.itemsize, buf.size, max_width,
                              max_height)
    raw = np.ndarray(shape=(h, w), dtype=dtype, buffer=buf, strides=(s, dtype.itemsize))
    out = raw.astype(np.int32 if kind == "i4" else np.uint16)
    if kind == "i4" and out.size and out.min() < 0:
        raise FrameError(f"label image ({canon}) holds negative values (min {out.min()}); labels are instance "
                         "indices >= 1, 0 = background.")
    return out


# ---------------------------------------------------------------------------------------- intrinsics
def validate_intrinsics(K: Intrinsics) -> Intrinsics:
    """Check a camera model; returns it unchanged when it is usable.

    Raises:
        FrameError: non-finite or non-positive fx/fy, non-finite principal point, zero width or
            height, or a principal point outside the image.
    """
    if not isinstance(K, Intrinsics):
        raise FrameError(f"intrinsics must be an Intrinsics, got {type(K).__name__}.")
    for name in ("fx", "fy"):
        v = getattr(K, name)
        if not (np.isfinite(v) and v > 0):
            raise FrameError(f"camera intrinsics {name} = {v!r} must be a finite positive focal length in pixels.")
    for name in ("cx", "cy"):
        v = getattr(K, name)
        if not np.isfinite(v):
            raise FrameError(f"camera intrinsics {name} = {v!r} must be finite.")
    if K.width <= 0 or K.height <= 0:
        raise FrameError(
            f"camera_info size {K.width}x{K.height} (width x height) must be positive; the camera driver must fill "
            "CameraInfo.width and height."
        )
    if not (0.0 <= K.cx <= K.width and 0.0 <= K.cy <= K.height):
        raise FrameError(
            f"camera intrinsics principal point (cx, cy) = ({K.cx:g}, {K.cy:g}) lies outside the "
            f"{K.width}x{K.height} image; check that camera_info belongs to this image."
        )
    return K


def check_frame(color: np.ndarray | None, depth: np.ndarray | None, K: Intrinsics) -> tuple[int, int]:
    """Check that color ``[H, W, 3]``, depth ``[H, W]`` and the intrinsics describe one frame.

    Either image may be ``None`` (not checked). Arrays may be numpy or torch (only ``.shape`` is read).

    Returns:
        (height, width) of the frame.

    Raises:
        FrameError: wrong array rank, color/depth size mismatch, intrinsics size mismatch, bad intrinsics.
    """
    validate_intrinsics(K)
    if color is not None:
        cs = tuple(color.shape)
        if len(cs) != 3 or cs[2] != 3:
            raise FrameError(f"color image must have shape [H, W, 3], got {list(cs)}.")
        if (cs[0], cs[1]) != (K.height, K.width):
            raise FrameError(
                f"color image is {cs[1]}x{cs[0]} but camera_info says {K.width}x{K.height} (width x height); "
                "the intrinsics must belong to the color image."
            )
    if depth is not None:
        ds = tuple(depth.shape)
        if len(ds) != 2:
            raise FrameError(f"depth image must have shape [H, W], got {list(ds)}.")
        if color is not None and (ds[0], ds[1]) != (color.shape[0], color.shape[1]):
            raise FrameError(
                f"depth image is {ds[1]}x{ds[0]} but color image is {color.shape[1]}x{color.shape[0]}; depth must be "
                "registered to the color camera (e.g. aligned_depth_to_color)."
            )
        if (ds[0], ds[1]) != (K.height, K.width):
            raise FrameError(
                f"depth image is {ds[1]}x{ds[0]} but camera_info says {K.width}x{K.height} (width x height)."
            )
    return K.height, K.width


# ---------------------------------------------------------------------------------------- messages
def _field(msg: Any, name: str, what: str) -> Any:
    try:
        return getattr(msg, name)
    except AttributeError:
        raise FrameError(f"{what} message of type {type(msg).__name__} has no field '{name}'.") from None


def _image_fields(msg: Any, what: str) -> tuple[Any, ...]:
    """``(encoding, height, width, step, data, is_bigendian)`` of a sensor_msgs/Image, or a clear FrameError."""
    fields = tuple(_field(msg, name, what) for name in ("encoding", "height", "width", "step", "data"))
    return (*fields, bool(getattr(msg, "is_bigendian", False)))


def color_from_msg(msg: Any, **limits: Any) -> np.ndarray:
    """:func:`decode_color` of a sensor_msgs/Image (rclpy or rosbags; any object with the fields)."""
    return decode_color(*_image_fields(msg, "color image"), **limits)


def depth_from_msg(msg: Any, **limits: Any) -> np.ndarray:
    """:func:`decode_depth` of a sensor_msgs/Image (keywords: scale_16uc1, max_width, max_height)."""
    return decode_depth(*_image_fields(msg, "depth image"), **limits)


def labels_from_msg(msg: Any, **limits: Any) -> np.ndarray:
    """:func:`decode_labels` of a sensor_msgs/Image (keywords: max_width, max_height)."""
    return decode_labels(*_image_fields(msg, "label image"), **limits)


def color_from_compressed_msg(msg: Any, **limits: Any) -> np.ndarray:
    """:func:`decode_compressed` of a sensor_msgs/CompressedImage."""
    return decode_compressed(
        _field(msg, "format", "compressed image"), _field(msg, "data", "compressed image"), **limits
    )


def intrinsics_from_camera_info(msg: Any) -> Intrinsics:
    """Validated :class:`Intrinsics` from a sensor_msgs/CameraInfo (reads ``k``, ``width``, ``height``)."""
    k = _field(msg, "k", "camera_info")
    width = _as_int(_field(msg, "width", "camera_info"), "camera_info width")
    height = _as_int(_field(msg, "height", "camera_info"), "camera_info height")
    try:
        kk = np.asarray(k, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FrameError(f"camera_info k must be 9 numbers, got {k!r}.") from exc
    return validate_intrinsics(Intrinsics.from_k(kk, width, height))
