"""core/images.py: every encoding decodes to the right values; every malformed input raises FrameError."""

from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from instance_seg_ros.core.images import (
    FrameError,
    check_frame,
    color_from_compressed_msg,
    color_from_msg,
    decode_color,
    decode_compressed,
    decode_depth,
    depth_from_msg,
    encode_depth_16uc1,
    intrinsics_from_camera_info,
    validate_intrinsics,
)
from instance_seg_ros.core.types import Intrinsics

RNG = np.random.default_rng(7)
H, W = 5, 7
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


def padded(rows: np.ndarray, step: int) -> bytes:
    """Rows [H, row_bytes] uint8 written into a buffer of ``step`` bytes per row (junk padding)."""
    h, n = rows.shape
    buf = np.full((h, step), 0xAB, np.uint8)
    buf[:, :n] = rows
    return buf.tobytes()


def as_buffer(b: bytes, kind: str):
    return {
        "bytes": b,
        "bytearray": bytearray(b),
        "memoryview": memoryview(b),
        "array": array.array("B", b),  # what rclpy gives
        "numpy": np.frombuffer(b, np.uint8).copy(),  # what rosbags gives
    }[kind]


# ---------------------------------------------------------------------------------------- color
def test_frame_error_is_value_error():
    assert issubclass(FrameError, ValueError)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "array", "numpy"])
def test_rgb8_zero_copy_all_buffer_types(kind):
    data = as_buffer(RGB.tobytes(), kind)
    out = decode_color("rgb8", H, W, W * 3, data)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, RGB)
    assert np.shares_memory(out, np.frombuffer(data, np.uint8))


@pytest.mark.parametrize("step_pad", [0, 5])
@pytest.mark.parametrize(
    "encoding,make",
    [
        ("rgb8", lambda c: c),
        ("bgr8", lambda c: c[..., ::-1]),
        ("rgba8", lambda c: np.concatenate([c, np.full((H, W, 1), 9, np.uint8)], axis=2)),
        ("bgra8", lambda c: np.concatenate([c[..., ::-1], np.full((H, W, 1), 9, np.uint8)], axis=2)),
    ],
)
def test_color_encodings_with_padded_step(encoding, make, step_pad):
    raw = np.ascontiguousarray(make(RGB))
    row = raw.shape[1] * raw.shape[2]
    data = bytearray(padded(raw.reshape(H, row), row + step_pad))
    out = decode_color(encoding, H, W, row + step_pad, data)
    np.testing.assert_array_equal(out, RGB)
    assert np.shares_memory(out, np.frombuffer(data, np.uint8))  # views, even with padding


def test_mono8_replicated():
    gray = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    out = decode_color("mono8", H, W, W + 3, padded(gray, W + 3))
    assert out.shape == (H, W, 3)
    for ch in range(3):
        np.testing.assert_array_equal(out[..., ch], gray)


def test_encoding_case_insensitive():
    np.testing.assert_array_equal(decode_color("RGB8", H, W, W * 3, RGB.tobytes()), RGB)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(encoding="yuv422"), ["encoding", "yuv422", "rgb8"]),
        (dict(width=0), ["size", "positive"]),
        (dict(height=0), ["size", "positive"]),
        (dict(step=W * 3 - 1), ["step", "smaller", "width*bytes_per_pixel"]),
        (dict(data=RGB.tobytes()[:-1]), ["bytes", "height*step"]),
        (dict(data=RGB.tobytes() + b"\0"), ["bytes", "height*step"]),
        (dict(data=None), ["data", "missing"]),
        (dict(data="not bytes"), ["data", "byte buffer"]),
        (dict(data=3.5), ["data", "byte buffer"]),
        (dict(height="5"), ["height", "integer"]),
        (dict(width=2.5), ["width", "integer"]),
    ],
)
def test_color_malformed(kwargs, words):
    args = dict(encoding="rgb8", height=H, width=W, step=W * 3, data=RGB.tobytes())
    args.update(kwargs)
    with pytest.raises(FrameError) as exc:
        decode_color(args["encoding"], args["height"], args["width"], args["step"], args["data"])
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_step_message_example():
    with pytest.raises(FrameError, match=r"step 1000 is smaller than width\*bytes_per_pixel = 1920 \(640 px of rgb8\)"):
        decode_color("rgb8", 480, 640, 1000, bytes(480 * 1000))


def test_absurd_size_refused_before_reading():
    with pytest.raises(FrameError, match="exceeds the limit 4096x4096"):
        decode_color("rgb8", 5000, 100, 300, bytes(10))
    with pytest.raises(FrameError, match="exceeds the limit 64x64"):
        decode_color("rgb8", H, 100, 300, bytes(H * 300), max_width=64, max_height=64)


