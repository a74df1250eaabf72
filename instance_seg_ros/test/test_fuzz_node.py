"""Property-based fuzzing of a running ``instance_seg_node`` (Hypothesis): malformed Image, CameraInfo and
CompressedImage messages in batches; after every batch the process is alive and a good frame still produces
``instances``. The catalogue of cases is in docs/reliability.md.

Two node processes start together for the module (raw color in the root namespace, compressed color under
``/c``), with input limits of 640x480 so that no declared size makes them allocate much.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from node_harness import NodeHarness, node_command
from ros_helpers import ProcessGroup, RosTestContext

pytestmark = [pytest.mark.ros, pytest.mark.slow]

LIMITS = ("-p", "input.max_width:=640", "-p", "input.max_height:=480", "-p", "qos.input_reliability:=reliable",
          "-p", "sync.max_age:=0.5")
FUZZ = settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1", "8UC3", "16UC3", "64FC1",
             "yuv422", "bayer_rggb8", "", "RGB8", "rgb8 ", "\u00e9", "x" * 300]
U32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 159, 160, 161, 639, 640, 641, 2**31, 2**32 - 1]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)


def _data(draw, good_len: int) -> bytes:
    kind = draw(st.sampled_from(["empty", "short", "exact", "long", "random"]))
    n = {"empty": 0, "short": max(0, good_len - draw(st.integers(1, 64))), "exact": good_len,
         "long": good_len + draw(st.integers(1, 4096)), "random": draw(st.integers(0, 70_000))}[kind]
    return draw(st.binary(min_size=min(n, 64), max_size=min(n, 64))) * (n // 64) + bytes(n % 64) if n else b""


@st.composite
def bad_image(draw, good):
    """A sensor_msgs/Image derived from ``good`` with some fields broken."""
    from sensor_msgs.msg import Image

    m = Image(header=good.header, height=good.height, width=good.width, encoding=good.encoding,
              is_bigendian=good.is_bigendian, step=good.step, data=good.data)
    for field in draw(st.sets(st.sampled_from(["height", "width", "step", "encoding", "data", "is_bigendian",
                                                "values"]), min_size=1)):
        if field in ("height", "width", "step"):
            setattr(m, field, draw(U32))
        elif field == "encoding":
            m.encoding = draw(st.sampled_from(ENCODINGS))
        elif field == "is_bigendian":
            m.is_bigendian = 1 - int(good.is_bigendian)
        elif field == "data":
            m.data = _data(draw, len(good.data))
        elif field == "values" and m.encoding == "32FC1":  # NaN, inf, negative, huge depth values
            vals = draw(st.lists(FLOATS, min_size=1, max_size=16))
            with np.errstate(over="ignore"):  # 1e300 -> inf is one of the cases
                arr = np.resize(np.asarray(vals, np.float32), len(good.data) // 4)
            m.data = arr.tobytes()
        elif field == "values":
            m.data = draw(st.binary(min_size=len(good.data), max_size=len(good.data)))
    return m


@st.composite
def bad_camera_info(draw, good):
    from sensor_msgs.msg import CameraInfo

    m = CameraInfo(header=good.header, height=good.height, width=good.width, distortion_model=good.distortion_model,
                   d=list(good.d), k=list(good.k), r=list(good.r), p=list(good.p))
    for field in draw(st.sets(st.sampled_from(["size", "k", "p", "d", "model"]), min_size=1)):
        if field == "size":
            m.width, m.height = draw(U32), draw(U32)
        elif field in ("k", "p"):
            vals = list(getattr(m, field))
            for i in draw(st.lists(st.integers(0, len(vals) - 1), min_size=1, max_size=4)):
                vals[i] = draw(st.one_of(FLOATS, st.sampled_from([0.0, -1.0, -150.0, 1e300, float("nan")])))
            setattr(m, field, vals)
        elif field == "d":
            m.d = draw(st.lists(FLOATS, max_size=20))
        else:
            m.distortion_model = draw(st.sampled_from(["", "plumb_bob", "rational_polynomial", "equidistant", "?"]))
    return m


def _png_header_only(w: int, h: int) -> bytes:
    """A tiny PNG that declares ``w`` x ``h`` pixels (a decompression bomb when large)."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64, 9))
            + chunk(b"IEND", b""))


