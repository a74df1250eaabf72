"""``isr replay``: play a bag into a running instance_seg_node at a chosen rate, record what it publishes, score it.

    isr replay orbit --rate 2 --out orbit_replay2x
    -> orbit_replay2x/bag   the node's InstanceArray outputs and the bag's ground truth (mcap)
       orbit_replay2x/eval  `isr eval orbit_replay2x/bag --predictions-topic /isr_replay/instances` (report.md, ...)

``isr eval BAG`` runs every frame through the Segmenter in its own process, with no clock. This is the robot's case
instead: the node runs in its own process, the camera does not wait for it, and a frame that arrives while the node
is busy is dropped (the node keeps only the newest complete set), so the tracker sees the gaps a slow node has. The
bag's color, depth and camera_info messages are published from their serialized bytes, at their recorded spacing
divided by ``--rate``, with their own header stamps. They are published and subscribed **reliably**: best-effort
640x480 images are lost between processes on this platform (README, "Large images"), which would measure the
middleware instead of the node. The node's ``instances`` are subscribed reliably too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import share_dir, stop_process
from .record import COLOR_TOPIC, DEPTH_TOPIC, GT_TOPIC, INFO_TOPIC

NS = "/isr_replay"
PREDICTIONS_TOPIC = f"{NS}/instances"


class ReplayError(RuntimeError):
    """The replay could not run: a missing topic, a node that did not come up, nothing received."""


@dataclass
class Played:
    """What a replay did: messages published per input, the node's outputs ``(stamp_ns, bytes)`` in arrival order,
    and the wall time the playing took."""

    published: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    outputs: list[tuple[int, bytes]] = field(default_factory=list)
    play_s: float = 0.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", help="rosbag2 directory (mcap or sqlite3), e.g. from `isr record`")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed, 1 = as recorded (default 1)")
    p.add_argument("--out", required=True, help="output directory (bag/ and eval/ are written inside)")
    p.add_argument("--params", default=None, help="params file for instance_seg_node (default: config/default.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra node parameter (repeatable), e.g. --set tracking.min_hits:=2")
    p.add_argument("--image-topic", default=COLOR_TOPIC,
                   help=f"color topic in the bag (default {COLOR_TOPIC}; a CompressedImage topic works too)")
    p.add_argument("--depth-topic", default=DEPTH_TOPIC, help=f"default {DEPTH_TOPIC}")
    p.add_argument("--info-topic", default=INFO_TOPIC, help=f"default {INFO_TOPIC}")
    p.add_argument("--gt-topic", default=GT_TOPIC, help=f"ground-truth InstanceArray topic (default {GT_TOPIC})")
    p.add_argument("--max-frames", type=int, default=0, help="play at most this many color frames (0 = all)")
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for the node's subscriptions")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds to wait for the node's last outputs after the last frame (default 5)")
    p.add_argument("--log-dir", default=None, help="where the node's log goes (default: OUT/logs)")


def _msg_class(msgtype: str) -> Any:
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    classes = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage,
               "sensor_msgs/msg/CameraInfo": CameraInfo}
    if msgtype not in classes:
        raise ReplayError(f"cannot publish {msgtype}; inputs must be Image, CompressedImage or CameraInfo.")
    return classes[msgtype]


def node_command(args: argparse.Namespace, params: Path, compressed: bool) -> list[str]:
    """instance_seg_node's command line: our namespace, reliable inputs, its inputs remapped to the bag's topics."""
    color = ["-r", f"image/compressed:={args.image_topic}", "-p", "input.compressed:=true"] if compressed else [
        "-r", f"image:={args.image_topic}"]
    cmd = [sys.executable, "-m", "instance_seg_ros.ros.node", "--ros-args", "-r", f"__ns:={NS}",
           "--params-file", str(params), "-p", "qos.input_reliability:=reliable", "-p", "managed:=false",
           *color, "-r", f"depth:={args.depth_topic}", "-r", f"camera_info:={args.info_topic}"]
    for s in args.set:
        if ":=" not in s:
            raise ReplayError(f"--set takes NAME:=VALUE, got {s!r}.")
        cmd += ["-p", s]
    return cmd


def play(args: argparse.Namespace, log_path: Path) -> Played:
    """Start the node, play the bag into it, collect its outputs; the node is always stopped."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from . import bagio

    if args.rate <= 0:
        raise ReplayError(f"--rate must be > 0, got {args.rate}.")
    ts = bagio.typestore()
    params = Path(args.params) if args.params else share_dir() / "config" / "default.yaml"
    played = Played()
    with bagio.open_bag(args.bag) as reader:
        available = bagio.topics(reader)
        inputs = {"image": args.image_topic, "depth": args.depth_topic, "info": args.info_topic}
        for name, topic in inputs.items():
            if topic not in available:
                raise ReplayError(f"the bag has no {topic} (--{name}-topic); it has: "
                                  f"{bagio.topic_listing(available)}")
        compressed = available[args.image_topic][0] == "sensor_msgs/msg/CompressedImage"
        cmd = node_command(args, params, compressed)
        rclpy.init()
        client = rclpy.create_node("isr_replay_player")
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        pubs = {t: client.create_publisher(_msg_class(available[t][0]), t, reliable) for t in inputs.values()}
        from instance_seg_msgs.msg import InstanceArray

        def on_output(raw: bytes) -> None:
            msg = ts.deserialize_cdr(raw, bagio.INSTANCE_ARRAY)
            played.outputs.append((int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec), raw))

        client.create_subscription(InstanceArray, PREDICTIONS_TOPIC, on_output,
                                   QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE), raw=True)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            _wait_for_node(client, pubs, proc, args.startup_timeout, log_path)
            conns = [c for c in reader.connections if c.topic in pubs]
            t_first: int | None = None
            start = time.monotonic()
            for conn, t_ns, raw in reader.messages(connections=conns):
                if conn.topic == args.image_topic:
                    if args.max_frames and played.frames >= args.max_frames:
                        break
                    played.frames += 1
                t_first = t_ns if t_first is None else t_first
                due = start + (t_ns - t_first) / 1e9 / args.rate
                while (left := due - time.monotonic()) > 0:
                    rclpy.spin_once(client, timeout_sec=min(left, 0.05))
                pubs[conn.topic].publish(bytes(raw))
                played.published[conn.topic] = played.published.get(conn.topic, 0) + 1
                if proc.poll() is not None:
                    raise ReplayError(f"instance_seg_node exited ({proc.returncode}) during the replay; see {log_path}")
            played.play_s = time.monotonic() - start
            end = time.monotonic() + args.settle
            while time.monotonic() < end:
                rclpy.spin_once(client, timeout_sec=0.05)
        finally:
            stop_process(proc)
            client.destroy_node()
            rclpy.try_shutdown()
    return played


