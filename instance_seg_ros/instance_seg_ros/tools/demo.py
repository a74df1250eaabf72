"""``isr demo``: the simulated camera and ``instance_seg_node`` as separate processes over real DDS.

Runs for a fixed number of output frames, then prints a table of the instances found per frame
(track id, score, occlusion, centroid, box size, points; the node's tracker gives an object the same track id from
frame to frame, ``-`` until its track is confirmed), the measured frame rate and latency, and a ground-truth
line (objects found at visible-mask IoU ≥ 0.5, mean centroid error, IDF1 and ID switches of the track ids against
the simulator's object ids), and writes under ``--out``:
``overlay.png`` (the node's debug image: visible and amodal contours), one PLY point cloud per instance
of the last frame, ``instances.md`` (the full table) and ``summary.json``. Exit 0 only if instances
were found.

``--grasps`` (needs the optional Contact-GraspNet extra, ``make setup-grasp``; without it the demo says so and runs
on): the client also keeps the camera's depth images and camera_info, and afterwards the planner runs on the last
``--grasps-frames`` outputs (their label images, rebuilt from the masks, with the depth of the same stamp); the top
grasps are drawn into ``overlay.png`` (when the debug image of that stamp came), the table gets a grasps column
(count, best score) and ``grasps.json`` holds them (see :mod:`.demo_grasps`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    p.add_argument("--grasps", action="store_true",
                   help="plan Contact-GraspNet grasps on the last frames (optional extra: make setup-grasp)")
    p.add_argument("--grasps-frames", type=int, default=1, help="with --grasps: plan the last N frames (default 1)")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class _Received:
    """What the demo's client got: ``(receive time, InstanceArray)`` per output frame, ground truth by stamp, the
    latest debug image."""

    results: list[tuple[float, Any]] = field(default_factory=list)
    gts: dict[int, Any] = field(default_factory=dict)
    overlay: list[Any] = field(default_factory=list)
    # with --grasps: depth and debug images by stamp (the newest demo_grasps.KEEP), camera_info, the planned grasps
    depths: dict[int, Any] = field(default_factory=dict)
    overlays: dict[int, Any] = field(default_factory=dict)
    infos: list[Any] = field(default_factory=list)
    grasps: dict[int, Any] | None = None


def run(args: argparse.Namespace) -> int:
    if args.frames < 1:
        print("isr demo: --frames must be at least 1.", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = Path(args.params) if args.params else share_dir() / "config" / "default.yaml"
    log_dir = out / "logs"
    log_dir.mkdir(exist_ok=True)
    got, failure = _collect(args, params, log_dir)
    if args.grasps and got.results:
        from .demo_grasps import plan_frames

        got.grasps = plan_frames(got.results, got.depths, got.infos, max(1, args.grasps_frames), got.overlays)
    if failure:
        print(f"isr demo: FAILED: {failure}.", file=sys.stderr)
        tail = (log_dir / "instance_seg_node.log").read_text(errors="replace").strip().splitlines()[-8:]
        if tail:
            print("  last lines of instance_seg_node's log:\n    " + "\n    ".join(tail), file=sys.stderr)
        if not got.results:
            return 1
    return _report(args, out, got)


def _commands(args: argparse.Namespace, params: Path) -> tuple[list[str], list[str]]:
    """The simulated camera's and the node's command lines."""
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
    return cam_cmd, node_cmd


def _start(cmd: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _collect(args: argparse.Namespace, params: Path, log_dir: Path) -> tuple[_Received, str | None]:
    """Start the node and the camera, subscribe to ``instances``, ``ground_truth`` and ``debug_image`` until
    ``--frames`` outputs came; returns what came and the reason it stopped early (None: it did not)."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from instance_seg_msgs.msg import InstanceArray

    from ..core.msg_codec import stamp_ns

    cam_cmd, node_cmd = _commands(args, params)
    rclpy.init()
    node = rclpy.create_node("isr_demo_client")
    got = _Received()
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(InstanceArray, f"{NS}/instances", lambda m: got.results.append((time.time(), m)),
                             reliable)
    node.create_subscription(InstanceArray, f"{NS}/ground_truth", lambda m: got.gts.__setitem__(stamp_ns(m), m),
                             QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(Image, f"{NS}/debug_image", lambda m: got.overlay.__setitem__(slice(None), [m]),
                             reliable)
    if args.grasps:
        from .demo_grasps import keep_by_stamp

        node.create_subscription(Image, f"{NS}/depth", lambda m: keep_by_stamp(got.depths, m), reliable)
        node.create_subscription(CameraInfo, f"{NS}/camera_info", lambda m: got.infos.__setitem__(slice(None), [m]),
                                 reliable)
        node.create_subscription(Image, f"{NS}/debug_image", lambda m: keep_by_stamp(got.overlays, m), reliable)
    print(f"isr demo: starting instance_seg_node ({params.name}) and sim_camera_node "
          f"({args.width}x{args.height} @ {args.rate:g} Hz, seed {args.seed}); logs in {log_dir}/", flush=True)
    procs = {"instance_seg_node": _start(node_cmd, log_dir / "instance_seg_node.log")}
    procs["sim_camera_node"] = _start(cam_cmd, log_dir / "sim_camera_node.log")
    try:
        failure = _spin(node, procs, got, args.frames, args.timeout)
        end = time.monotonic() + 2.0  # the last frames' ground truth and overlay
        while time.monotonic() < end and (not got.overlay or any(stamp_ns(m) not in got.gts
                                                                 for _, m in got.results[-3:])):
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        for p in procs.values():
            stop_process(p)
        node.destroy_node()
        rclpy.try_shutdown()
    return got, failure


def _spin(node: Any, procs: dict[str, subprocess.Popen], got: _Received, frames: int, timeout: float) -> str | None:
    """Spin until ``frames`` outputs came (None) or a process exits or ``timeout`` s pass (the reason)."""
    import rclpy

    t_start = time.monotonic()
    while len(got.results) < frames:
        rclpy.spin_once(node, timeout_sec=0.1)
        for name, p in procs.items():
            if p.poll() is not None:
                return f"{name} exited with code {p.returncode}"
        if time.monotonic() - t_start > timeout:
            return f"timed out after {timeout:g} s with {len(got.results)} of {frames} frames"
    return None


def _table(got: _Received) -> tuple[list[str], list[int], list[float], dict[str, Any], Any]:
    """The instances table (markdown lines), instances per frame, latencies (ms), the ground-truth figures and the
    last frame's FrameResult."""
    from ..core.matching import match_instances
    from ..core.mot_metrics import MotAccumulator
    from ..core.msg_codec import frame_result_from_instance_array, stamp_ns
    from .demo_grasps import grasp_cell

    counts, lat_ms, n_found, n_gt, cent_err = [], [], 0, 0, []
    mot, track_ids = MotAccumulator(iou_threshold=0.5), set()
    planned = got.grasps
    lines = ["| frame | stamp (s) | # | track | score | occlusion | centroid x y z (m) | box size (m) | points |"
             + (" grasps (n, best) |" if planned else ""), "|---|---|---|---|---|---|---|---|---|" + ("---|" if planned
                                                                                                     else "")]
    last = None
    for k, (t_recv, msg) in enumerate(got.results):
        stamp = stamp_ns(msg)
        lat_ms.append((t_recv - stamp * 1e-9) * 1e3)
        res = last = frame_result_from_instance_array(msg)
        gt_msg = got.gts.get(stamp)
        if gt_msg is not None:
            gt = frame_result_from_instance_array(gt_msg)
            m = match_instances(res, gt, iou_threshold=0.5)
            n_found += len(m)
            n_gt += len(gt.instances)
            cent_err += [x.centroid_error_m * 1e3 for x in m if np.isfinite(x.centroid_error_m)]
            mot.add_instances(gt.instances, None, res.instances)
        track_ids.update(i.track_id for i in res.instances if i.track_id)
        for inst in res.instances:
            c, s = inst.centroid, inst.box_size
            lines.append(f"| {k} | {stamp * 1e-9:.3f} | {inst.index} | {inst.track_id or '-'} | {inst.score:.2f} | "
                         f"{inst.occlusion:.2f} | "
                         f"{c[0]:+.3f} {c[1]:+.3f} {c[2]:.3f} | {s[0]:.3f} {s[1]:.3f} {s[2]:.3f} | {inst.num_points} |"
                         + (f" {grasp_cell(planned, k, inst.index)} |" if planned else ""))
        counts.append(len(res.instances))
    ids = mot.compute()
    truth = {"gt_objects": n_gt, "gt_found_iou50": n_found,
             "centroid_error_mm_mean": float(np.mean(cent_err)) if cent_err else None,
             "track_ids": len(track_ids), "idf1": ids.idf1 if np.isfinite(ids.idf1) else None,
             "id_switches": ids.id_switches}
    return lines, counts, lat_ms, truth, last


def _report(args: argparse.Namespace, out: Path, got: _Received) -> int:
    """Print the summary; write instances.md, overlay.png, the last frame's PLY files and summary.json."""
    lines, counts, lat_ms, truth, last = _table(got)
    (out / "instances.md").write_text("\n".join(lines) + "\n")
    recv = [t for t, _ in got.results]
    fps = (len(recv) - 1) / (recv[-1] - recv[0]) if len(recv) > 1 and recv[-1] > recv[0] else float("nan")
    # the table: every frame's instance count, then the last frame in full
    print(f"\ninstances per frame ({len(counts)} frames): " + " ".join(str(n) for n in counts))
    print(f"\nlast frame ({len(last.instances)} instances):")
    print("\n".join(lines[:2] + [ln for ln in lines[2:] if ln.startswith(f"| {len(got.results) - 1} |")]))
    print(f"\nframe rate: {fps:.2f} fps (instances received)   latency (stamp -> received): "
          f"p50 {_percentile(lat_ms, 50):.0f} ms, p90 {_percentile(lat_ms, 90):.0f} ms")
    cent = truth["centroid_error_mm_mean"]
    print(f"ground truth: found {truth['gt_found_iou50']} of {truth['gt_objects']} simulated objects (visible-mask "
          f"IoU >= 0.5), mean centroid error {cent if cent is not None else float('nan'):.1f} mm")
    idf1 = truth["idf1"]
    print(f"track ids: {truth['track_ids']} distinct; against the simulator's object ids IDF1 "
          f"{idf1 if idf1 is not None else float('nan'):.3f}, {truth['id_switches']} ID switches")
    _write_files(out, got, last)
    summary = {
        "frames": len(counts), "instances_total": sum(counts), "fps": fps,
        "latency_ms_p50": _percentile(lat_ms, 50), "latency_ms_p90": _percentile(lat_ms, 90), **truth,
        "args": {k: v for k, v in vars(args).items() if k != "func"},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if got.grasps:
        from .demo_grasps import write_json

        write_json(out / "grasps.json", got.grasps)
        summary["grasps"] = {str(k): {i: len(g) for i, g in e["grasps"].items()} for k, e in got.grasps.items()}
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\nwrote {out}/overlay.png, {len(list(out.glob('instance_*.ply')))} PLY files, instances.md, summary.json"
          + (", grasps.json" if got.grasps else ""))
    if sum(counts) == 0:
        print("isr demo: no instances were found.", file=sys.stderr)
        return 1
    return 0


def _write_files(out: Path, got: _Received, last: Any) -> None:
    """overlay.png (the node's last debug image) and one PLY per instance of the last frame (old ones removed)."""
    from ..core.ply import write_ply

    if got.overlay:
        import cv2

        img = got.overlay[-1]
        if got.grasps:  # draw the last planned frame's grasps into its own debug image, when that came
            from ..core.msg_codec import stamp_ns

            k = max(got.grasps)
            img = got.overlays.get(got.grasps[k]["stamp"], img)
        arr = np.frombuffer(img.data, np.uint8).reshape(img.height, img.step)[:, : img.width * 3]
        arr = arr.reshape(img.height, img.width, 3)
        if got.grasps and stamp_ns(img) == got.grasps[k]["stamp"]:
            from .demo_grasps import draw_overlay

            arr = draw_overlay(arr, got.grasps, k)
        elif got.grasps:
            print("isr demo: the debug image of the planned frame did not come; overlay.png has no grasps.",
                  file=sys.stderr)
        cv2.imwrite(str(out / "overlay.png"), arr[..., ::-1])
    for old in out.glob("instance_*.ply"):
        old.unlink()
    for inst in last.instances:
        if inst.num_points:
            write_ply(out / f"instance_{inst.index:02d}.ply", inst.points, inst.colors)