@st.composite
def bad_compressed(draw, good):
    from sensor_msgs.msg import CompressedImage

    kind = draw(st.sampled_from(["random_bytes", "truncated", "bit_flips", "bomb", "format", "empty", "gray_png"]))
    fmt, data = good.format, bytes(good.data)
    if kind == "random_bytes":
        data = draw(st.binary(min_size=1, max_size=4096))
    elif kind == "truncated":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "bit_flips":
        b = bytearray(data)
        for i in draw(st.lists(st.integers(0, len(b) - 1), min_size=1, max_size=32)):
            b[i] ^= 0xFF
        data = bytes(b)
    elif kind == "bomb":
        data = _png_header_only(draw(st.sampled_from([641, 5000, 30000, 100000])), draw(st.sampled_from([481, 30000])))
        fmt = "png"
    elif kind == "format":
        fmt = draw(st.sampled_from(["", "bmp", "compressedDepth png", "rgb8; jpeg compressed bgr8", "tiff", "\x00"]))
    elif kind == "empty":
        data = b""
    else:  # a valid PNG of another size (gray): decodes, then refused as a size mismatch
        import cv2

        ok, enc = cv2.imencode(".png", np.zeros((draw(st.integers(1, 100)), draw(st.integers(1, 100))), np.uint8))
        data, fmt = enc.tobytes(), "png"
    return CompressedImage(header=good.header, format=fmt, data=data)


# ---------------------------------------------------------------------------------------- the running nodes
@pytest.fixture(scope="module")
def nodes():
    """``{"raw": (harness, proc), "compressed": (harness, proc)}`` and the process group."""
    group = ProcessGroup()
    ctx_raw = RosTestContext("isr_fuzz_raw")
    ctx_c = RosTestContext("isr_fuzz_compressed")
    try:
        raw = group.start(node_command(*LIMITS), log_name="isr_node_fuzz_raw")
        comp = group.start(node_command(*LIMITS, "-p", "input.compressed:=true", "-r", "__ns:=/c"),
                           log_name="isr_node_fuzz_compressed")
        h_raw = NodeHarness(ctx_raw, markers=False, debug=False)
        ctx_c.node.destroy_node()  # the compressed harness lives in /c
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        ctx_c.node = rclpy.create_node("isr_fuzz_compressed", namespace="/c", context=ctx_c.context)
        ctx_c.executor = SingleThreadedExecutor(context=ctx_c.context)
        ctx_c.executor.add_node(ctx_c.node)
        h_c = NodeHarness(ctx_c, markers=False, debug=False)
        for h, p, compressed in ((h_raw, raw, False), (h_c, comp, True)):
            if not h.ctx.spin_until(lambda h=h, c=compressed: _connected(h, c), 120.0):
                pytest.fail(f"node did not come up; alive={p.poll() is None}; log:\n{group.log(p)}")
        yield {"raw": (h_raw, raw), "compressed": (h_c, comp)}, group
    finally:
        ctx_raw.shutdown()
        ctx_c.shutdown()
        group.stop_all()


def _connected(h: NodeHarness, compressed: bool) -> bool:
    color = h.pub_compressed if compressed else h.pub_image
    return all(p.get_subscription_count() >= 1 for p in (color, h.pub_depth, h.pub_info)) \
        and h.sub_instances.get_publisher_count() >= 1