# ---------------------------------------------------------------------------------------- depth
DEPTH_MM = np.array([[0, 1000, 65535, 5], [250, 0, 1, 30000]], np.uint16)


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding", ["16UC1", "mono16", "16uc1"])
def test_16uc1(bigendian, encoding):
    raw = DEPTH_MM.astype(">u2" if bigendian else "<u2")
    out = decode_depth(encoding, 2, 4, 8, raw.tobytes(), bigendian)
    assert out.dtype == np.float32 and out.shape == (2, 4)
    expected = np.where(DEPTH_MM == 0, np.nan, DEPTH_MM * 0.001).astype(np.float32)
    np.testing.assert_array_equal(out, expected)  # NaN positions equal too


def test_16uc1_bigendian_flag_matters():
    raw = DEPTH_MM.astype(">u2").tobytes()
    wrong = decode_depth("16UC1", 2, 4, 8, raw, False)
    assert wrong[0, 1] != pytest.approx(1.0)


def test_16uc1_odd_padded_step_scale_and_array_input():
    step = 4 * 2 + 3  # odd: rows are not 2-byte aligned
    data = array.array("B", padded(DEPTH_MM.astype("<u2").view(np.uint8).reshape(2, 8), step))
    out = decode_depth("16UC1", 2, 4, step, data, scale_16uc1=0.0001)
    np.testing.assert_allclose(out[0, 1], 0.1, rtol=1e-6)
    assert np.isnan(out[0, 0]) and np.isnan(out[1, 1])


@pytest.mark.parametrize("bigendian", [False, True])
def test_32fc1(bigendian):
    vals = np.array([[1.5, -1.0, 0.0], [np.inf, np.nan, 0.25]], np.float32)
    raw = vals.astype(">f4" if bigendian else "<f4")
    out = decode_depth("32FC1", 2, 3, 3 * 4 + 4, padded(raw.view(np.uint8).reshape(2, 12), 16), bigendian)
    np.testing.assert_array_equal(out, np.array([[1.5, np.nan, np.nan], [np.nan, np.nan, 0.25]], np.float32))
    assert out.flags.writeable and out.flags.c_contiguous


@pytest.mark.parametrize(
    "args,words",
    [
        (("rgb8", 2, 4, 8), ["depth image encoding", "16UC1"]),
        (("16UC1", 2, 4, 7), ["step 7", "8"]),
        (("16UC1", 0, 4, 8), ["size"]),
        (("32FC1", 2, 4, 16), ["bytes", "height*step"]),
    ],
)
def test_depth_malformed(args, words):
    with pytest.raises(FrameError) as exc:
        decode_depth(*args, DEPTH_MM.tobytes())
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_encode_depth_16uc1_roundtrip():
    d = np.array([[0.5, np.nan, -1.0], [np.inf, 70.0, 0.0004]], np.float32)
    u = encode_depth_16uc1(d)
    assert u.dtype == np.uint16
    np.testing.assert_array_equal(u, [[500, 0, 0], [0, 65535, 1]])
    back = decode_depth("16UC1", 2, 3, 6, u.tobytes())
    assert back[0, 0] == pytest.approx(0.5) and np.isnan(back[0, 1])


# ---------------------------------------------------------------------------------------- compressed
def test_compressed_png_exact_and_jpeg_close():
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = (200, 30, 10)  # RGB
    img[:, 32:] = (10, 60, 220)
    bgr = np.ascontiguousarray(img[..., ::-1])
    ok, png = cv2.imencode(".png", bgr)
    assert ok
    np.testing.assert_array_equal(decode_compressed("png", png.tobytes()), img)
    ok, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = decode_compressed("rgb8; jpeg compressed bgr8", array.array("B", jpg.tobytes()))
    assert out.shape == img.shape
    assert np.abs(out[8:-8, 4:28].astype(int) - img[8:-8, 4:28]).max() <= 6  # JPEG is lossy
    msg = SimpleNamespace(format="jpeg", data=jpg.reshape(-1))
    assert color_from_compressed_msg(msg).shape == img.shape


def test_compressed_gray_png_replicated():
    gray = RNG.integers(0, 256, (10, 12), dtype=np.uint8)
    ok, png = cv2.imencode(".png", gray)
    out = decode_compressed("png", png.tobytes())
    assert out.shape == (10, 12, 3)
    np.testing.assert_array_equal(out[..., 1], gray)


@pytest.mark.parametrize(
    "fmt,data,words",
    [
        ("jpeg", b"this is not a jpeg", ["could not be decoded"]),
        ("png", b"", ["empty"]),
        ("16UC1; compressedDepth png", b"\x00" * 20, ["compressedDepth"]),
        ("tiff", b"\x00" * 20, ["not supported", "jpeg"]),
    ],
)
def test_compressed_malformed(fmt, data, words):
    with pytest.raises(FrameError) as exc:
        decode_compressed(fmt, data)
    for w in words:
        assert w in str(exc.value)


