"""``isr grasps``: Contact-GraspNet's grasps (``instance_seg_ros.grasp``) measured against geometry.

Two sources of frames:

``--sim N``: N random simulated table scenes (``Scene.random(scene_seed(seed, k))``, one random view each, noise-free
depth, ``--size``). The planner runs on the ground-truth label image (and, with ``--from-model``, on our
Segmenter's instances), and every top-k grasp is checked against the scene's **true** surfaces
(:mod:`instance_seg_ros.sim.surface_points`: every object's whole surface and the table near them) with
:mod:`instance_seg_ros.grasp.quality`: does the closing region hold the object, does the gripper hit another object
or the table, does it run into the object itself. A grasp's object is the one under its contact point (for the
ground-truth labels: always the instance's own object).

``--frames DIR``: real RGB-D frames (:func:`~instance_seg_ros.tools.frames.find_frames` layouts) with our model's
instances (default config). No meshes: the check runs on the depth cloud (visible surfaces only): the closing region
must hold points of the target's cloud, and no gripper part may hold points of another instance (``collides``) or,
stricter, of anything but the target (``collides_scene``: table and background too).

Each grasp is checked as predicted, opened to ``MAX_WIDTH`` about the same pose (``max_width``), and opened to
``MAX_WIDTH`` keeping a finger on the contact point (``max_width_contact``). ``--input-frame`` picks how the cloud is
given to the network: ``camera`` (the optical frame, the planner before 2026-12-03) and/or ``upright`` (z up,
centred: the planner's default; up = the simulator's gravity, or on real frames the fitted support plane's normal).

Writes under ``--out``: ``metrics.json``, ``report.md`` and a figure (``grasps_sim.png`` of the first frames,
``grasps_real.png`` of every real frame) with the top grasps drawn as projected grippers colored by score.
Planning cost is measured per instance (one ``plan`` call each); a frame's cost is the sum over its instances.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_arguments", "run"]

INPUT_FRAMES = ("camera", "upright")
#: how each grasp is re-opened before the check: None = as predicted; else (width, keep)
VARIANTS: dict[str, tuple[float, str] | None] = {"as_predicted": None, "max_width": (0.08, "pose"),
                                                 "max_width_contact": (0.08, "contact")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sim", type=int, metavar="N", help="render N simulated table scenes")
    src.add_argument("--frames", metavar="DIR", help="real RGB-D frames (folder / OSD / OCID layouts)")
    p.add_argument("--out", default="grasps_out", help="output directory (default grasps_out/)")
    p.add_argument("--seed", type=int, default=0, help="--sim: scene seed (default 0)")
    p.add_argument("--size", default="640x480", help="--sim: image size WxH (default 640x480)")
    p.add_argument("--from-model", action="store_true",
                   help="--sim: also plan on our Segmenter's instances (default config), not only the ground truth")
    p.add_argument("--input-frame", default="camera,upright",
                   help="comma-separated: camera (the optical frame, the planner before 2026-12-03) and/or "
                        "upright (z up); default both")
    p.add_argument("--top-k", type=int, default=5, help="grasps kept and checked per instance (default 5)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="planner score threshold (default 0.5)")
    p.add_argument("--max-instances", type=int, default=None,
                   help="plan at most this many instances per frame, largest visible mask first (default all)")
    p.add_argument("--device", default=None, help="planner device (default CUDA when available, else CPU)")


@dataclass
class Collected:
    """Everything measured: per grasp, per instance and per frame records (plain dicts, JSON-ready)."""

    grasps: list[dict[str, Any]] = field(default_factory=list)
    instances: list[dict[str, Any]] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    panels: list[tuple[str, str, np.ndarray]] = field(default_factory=list)  # (frame, input frame, image)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must be WIDTHxHEIGHT (e.g. 640x480), got {text!r}.") from None
    if not (32 <= w <= 4096 and 32 <= h <= 4096):
        raise ValueError(f"--size must be between 32x32 and 4096x4096, got {text!r}.")
    return w, h


def run(args: argparse.Namespace) -> int:
    frames_in = [f.strip() for f in str(args.input_frame).split(",") if f.strip()]
    bad = [f for f in frames_in if f not in INPUT_FRAMES]
    if not frames_in or bad:
        print(f"isr grasps: --input-frame takes a comma list of {', '.join(INPUT_FRAMES)}, got {args.input_frame!r}.",
              file=sys.stderr)
        return 2
    if args.top_k < 1 or not 0 <= args.score_threshold <= 1 or (args.max_instances is not None
                                                                and args.max_instances < 1):
        print("isr grasps: need --top-k >= 1, --score-threshold in [0, 1] and --max-instances >= 1.", file=sys.stderr)
        return 2
    if args.sim is not None and args.sim < 1:
        print("isr grasps: --sim needs at least 1 scene.", file=sys.stderr)
        return 2
    try:
        size = _parse_size(args.size)
    except ValueError as e:
        print(f"isr grasps: {e}", file=sys.stderr)
        return 2
    from ..grasp import ContactGraspNet, GraspExtraMissing

    try:
        planner = ContactGraspNet(device=args.device)
    except GraspExtraMissing as e:
        print(f"isr grasps: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.sim is not None:
        got = _run_sim(args, planner, size, frames_in)
    else:
        from .frames import FramesError

        try:
            got = _run_real(args, planner, frames_in)
        except FramesError as e:
            print(f"isr grasps: {e}", file=sys.stderr)
            return 2
    from .grasps_report import write_outputs

    metrics = write_outputs(out, args, got, frames_in, time.perf_counter() - t0, str(planner.device))
    print(f"isr grasps: wrote {out}/report.md, metrics.json and {metrics['figure']}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------------ planning
def _plan(planner: Any, frame_in: str, depth: np.ndarray, K: Any, label: np.ndarray, index: int, up: np.ndarray | None,
          args: argparse.Namespace) -> tuple[list[Any], float]:
    """One instance's grasps with the network's input in ``frame_in``, and the milliseconds it took."""
    t = time.perf_counter()
    if frame_in == "camera":
        grasps = planner.plan(depth, K, label, [index], max_grasps=args.top_k, score_threshold=args.score_threshold,
                              input_frame="camera")
    elif up is None:  # no support plane: nothing to stand the cloud up on
        grasps = {index: []}
    else:
        grasps = planner.plan(depth, K, label, [index], max_grasps=args.top_k, score_threshold=args.score_threshold,
                              up=up)
    return grasps[index], (time.perf_counter() - t) * 1e3


def _chosen(label: np.ndarray, limit: int | None) -> list[int]:
    """Instance indices of a label image, largest first, at most ``limit``."""
    ids, counts = np.unique(label[label > 0], return_counts=True)
    order = [int(i) for i in ids[np.argsort(-counts, kind="stable")]]
    return order if limit is None else order[:limit]


def _check_all(grasp: Any, points: np.ndarray, labels: np.ndarray, target: int,
               obstacle: np.ndarray | None) -> dict[str, dict[str, Any]]:
    from ..grasp.quality import check_grasp, opened

    out = {}
    for name, how in VARIANTS.items():
        pose, width = (grasp.pose, grasp.width) if how is None else opened(grasp, how[0], keep=how[1])
        out[name] = check_grasp(pose, width, points, labels, target, obstacle=obstacle, score=grasp.score).as_dict()
    return out


def _grasp_record(grasp: Any, rank: int, target_points: np.ndarray, up: np.ndarray | None) -> dict[str, Any]:
    from ..grasp.quality import width_needed

    t_min, t_max = width_needed(grasp, target_points) if len(target_points) else (float("nan"), float("nan"))
    return {"rank": rank, "score": grasp.score, "width": grasp.width, "t_min": t_min, "t_max": t_max,
            "approach_up": float(grasp.pose[:3, 2] @ up) if up is not None else None,
            "pose": grasp.pose.round(6).tolist(), "contact": grasp.contact.round(6).tolist()}


# ------------------------------------------------------------------------------------------------------ simulation
def _run_sim(args: argparse.Namespace, planner: Any, size: tuple[int, int], frames_in: list[str]) -> Collected:
    from scipy.spatial import cKDTree

    from ..grasp.draw import draw_grasps
    from ..sim.camera import d435_intrinsics
    from ..sim.randomization import scene_seed
    from ..sim.scene import Scene
    from ..sim.surface_points import scene_surfaces

    seg = _segmenter() if args.from_model else None
    got = Collected()
    k_int = d435_intrinsics(*size)
    for k in range(args.sim):
        seed = scene_seed(args.seed, k)
        with Scene.random(seed) as scene:
            frame = scene.render(scene.random_camera(seed=0, intrinsics=k_int))
            surfaces, support = scene_surfaces(scene, frame, seed=seed)
        gt = frame.to_frame_result()
        # the labelled true-surface cloud: object id per point, 0 = the support
        points = np.concatenate([support, *surfaces.values()])
        labels = np.concatenate([np.zeros(len(support), np.int64)]
                                + [np.full(len(p), oid, np.int64) for oid, p in surfaces.items()])
        tree = cKDTree(points)
        up = frame.world_to_camera[:3, 2].copy()  # the world's z axis in the optical frame
        sources = {"ground_truth": gt.label_image}
        if seg is not None:
            sources["model"] = seg.process(frame.color, frame.depth, frame.intrinsics).label_image
        name = f"scene {k} (seed {seed})"
        for source, label in sources.items():
            for frame_in in frames_in:
                drawn, ms_frame, chosen = [], 0.0, _chosen(label, args.max_instances)
                for index in chosen:
                    grasps, ms = _plan(planner, frame_in, frame.depth, frame.intrinsics, label, index, up, args)
                    ms_frame += ms
                    got.instances.append({"source": source, "input_frame": frame_in, "frame": name, "instance": index,
                                          "grasps": len(grasps), "ms": ms})
                    for rank, g in enumerate(grasps):
                        target = (gt.instances[index - 1].track_id if source == "ground_truth"
                                  else _under(tree, labels, g))
                        rec = _grasp_record(g, rank, points[labels == target], up)
                        rec.update(source=source, input_frame=frame_in, frame=name, instance=index, target=target,
                                   checks=_check_all(g, points, labels, target, None))
                        got.grasps.append(rec)
                    drawn += grasps
                got.frames.append({"source": source, "input_frame": frame_in, "frame": name, "instances": len(chosen),
                                   "ms": ms_frame})
                if k < 4 and source == "ground_truth":
                    got.panels.append((name, frame_in, draw_grasps(frame.color, drawn, frame.intrinsics)))
        print(f"isr grasps: {name}: {len(_chosen(gt.label_image, args.max_instances))} of {len(gt.instances)} objects "
              f"planned (labels: {', '.join(sources)}; input frames: {', '.join(frames_in)})", file=sys.stderr,
              flush=True)
    return got


def _under(tree: Any, labels: np.ndarray, grasp: Any) -> int:
    """The object id under a grasp's contact point (the nearest true-surface sample within 1 cm), -1 for the table
    or nothing."""
    dist, nearest = tree.query(grasp.contact)
    target = int(labels[nearest]) if dist <= 0.01 else -1
    return target if target > 0 else -1


def _segmenter() -> Any:
    from ..core.config import Config
    from ..core.pipeline import Segmenter

    seg = Segmenter(Config())
    seg.load()
    return seg


# ------------------------------------------------------------------------------------------------------ real frames
def _run_real(args: argparse.Namespace, planner: Any, frames_in: list[str]) -> Collected:
    from ..core.support_plane import fit_plane
    from ..grasp.draw import draw_grasps
    from ..grasp.planner import scene_points
    from .frames import find_frames, load_frame

    refs = find_frames(args.frames)
    seg = _segmenter()
    got = Collected()
    for ref in refs:
        fr = load_frame(ref)
        result = seg.process(fr.color, fr.depth, fr.K)
        label = result.label_image
        plane = result.support_plane or fit_plane(seg.config, fr.depth, fr.K)
        up = None if plane is None else np.asarray(plane.normal, dtype=np.float64)
        # the visible cloud with the instance labels (0: background, table included)
        points, labels = scene_points(fr.depth, fr.K, label)
        instances_only = labels > 0
        for frame_in in frames_in:
            drawn, ms_frame, chosen = [], 0.0, _chosen(label, args.max_instances)
            for index in chosen:
                grasps, ms = _plan(planner, frame_in, fr.depth, fr.K, label, index, up, args)
                ms_frame += ms
                got.instances.append({"source": "model", "input_frame": frame_in, "frame": ref.name,
                                      "instance": index, "grasps": len(grasps), "ms": ms})
                target_pts = points[labels == index]
                for rank, g in enumerate(grasps):
                    rec = _grasp_record(g, rank, target_pts, up)
                    rec.update(source="model", input_frame=frame_in, frame=ref.name, instance=index, target=index,
                               checks=_check_all(g, points, labels, index, instances_only),
                               checks_scene=_check_all(g, points, labels, index, None))
                    got.grasps.append(rec)
                drawn += grasps[:3]
            got.frames.append({"source": "model", "input_frame": frame_in, "frame": ref.name,
                               "instances": len(chosen), "ms": ms_frame, "plane": plane is not None})
            got.panels.append((ref.name, frame_in, draw_grasps(fr.color, drawn, fr.K)))
        print(f"isr grasps: {ref.name}: {len(result.instances)} instances", file=sys.stderr, flush=True)
    return got


def dump_json(path: Path, data: Any) -> None:
    """JSON with NaN written as null."""

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        if isinstance(x, float | np.floating):
            return float(x) if np.isfinite(x) else None
        if isinstance(x, np.integer | np.bool_):
            return x.item()
        return x

    path.write_text(json.dumps(clean(data), indent=2) + "\n")