def _still_works(h: NodeHarness, proc, group, compressed: bool = False) -> None:
    assert proc.poll() is None, f"node died; log:\n{group.log(proc)[-4000:]}"
    msg = h.send_and_wait(h.frame(compressed=compressed), timeout=30.0)
    assert msg is not None, f"a good frame after the batch got no output; log:\n{group.log(proc)[-4000:]}"
    assert len(msg.instances) >= 1
    assert proc.poll() is None


STAMPS = st.sampled_from(["next", "next", "next", "zero", "same", "far_past", "far_future"])


def _stamp(h: NodeHarness, how: str, last: int) -> int:
    return {"next": h.next_stamp(), "zero": 0, "same": last, "far_past": 1_000_000_000,
            "far_future": 2_000_000_000 * 1_000_000_000}.get(how, h.next_stamp())


@given(data=st.data())
@FUZZ
def test_fuzzed_raw_frames_never_break_the_node(nodes, data):
    from instance_seg_ros.ros.conversions import stamp_from_ns

    (h, proc), group = nodes[0]["raw"], nodes[1]
    last = h.next_stamp()
    for _ in range(data.draw(st.integers(1, 4), label="frames")):
        f = h.frame(depth_encoding=data.draw(st.sampled_from(["16UC1", "32FC1"]), label="depth_encoding"))
        which = data.draw(st.sets(st.sampled_from(["image", "depth", "camera_info"]), min_size=1), label="broken")
        if "image" in which:
            f.image = data.draw(bad_image(f.image), label="image")
        if "depth" in which:
            f.depth = data.draw(bad_image(f.depth), label="depth")
        if "camera_info" in which:
            f.camera_info = data.draw(bad_camera_info(f.camera_info), label="camera_info")
        last = _stamp(h, data.draw(STAMPS, label="stamp"), last)
        for m in (f.image, f.depth, f.camera_info):
            m.header.stamp = stamp_from_ns(last)
        h.send(f)
        h.spin(0.02)
    _still_works(h, proc, group)


@given(data=st.data())
@FUZZ
def test_fuzzed_compressed_frames_never_break_the_node(nodes, data):
    (h, proc), group = nodes[0]["compressed"], nodes[1]
    for _ in range(data.draw(st.integers(1, 4), label="frames")):
        f = h.frame(compressed=True)
        f.image = data.draw(bad_compressed(f.image), label="compressed")
        if data.draw(st.booleans(), label="break_camera_info"):
            f.camera_info = data.draw(bad_camera_info(f.camera_info), label="camera_info")
        h.send(f)
        h.spin(0.02)
    _still_works(h, proc, group, compressed=True)


def test_nodes_counted_the_rejections(nodes):
    """The fuzzed frames were refused by reason (not crashed through), and no pipeline or callback error."""
    group = nodes[1]
    for name, (h, proc) in nodes[0].items():
        # both nodes publish on /diagnostics: tell them apart by their color input topic
        topic = "/c/image/compressed" if name == "compressed" else "/image"
        assert h.wait_diag(lambda d, t=topic: d.get("input.image") == t, 10.0)
        d = h.out.diagnostics[-1]
        print(f"{name}: published {d['frames_published']}, rejected {d['frames_rejected']}: "
              + ", ".join(f"{k[9:]} {v}" for k, v in d.items() if k.startswith("rejected.")))
        assert int(d["frames_rejected"]) > 0, (name, d)
        assert int(d["pipeline_errors"]) == 0 and int(d["callback_errors"]) == 0, (name, d, group.log(proc)[-3000:])
        assert "Traceback" not in group.log(proc)


# ---------------------------------------------------------------------------------------- pure
@pytest.mark.parametrize(("w", "h"), [(641, 10), (30000, 30000), (100000, 100000)])
def test_compressed_bomb_is_refused_before_decoding(w, h):
    import resource

    from instance_seg_ros.core.images import FrameError, decode_compressed

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(FrameError, match="exceeds"):
        decode_compressed("png", np.frombuffer(_png_header_only(w, h), np.uint8), max_width=640, max_height=480)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # kB: nothing was decoded
