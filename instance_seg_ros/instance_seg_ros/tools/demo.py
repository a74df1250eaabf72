"""``isr demo``: the simulated camera and ``instance_seg_node`` as separate processes over real DDS.

Runs for a fixed number of output frames, then prints a table of the instances found per frame
(score, occlusion, centroid, box size, points), the measured frame rate and latency, and a ground-truth
line (objects found at visible-mask IoU ≥ 0.5, mean centroid error), and writes under ``--out``:
``overlay.png`` (the node's debug image: visible and amodal contours), one PLY point cloud per instance
of the last frame, ``instances.md`` (the full table) and ``summary.json``. Exit 0 only if instances
were found.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .procs import share_dir, stop_process

NS = "/isr_demo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=30, help="output frames to collect (default 30)")
    p.add_argument("--params", default=None, help="params file for instance_seg_node (default: config/default.yaml)")
    p.add_argument("--weights", default=None, help="override model.weights (default: the params file's, 'bundled')")
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out/)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--rate", type=float, default=10.0, help="simulated camera rate, Hz (default 10)")
    p.add_argument("--seed", type=int, default=3, help="scene seed (default 3)")
    p.add_argument("--scene-change-every", type=int, default=15, help="new scene every N camera frames")
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds (default 300)")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from instance_seg_msgs.msg import InstanceArray

    from ..core.matching import match_instances, write_ply
    from ..ros.conversions import frame_result_from_msg, stamp_to_ns

    if args.frames < 1:
        print("isr demo: --frames must be at least 1.", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = Path(args.params) if args.params else share_dir() / "config" / "default.yaml"
    log_dir = out / "logs"
    log_dir.mkdir(exist_ok=True)

    cam_cmd = [
        sys.executable, "-m", "instance_seg_ros.sim.camera_node", "--ros-args", "-r", f"__ns:={NS}",
        "-p", f"width:={args.width}", "-p", f"height:={args.height}", "-p", f"rate:={args.rate}",
        "-p", f"seed:={args.seed}", "-p", "publish_ground_truth:=true", "-p", "camera_motion:=orbit",
        "-p", f"scene_change_every:={args.scene_change_every}", "-p", "wait_for_subscribers:=1",
    ]
    # Reliable image inputs: under localhost-only discovery (env.sh) Fast DDS drops large best-effort images
    # between processes even with LARGE_DATA (see README, "Large images").
    node_cmd = [sys.executable, "-m", "instance_seg_ros.ros.node", "--ros-args", "-r", f"__ns:={NS}",
                "--params-file", str(params), "-p", "qos.input_reliability:=reliable"]
    if args.weights:
        node_cmd += ["-p", f"model.weights:={args.weights}"]

    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], name: str) -> subprocess.Popen:
        log = open(log_dir / f"{name}.log", "wb")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        procs.append(p)
        return p

    rclpy.init()
    node = rclpy.create_node("isr_demo_client")
    results: list[tuple[float, InstanceArray]] = []
    gts: dict[int, InstanceArray] = {}
    overlay: list[Image] = []
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(InstanceArray, f"{NS}/instances", lambda m: results.append((time.time(), m)), reliable)
    node.create_subscription(InstanceArray, f"{NS}/ground_truth",
                             lambda m: gts.__setitem__(stamp_to_ns(m.header.stamp), m),
                             QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(Image, f"{NS}/debug_image", lambda m: overlay.__setitem__(slice(None), [m]), reliable)

    print(f"isr demo: starting instance_seg_node ({params.name}) and sim_camera_node "
          f"({args.width}x{args.height} @ {args.rate:g} Hz, seed {args.seed}); logs in {log_dir}/", flush=True)
    seg = start(node_cmd, "instance_seg_node")
    cam = start(cam_cmd, "sim_camera_node")
    t_start = time.monotonic()
    failure = None
    try:
        while len(results) < args.frames:
            rclpy.spin_once(node, timeout_sec=0.1)
            if seg.poll() is not None:
                failure = f"instance_seg_node exited with code {seg.returncode}"
                break
            if cam.poll() is not None:
                failure = f"sim_camera_node exited with code {cam.returncode}"
                break
            if time.monotonic() - t_start > args.timeout:
                failure = f"timed out after {args.timeout:g} s with {len(results)} of {args.frames} frames"
                break
        end = time.monotonic() + 2.0  # the last frames' ground truth and overlay
        while time.monotonic() < end and (not overlay or any(stamp_to_ns(m.header.stamp) not in gts
                                                             for _, m in results[-3:])):
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        for p in procs:
            stop_process(p)
        node.destroy_node()
        rclpy.try_shutdown()

    if failure:
        print(f"isr demo: FAILED: {failure}.", file=sys.stderr)
        tail = (log_dir / "instance_seg_node.log").read_text(errors="replace").strip().splitlines()[-8:]
        if tail:
            print("  last lines of instance_seg_node's log:\n    " + "\n    ".join(tail), file=sys.stderr)
        if not results:
            return 1

    return _report(args, out, results, gts, overlay, match_instances, write_ply, frame_result_from_msg, stamp_to_ns)


def _report(args, out, results, gts, overlay, match_instances, write_ply, frame_result_from_msg, stamp_to_ns) -> int:
    rows = []
    lat_ms, n_found, n_gt, cent_err = [], 0, 0, []
    lines = ["| frame | stamp (s) | # | score | occlusion | centroid x y z (m) | box size (m) | points |",
             "|---|---|---|---|---|---|---|---|"]
    last = None
    for k, (t_recv, msg) in enumerate(results):
        stamp = stamp_to_ns(msg.header.stamp)
        lat_ms.append((t_recv - stamp * 1e-9) * 1e3)
        res = frame_result_from_msg(msg)
        last = res
        gt_msg = gts.get(stamp)
        if gt_msg is not None:
            gt = frame_result_from_msg(gt_msg)
            m = match_instances(res, gt, iou_threshold=0.5)
            n_found += len(m)
            n_gt += len(gt.instances)
            cent_err += [x.centroid_error_m * 1e3 for x in m if np.isfinite(x.centroid_error_m)]
        for inst in res.instances:
            c, s = inst.centroid, inst.box_size
            lines.append(f"| {k} | {stamp * 1e-9:.3f} | {inst.index} | {inst.score:.2f} | {inst.occlusion:.2f} | "
                         f"{c[0]:+.3f} {c[1]:+.3f} {c[2]:.3f} | {s[0]:.3f} {s[1]:.3f} {s[2]:.3f} | {inst.num_points} |")
        rows.append((k, stamp, len(res.instances)))
    (out / "instances.md").write_text("\n".join(lines) + "\n")

    recv = [t for t, _ in results]
    fps = (len(recv) - 1) / (recv[-1] - recv[0]) if len(recv) > 1 and recv[-1] > recv[0] else float("nan")
    total_inst = sum(r[2] for r in rows)

    # the table: every frame's instance count, then the last frame in full
    print(f"\ninstances per frame ({len(rows)} frames): " + " ".join(str(r[2]) for r in rows))
    print(f"\nlast frame ({len(last.instances)} instances):")
    print("\n".join(lines[:2] + [ln for ln in lines[2:] if ln.startswith(f"| {len(results) - 1} |")]))
    print(f"\nframe rate: {fps:.2f} fps (instances received)   latency (stamp -> received): "
          f"p50 {_percentile(lat_ms, 50):.0f} ms, p90 {_percentile(lat_ms, 90):.0f} ms")
    found_line = (f"ground truth: found {n_found} of {n_gt} simulated objects (visible-mask IoU >= 0.5), "
                  f"mean centroid error {np.mean(cent_err) if cent_err else float('nan'):.1f} mm")
    print(found_line)

    if overlay:
        import cv2

        img = overlay[-1]
        arr = np.frombuffer(img.data, np.uint8).reshape(img.height, img.step)[:, : img.width * 3]
        cv2.imwrite(str(out / "overlay.png"), arr.reshape(img.height, img.width, 3)[..., ::-1])
    for old in out.glob("instance_*.ply"):
        old.unlink()
    for inst in last.instances:
        if inst.num_points:
            write_ply(out / f"instance_{inst.index:02d}.ply", inst.points, inst.colors)
    summary = {
        "frames": len(rows), "instances_total": total_inst, "fps": fps,
        "latency_ms_p50": _percentile(lat_ms, 50), "latency_ms_p90": _percentile(lat_ms, 90),
        "gt_objects": n_gt, "gt_found_iou50": n_found,
        "centroid_error_mm_mean": float(np.mean(cent_err)) if cent_err else None,
        "args": {k: v for k, v in vars(args).items() if k != "func"},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\nwrote {out}/overlay.png, {len(list(out.glob('instance_*.ply')))} PLY files, instances.md, summary.json")
    if total_inst == 0:
        print("isr demo: no instances were found.", file=sys.stderr)
        return 1
    return 0