# ---------------------------------------------------------------------------------------- messages
def image_msg(**kw):
    base = dict(encoding="rgb8", height=H, width=W, step=W * 3, is_bigendian=0, data=RGB.tobytes())
    base.update(kw)
    return SimpleNamespace(**base)


def test_duck_typed_messages():
    np.testing.assert_array_equal(color_from_msg(image_msg()), RGB)
    d = depth_from_msg(image_msg(encoding="16UC1", height=2, width=4, step=8, data=DEPTH_MM.tobytes()))
    assert d[0, 1] == pytest.approx(1.0)
    with pytest.raises(FrameError, match="exceeds the limit"):
        color_from_msg(image_msg(), max_width=4)
    with pytest.raises(FrameError, match="no field 'step'"):
        color_from_msg(SimpleNamespace(encoding="rgb8", height=1, width=1, data=b"abc"))


def test_rclpy_messages():
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    msg = sensor_msgs.Image(encoding="bgr8", height=H, width=W, step=W * 3)
    msg.data = RGB[..., ::-1].tobytes()  # rclpy stores array.array('B')
    np.testing.assert_array_equal(color_from_msg(msg), RGB)
    info = sensor_msgs.CameraInfo(width=640, height=480)
    info.k = [615.0, 0.0, 320.0, 0.0, 616.0, 240.0, 0.0, 0.0, 1.0]
    K = intrinsics_from_camera_info(info)
    assert (K.fx, K.fy, K.cx, K.cy, K.width, K.height) == (615.0, 616.0, 320.0, 240.0, 640, 480)


def test_rosbags_messages():
    typesys = pytest.importorskip("rosbags.typesys")
    ts = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
    Image = ts.types["sensor_msgs/msg/Image"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    hdr = Header(stamp=Time(sec=1, nanosec=2), frame_id="cam")
    raw = DEPTH_MM.astype(">u2").view(np.uint8).reshape(-1)
    msg = Image(header=hdr, height=2, width=4, encoding="16UC1", is_bigendian=1, step=8, data=raw)
    np.testing.assert_allclose(depth_from_msg(msg)[0, 1:3], [1.0, 65.535], rtol=1e-6)


# ---------------------------------------------------------------------------------------- intrinsics
K_OK = Intrinsics(615.0, 615.0, 319.5, 239.5, 640, 480)


def test_intrinsics_from_camera_info_and_validation():
    info = SimpleNamespace(k=np.array([615.0, 0, 319.5, 0, 615.0, 239.5, 0, 0, 1]), width=640, height=480)
    assert intrinsics_from_camera_info(info) == K_OK
    assert validate_intrinsics(K_OK) is K_OK


@pytest.mark.parametrize(
    "change,words",
    [
        (dict(fx=0.0), ["fx", "positive"]),
        (dict(fy=float("nan")), ["fy"]),
        (dict(fx=float("inf")), ["fx"]),
        (dict(cx=float("nan")), ["cx", "finite"]),
        (dict(cx=700.0), ["principal point", "outside"]),
        (dict(cy=-3.0), ["principal point"]),
        (dict(width=0), ["width and height"]),
    ],
)
def test_bad_intrinsics(change, words):
    fields = dict(fx=615.0, fy=615.0, cx=319.5, cy=239.5, width=640, height=480)
    fields.update(change)
    with pytest.raises(FrameError) as exc:
        validate_intrinsics(Intrinsics(**fields))
    for w in words:
        assert w in str(exc.value)


def test_camera_info_bad_k():
    with pytest.raises(FrameError, match="9 elements"):
        intrinsics_from_camera_info(SimpleNamespace(k=[1.0, 2.0], width=640, height=480))
    with pytest.raises(FrameError, match="no field 'k'"):
        intrinsics_from_camera_info(SimpleNamespace(width=640, height=480))


def test_check_frame():
    color = np.zeros((480, 640, 3), np.uint8)
    depth = np.zeros((480, 640), np.float32)
    assert check_frame(color, depth, K_OK) == (480, 640)
    assert check_frame(None, depth, K_OK) == (480, 640)
    with pytest.raises(FrameError, match="depth image is 320x240 but color image is 640x480"):
        check_frame(color, np.zeros((240, 320), np.float32), K_OK)
    with pytest.raises(FrameError, match="camera_info says 640x480"):
        check_frame(np.zeros((240, 320, 3), np.uint8), None, K_OK)
    with pytest.raises(FrameError, match=r"\[H, W, 3\]"):
        check_frame(np.zeros((480, 640), np.uint8), None, K_OK)
    with pytest.raises(FrameError, match="fx"):
        check_frame(color, depth, Intrinsics(-1.0, 615.0, 319.5, 239.5, 640, 480))