def _wait_for_node(client: Any, pubs: dict[str, Any], proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    import rclpy

    end = time.monotonic() + timeout
    while not all(p.get_subscription_count() > 0 for p in pubs.values()):
        if proc.poll() is not None:
            raise ReplayError(f"instance_seg_node exited ({proc.returncode}) before subscribing; see {log_path}")
        if time.monotonic() > end:
            raise ReplayError(f"instance_seg_node did not subscribe to the inputs within {timeout:g} s; "
                              f"see {log_path}")
        rclpy.spin_once(client, timeout_sec=0.1)
    time.sleep(0.5)  # let the reliable matches complete on both sides


def write_bag(src: str | Path, out: Path, played: Played, gt_topic: str) -> bool:
    """The outputs (timestamped with their header stamps) and the source bag's ground truth, in one mcap bag;
    returns whether the source had ground truth."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from . import bagio

    ts = bagio.typestore()
    writer = Writer(out, version=8, storage_plugin=StoragePlugin.MCAP)
    writer.set_custom_data("isr.generator", "isr replay")
    with bagio.open_bag(src) as reader, writer:
        has_gt = gt_topic in bagio.topics(reader)
        pred = writer.add_connection(PREDICTIONS_TOPIC, bagio.INSTANCE_ARRAY, typestore=ts)
        for stamp, raw in sorted(played.outputs, key=lambda o: o[0]):
            writer.write(pred, stamp, raw)
        if has_gt:
            gt = writer.add_connection(gt_topic, bagio.INSTANCE_ARRAY, typestore=ts)
            for _conn, t_ns, raw in reader.messages(connections=[c for c in reader.connections
                                                                 if c.topic == gt_topic]):
                writer.write(gt, t_ns, bytes(raw))
    return has_gt


def run(args: argparse.Namespace) -> int:
    from .bagio import BagError
    from .eval_report import write_outputs
    from .evaluate import EvalError, evaluate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_dir = Path(args.log_dir) if args.log_dir else out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    bag_out = out / "bag"
    if bag_out.exists():
        print(f"isr replay: error: {bag_out} exists; remove it or choose another --out.", file=sys.stderr)
        return 2
    log_path = log_dir / "instance_seg_node.log"
    print(f"isr replay: {args.bag} at {args.rate:g}x into instance_seg_node (log: {log_path})", file=sys.stderr)
    try:
        played = play(args, log_path)
    except (ReplayError, BagError) as exc:
        print(f"isr replay: error: {exc}", file=sys.stderr)
        return 1
    n_out = len(played.outputs)
    print(f"isr replay: published {played.frames} frames in {played.play_s:.1f} s; the node answered {n_out} "
          f"({n_out / max(played.frames, 1):.0%})", file=sys.stderr)
    if n_out == 0:
        print(f"isr replay: error: no output from the node; see {log_path}", file=sys.stderr)
        return 1
    has_gt = write_bag(args.bag, bag_out, played, args.gt_topic)
    if not has_gt:
        print(f"isr replay: the bag has no {args.gt_topic}: outputs recorded in {bag_out}, nothing scored.",
              file=sys.stderr)
        return 0
    try:
        report = evaluate(bag_out, gt_topic=args.gt_topic, predictions_topic=PREDICTIONS_TOPIC)
    except (EvalError, BagError) as exc:
        print(f"isr replay: error while scoring: {exc}", file=sys.stderr)
        return 1
    report["command"] = f"isr eval {bag_out} --predictions-topic {PREDICTIONS_TOPIC} --gt-topic {args.gt_topic}"
    report["replay"] = {"source": str(args.bag), "rate": args.rate, "frames_published": played.frames,
                        "outputs": n_out, "play_s": played.play_s}
    paths = write_outputs(report, out / "eval")
    t, c = report["tracking"], report["coco"]
    ids = (f"IDF1 {t['idf1']:.3f} ({t['idf1_detected']:.3f} on detected objects), MOTA {t['mota']:.3f}, "
           f"{t['id_switches']} ID switches" if t["status"] == "ok"
           else f"tracking: {t['status']}")
    print(f"isr replay: {report['frames']['evaluated']} frames scored; mask AP50 {c['mask_ap50']:.3f}; {ids}; "
          f"report -> {paths[0]}")
    return 0
