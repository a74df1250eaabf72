"""Drive a running ``instance_seg_node`` from a test: publish RGB-D frames, collect its outputs and diagnostics,
set parameters and trigger lifecycle transitions (bounded waits everywhere)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from ros_helpers import PKG_DIR, ProcessGroup, RosTestContext

WIDTH, HEIGHT = 160, 120
FRAME_ID = "camera_color_optical_frame"
NODE = "/instance_seg_node"
UNTRAINED = str(PKG_DIR / "config" / "test_untrained.yaml")
S = 1_000_000_000


def node_command(*extra: str, params_file: str = UNTRAINED, cli: tuple[str, ...] = ()) -> list[str]:
    """``python -m instance_seg_ros.ros.node [cli] --ros-args --params-file <file> [extra]``."""
    return [sys.executable, "-m", "instance_seg_ros.ros.node", *cli, "--ros-args", "--params-file", params_file,
            *extra]


@contextlib.contextmanager
def running_node(test_name: str, *ros_args: str, cli: tuple[str, ...] = (), log_name: str = "instance_seg_node",
                 ready: str = "connected", timeout: float = 90.0, markers: bool = True,
                 debug: bool = True) -> Iterator[tuple[NodeHarness, Any, ProcessGroup]]:
    """Start ``instance_seg_node`` (:func:`node_command` with ``ros_args``) and a harness in its own context; yield
    ``(harness, process, group)`` once the node is ``ready`` (``connected``: active and matched with the harness;
    ``unconfigured``: a managed node waiting). The context and the process are always torn down."""
    group = ProcessGroup()
    ctx = RosTestContext(test_name)
    try:
        proc = group.start(node_command(*ros_args, cli=cli), log_name=log_name)
        h = NodeHarness(ctx, markers=markers, debug=debug)
        if ready == "connected":
            up = h.wait_connected(timeout)
        else:
            up = ctx.spin_until(lambda: h.diag_value("state") == ready, timeout)
        if not up:
            pytest.fail(f"node did not come up ({ready}); alive={proc.poll() is None}; log:\n{group.log(proc)}")
        yield h, proc, group
    finally:
        ctx.shutdown()
        group.stop_all()


def assert_alive(proc: Any, group: ProcessGroup) -> None:
    assert proc.poll() is None, f"node died; log:\n{group.log(proc)}"


def scene(width: int = WIDTH, height: int = HEIGHT) -> tuple[np.ndarray, np.ndarray]:
    """A gray table with two colored boxes: ``(rgb uint8[H, W, 3], depth float32[H, W] meters)``."""
    color = np.full((height, width, 3), 120, np.uint8)
    depth = np.full((height, width), 0.8, np.float32)
    for (y0, y1, x0, x1), rgb, z in (((30, 70, 20, 60), (200, 30, 30), 0.6), ((50, 100, 80, 140), (30, 200, 30),
                                                                               0.65)):
        color[y0 * height // HEIGHT:y1 * height // HEIGHT, x0 * width // WIDTH:x1 * width // WIDTH] = rgb
        depth[y0 * height // HEIGHT:y1 * height // HEIGHT, x0 * width // WIDTH:x1 * width // WIDTH] = z
    return color, depth


@dataclass
class Frame:
    """The three messages of one frame; edit them before :meth:`NodeHarness.send` to make bad input."""

    image: Any
    depth: Any
    camera_info: Any
    stamp_ns: int


@dataclass
class Outputs:
    instances: dict[int, list] = field(default_factory=dict)
    labels: dict[int, list] = field(default_factory=dict)
    markers: list = field(default_factory=list)
    debug: list = field(default_factory=list)
    diagnostics: list = field(default_factory=list)


class NodeHarness:
    """Publishers of ``image``/``image/compressed``, ``depth``, ``camera_info`` and subscribers of every output."""

    def __init__(self, ctx: RosTestContext, *, markers: bool = True, debug: bool = True) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        from visualization_msgs.msg import MarkerArray

        from instance_seg_msgs.msg import InstanceArray
        from instance_seg_ros.ros.conversions import stamp_to_ns

        self.ctx = ctx
        node = ctx.node
        rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_image = node.create_publisher(Image, "image", rel)
        self.pub_compressed = node.create_publisher(CompressedImage, "image/compressed", rel)
        self.pub_depth = node.create_publisher(Image, "depth", rel)
        self.pub_info = node.create_publisher(CameraInfo, "camera_info", rel)
        self.out = Outputs()
        self._stamp = stamp_to_ns

        def keep(store):
            return lambda m: store.setdefault(stamp_to_ns(m.header.stamp), []).append(m)

        self.sub_instances = node.create_subscription(InstanceArray, "instances", keep(self.out.instances), rel)
        self.sub_labels = node.create_subscription(Image, "instance_labels", keep(self.out.labels), rel)
        if markers:
            node.create_subscription(MarkerArray, "instance_markers", self.out.markers.append, rel)
        if debug:
            node.create_subscription(Image, "debug_image", self.out.debug.append, rel)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, rel)
        self._clients: dict[str, Any] = {}
        self._next = 1_700_000_000 * S

    # ------------------------------------------------------------------ frames
    def next_stamp(self, step_ms: int = 100) -> int:
        self._next += step_ms * 1_000_000
        return self._next

    def frame(self, stamp_ns: int | None = None, *, depth_encoding: str = "16UC1", color_encoding: str = "rgb8",
              compressed: bool = False, frame_id: str = FRAME_ID, width: int = WIDTH, height: int = HEIGHT) -> Frame:
        from instance_seg_ros.core.images import encode_depth_16uc1
        from instance_seg_ros.core.types import Intrinsics
        from instance_seg_ros.ros.conversions import camera_info_msg, compressed_image_msg, header, image_msg

        stamp = self.next_stamp() if stamp_ns is None else stamp_ns
        color, depth = scene(width, height)
        hdr = header(frame_id, stamp)
        if compressed:
            img = compressed_image_msg(color, "jpeg", hdr)
        else:
            img = image_msg(color[..., ::-1] if color_encoding == "bgr8" else color, color_encoding, hdr)
        if depth_encoding == "16UC1":
            dmsg = image_msg(encode_depth_16uc1(depth), "16UC1", header(frame_id, stamp))
        else:
            dmsg = image_msg(depth, "32FC1", header(frame_id, stamp))
        k = Intrinsics(fx=150.0 * width / WIDTH, fy=150.0 * width / WIDTH, cx=(width - 1) / 2, cy=(height - 1) / 2,
                       width=width, height=height)
        info = camera_info_msg(k, header(frame_id, stamp))
        return Frame(img, dmsg, info, stamp)

    def send(self, f: Frame, *, image: bool = True, depth: bool = True, camera_info: bool = True) -> None:
        from sensor_msgs.msg import CompressedImage

        if camera_info:
            self.pub_info.publish(f.camera_info)
        if depth:
            self.pub_depth.publish(f.depth)
        if image:
            (self.pub_compressed if isinstance(f.image, CompressedImage) else self.pub_image).publish(f.image)

    # ------------------------------------------------------------------ waiting
    def wait_connected(self, timeout: float = 60.0, *, compressed: bool = False) -> bool:
        """Until the node subscribes to our inputs and publishes instances and diagnostics."""
        color = self.pub_compressed if compressed else self.pub_image
        return self.ctx.spin_until(
            lambda: all(p.get_subscription_count() >= 1 for p in (color, self.pub_depth, self.pub_info))
            and self.sub_instances.get_publisher_count() >= 1 and self.diag_value("state") == "active",
            timeout,
        )

    def wait_instances(self, stamp_ns: int, timeout: float = 20.0) -> Any | None:
        self.ctx.spin_until(lambda: stamp_ns in self.out.instances, timeout)
        got = self.out.instances.get(stamp_ns)
        return got[0] if got else None

    def send_and_wait(self, f: Frame, timeout: float = 20.0, resend_every: float = 2.0) -> Any | None:
        """Send a frame (again with the same stamp if nothing came back: a best-effort sample may be lost)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.send(f)
            got = self.wait_instances(f.stamp_ns, min(resend_every, max(0.0, end - time.monotonic())))
            if got is not None:
                return got
        return None

    def spin(self, seconds: float) -> None:
        self.ctx.spin_for(seconds)

    # ------------------------------------------------------------------ diagnostics
    def _on_diag(self, msg) -> None:
        for st in msg.status:
            if "instance segmentation" in st.name:
                self.out.diagnostics.append({kv.key: kv.value for kv in st.values} | {
                    "_level": st.level[0] if isinstance(st.level, bytes) else int(st.level), "_message": st.message})

    def diag_value(self, key: str, default: Any = None) -> Any:
        return self.out.diagnostics[-1].get(key, default) if self.out.diagnostics else default

    def diag_count(self, key: str) -> int:
        return int(self.diag_value(key, 0) or 0)

    def wait_diag(self, predicate, timeout: float = 10.0) -> bool:
        n0 = len(self.out.diagnostics)
        return self.ctx.spin_until(lambda: len(self.out.diagnostics) > n0 and predicate(self.out.diagnostics[-1]),
                                   timeout)

    # ------------------------------------------------------------------ services
    def _call(self, srv_type, name: str, request, timeout: float = 30.0):
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.ctx.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name} not available")
        fut = client.call_async(request)
        if not self.ctx.spin_until(fut.done, timeout):
            raise TimeoutError(f"service {name} did not answer within {timeout} s")
        return fut.result()

    def set_params(self, values: dict[str, Any], node: str = NODE) -> list:
        """SetParameters results (``successful``, ``reason``), one per value."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        req = SetParameters.Request()
        req.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        return list(self._call(SetParameters, f"{node}/set_parameters", req).results)

    def get_params(self, names: list[str], node: str = NODE) -> list:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        req = GetParameters.Request(names=names)
        return [parameter_value_to_python(v) for v in self._call(GetParameters, f"{node}/get_parameters", req).values]

    def change_state(self, transition: str, node: str = NODE) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        tid = getattr(Transition, f"TRANSITION_{transition.upper()}")
        return bool(self._call(ChangeState, f"{node}/change_state",
                               ChangeState.Request(transition=Transition(id=tid)), timeout=60.0).success)

    def get_state(self, node: str = NODE) -> str:
        from lifecycle_msgs.srv import GetState

        return self._call(GetState, f"{node}/get_state", GetState.Request()).current_state.label
