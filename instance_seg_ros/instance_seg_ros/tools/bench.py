"""``isr bench``: per-stage timings of the pipeline against a naive baseline, on one fixed synthetic frame.

The frame is a simulated tabletop pile (``sim.scene``, fixed seed) at ``--width`` x ``--height`` with
``--instances`` objects, encoded once as the messages a camera driver sends (``rgb8`` color, ``16UC1``
depth in millimetres, CameraInfo). Each run then goes the node's way: decode the messages, run the pipeline,
build the ``InstanceArray``; ours also runs the node's tracker (``tracking``; the baseline does not track). Per
stage (``decode``, ``proposals``, ``preprocess``, ``inference``, ``postprocess``, ``lift``, ``support_plane``,
``cloud_filter``, ``geometry``, ``tracking``, ``message``) and end to end it reports the median and p99 over ``--runs``
runs after ``--warmup`` runs, frames per second (1000 / median end-to-end ms), the peak resident memory
(RSS, sampled during the runs) and, on CUDA, the peak allocated GPU memory.

The same figures are measured, in the same process and on the same frame, for the naive baseline of
:mod:`instance_seg_ros.tools.baseline` (same network and weights; torchvision's 800 px upscaling transform,
per-instance full-image lifting, message fields filled element by element), with the ratio ours / baseline
per stage and end to end. ``--no-baseline`` skips it.

The fast paths are checked against the plain code path (``Segmenter(reference=True)``: default memory format,
per-RoI paste, torch reductions) on the same frame: matched instances, their mask IoU and centroid distance
(``agreement`` in the JSON).

``--node`` adds a node-level measurement: ``instance_seg_node`` runs in another process (same parameters), and
the latency from publishing the color image to receiving ``instances`` is timed over ``--runs`` frames; its
difference to the in-process end-to-end time is what DDS transport, executor and publishing add.

Examples::

    isr bench --params config/cpu_fast.yaml --runs 20
    isr bench --set model.weights=none --set model.backbone=resnet50_fpn --instances 30 --json bench.json
    isr bench --params config/cpu_fast.yaml --node --no-baseline

With untrained weights (``model.weights: none``) the score and mask thresholds are set to 0 (unless given with
``--set``) so the net still yields ``--instances`` detections, capped by ``model.max_instances``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .bench_frame import frame_messages, make_frame
from .bench_node import node_bench
from .bench_report import format_report
from .bench_stats import OUTSIDE_NETWORK, STAGES, RssSampler, stats
from .cli_config import build_config, parse_set
from .machine import cpu_model_name

__all__ = [
    "OUTSIDE_NETWORK",
    "STAGES",
    "BenchError",
    "add_arguments",
    "bench",
    "format_report",
    "run",
]


class BenchError(ValueError):
    """Bad ``isr bench`` arguments; the message says what to change."""


# ---------------------------------------------------------------------------------------- measuring
def _cuda(device: Any) -> bool:
    return getattr(device, "type", str(device)).startswith("cuda")


def _time_runs(
    process: Callable[[Any, Any, Any], Any],
    decode: Callable[[], tuple[Any, Any, Any]],
    build_msg: Callable[[Any], Any] | None,
    runs: int,
    warmup: int,
    device: Any,
) -> dict[str, Any]:
    """Run ``decode -> process -> build_msg`` ``warmup + runs`` times; per-stage samples of the timed runs."""
    import torch

    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    e2e: list[float] = []
    result = None
    for _ in range(warmup):
        result = process(*decode())
        if build_msg is not None:
            build_msg(result)
    if _cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with RssSampler() as rss:
        for _ in range(runs):
            t0 = time.perf_counter()
            color, depth, K = decode()
            t1 = time.perf_counter()
            result = process(color, depth, K)
            t2 = time.perf_counter()
            if build_msg is not None:
                build_msg(result)
            t3 = time.perf_counter()
            samples["decode"].append((t1 - t0) * 1e3)
            for s in STAGES[1:-1]:  # what the pipeline times itself (decode and message are timed here)
                samples[s].append(float(result.timings.get(s, 0.0)))
            samples["message"].append((t3 - t2) * 1e3 if build_msg is not None else float("nan"))
            e2e.append((t3 - t0) * 1e3)
    out: dict[str, Any] = {
        "stages": {s: stats(v) for s, v in samples.items()},
        "end_to_end": stats(e2e),
        "instances": len(result.instances) if result is not None else 0,
        "points": int(sum(i.num_points for i in result.instances)) if result is not None else 0,
        "peak_rss_mb": rss.peak / 2**20,
        "rss_growth_mb": (rss.peak - rss.start) / 2**20,
        "cuda_peak_mb": (torch.cuda.max_memory_allocated(device) / 2**20) if _cuda(device) else None,
    }
    med = out["end_to_end"]["median"]
    out["fps"] = 1000.0 / med if med > 0 else float("inf")
    outside = sum(out["stages"][s]["median"] for s in OUTSIDE_NETWORK if np.isfinite(out["stages"][s]["median"]))
    out["outside_network_ms"] = outside
    out["outside_network_fraction"] = outside / med if med > 0 else float("nan")
    out["_result"] = result
    return out


# ---------------------------------------------------------------------------------------- agreement
def _agreement(ours: Any, ref: Any) -> dict[str, Any]:
    """Match each of our instances to the reference instance with the highest visible-mask IoU."""
    h, w = ours.height, ours.width
    ref_masks = [r.full_mask(h, w) for r in ref.instances]
    ious, dists, amodal_ious = [], [], []
    for inst in ours.instances:
        m = inst.full_mask(h, w)
        best, j = 0.0, -1
        for k, rm in enumerate(ref_masks):
            union = np.count_nonzero(m | rm)
            iou = np.count_nonzero(m & rm) / union if union else 1.0
            if iou > best:
                best, j = iou, k
        ious.append(best)
        if j >= 0:
            r = ref.instances[j]
            am, ram = inst.full_mask(h, w, amodal=True), r.full_mask(h, w, amodal=True)
            union = np.count_nonzero(am | ram)
            amodal_ious.append(np.count_nonzero(am & ram) / union if union else 1.0)
            dists.append(float(np.linalg.norm(np.asarray(inst.centroid) - np.asarray(r.centroid))) * 1e3)
    return {
        "instances": len(ours.instances),
        "reference_instances": len(ref.instances),
        "matched_iou_0.99": int(sum(i >= 0.99 for i in ious)),
        "min_mask_iou": float(min(ious)) if ious else 1.0,
        "min_amodal_iou": float(min(amodal_ious)) if amodal_ious else 1.0,
        "max_centroid_mm": float(max(dists)) if dists else 0.0,
    }


# ---------------------------------------------------------------------------------------- the benchmark
def _machine() -> dict[str, Any]:
    import torch

    cpu = cpu_model_name()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def bench(
    cfg: Any,
    *,
    width: int = 640,
    height: int = 480,
    instances: int = 10,
    runs: int = 20,
    warmup: int = 3,
    seed: int = 0,
    baseline: bool = True,
    check: bool = True,
    node: bool = False,
    params: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark and return its report (the ``--json`` document).

    Args:
        cfg: the pipeline's Config (see :func:`~instance_seg_ros.tools.cli_config.build_config`).
        width, height: frame size. instances: objects in the scene (the untrained net's detections follow
            ``model.max_instances``). runs, warmup: timed and untimed runs per pipeline. seed: scene seed.
        baseline: also time the naive baseline. check: compare the fast paths with the reference path.
        node: also time ``instance_seg_node`` in another process. params: the params file the node gets.

    Raises:
        BenchError: bad sizes or counts. WeightsError / ConfigError: the model cannot be loaded.
    """
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise BenchError(f"--width/--height must be within 16..4096, got {width}x{height}.")
    if runs < 1 or warmup < 0:
        raise BenchError(f"--runs must be >= 1 and --warmup >= 0, got {runs} and {warmup}.")
    if instances < 1:
        raise BenchError(f"--instances must be >= 1, got {instances}.")
    b = _Bench(cfg, width, height, instances, runs, warmup, seed, log)
    report = b.load()
    ours, ours_result = b.time_ours()
    report["ours"] = ours
    if b.build_msg is not None:
        report["message_ground_truth"] = b.message_ground_truth()
    if check:
        report["agreement"] = _agreement(ours_result, b.reference_result())
    report["baseline"], report["ratio"] = b.time_baseline(ours) if baseline else (None, None)
    report["node"] = b.time_node(params, ours) if node else b.release()
    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


class _Bench:
    """The steps of :func:`bench` on one frame, its driver messages and one loaded Segmenter."""

    def __init__(self, cfg: Any, width: int, height: int, instances: int, runs: int, warmup: int, seed: int,
                 log: Callable[[str], None]) -> None:
        self.cfg, self.width, self.height, self.instances = cfg, width, height, instances
        self.runs, self.warmup, self.seed, self.log = runs, warmup, seed, log
        try:
            from ..ros.conversions import instance_array_msg
        except ImportError:  # no ROS: the message stage is skipped
            instance_array_msg = None
            log("ROS 2 messages are not importable: the message stage is not measured.")
        self.instance_array_msg = instance_array_msg
        t = time.perf_counter()
        self.frame = make_frame(width, height, instances, seed)
        self.image, self.depth_msg, self.info, self.hdr = frame_messages(self.frame)
        log(f"frame: {width}x{height}, {len(self.frame.ground_truth)} visible objects (rendered in "
            f"{time.perf_counter() - t:.1f} s)")
        self.build_msg = (lambda r: instance_array_msg(r, self.hdr)) if instance_array_msg is not None else None
        self.seg: Any = None

    def decode(self) -> tuple[Any, Any, Any]:
        """The node's first stage: the three messages to numpy."""
        from ..core.images import color_from_msg, depth_from_msg, intrinsics_from_camera_info

        return (color_from_msg(self.image), depth_from_msg(self.depth_msg, scale_16uc1=self.cfg.depth.scale_16uc1),
                intrinsics_from_camera_info(self.info))

    def load(self) -> dict[str, Any]:
        """Load the Segmenter (seeded: untrained weights give the same model, and detections, on every run); the
        report's head (config, frame, model, device, machine)."""
        import torch

        from ..core.pipeline import Segmenter

        cfg, seg = self.cfg, Segmenter(self.cfg, log=lambda m: None)
        torch.manual_seed(self.seed)
        seg.load()
        self.seg = seg
        return {
            "config": cfg.to_flat(),
            "frame": {"width": self.width, "height": self.height, "instances": self.instances, "seed": self.seed,
                      "visible_objects": len(self.frame.ground_truth)},
            "model": {"backbone": seg.meta.backbone, "weights": cfg.model.weights,
                      "input_mode": seg.meta.input_mode,
                      "network_input": list(seg.predictor.input_size(self.height, self.width))},
            "device": str(seg.predictor.device),
            "precision": seg.predictor.precision,
            "runs": self.runs,
            "warmup": self.warmup,
            "machine": _machine(),
        }

    def time_ours(self) -> tuple[dict[str, Any], Any]:
        """Our pipeline's per-stage timings, and its last result."""
        import torch

        seg = self.seg
        self.log(f"ours: {seg.meta.backbone} on {seg.predictor.device} ({seg.predictor.precision}, "
                 f"{torch.get_num_threads()} threads), {self.runs} runs after {self.warmup} warm-up")
        ours = _time_runs(self._tracked(seg), self.decode, self.build_msg, self.runs, self.warmup,
                          seg.predictor.device)
        return ours, ours.pop("_result")

    def _tracked(self, seg: Any) -> Callable[[Any, Any, Any], Any]:
        """``seg.process`` followed by the node's tracker (``tracking.*``; a camera at 30 Hz), timed as ``tracking``."""
        from ..core.tracking import Tracker

        tracker, stamp = Tracker(self.cfg.tracking), [0.0]

        def process(color: Any, depth: Any, K: Any) -> Any:
            result = seg.process(color, depth, K)
            stamp[0] += 1 / 30
            t0 = time.perf_counter()
            tracker.update(stamp[0], result.instances)
            result.timings["tracking"] = (time.perf_counter() - t0) * 1e3
            return result

        return process

    def message_ground_truth(self) -> dict[str, Any]:
        """Message building on realistic content: the scene's ground-truth instances (true masks, their clouds)
        rather than the untrained net's box-shaped masks."""
        gt = self.frame.to_frame_result()
        samples = []
        for i in range(self.warmup + self.runs):
            t0 = time.perf_counter()
            self.instance_array_msg(gt, self.hdr)
            if i >= self.warmup:
                samples.append((time.perf_counter() - t0) * 1e3)
        return {"time": stats(samples), "instances": len(gt.instances),
                "points": int(sum(i.num_points for i in gt.instances))}

    def reference_result(self) -> Any:
        """The frame through the plain code path (``Segmenter(reference=True)``) with the same weights."""
        from ..core.pipeline import Segmenter

        ref = Segmenter(self.cfg, log=lambda m: None, reference=True)
        ref.load()
        ref.predictor.model.load_state_dict(self.seg.predictor.model.state_dict())
        result = ref.process(*self.decode())
        ref.release()
        return result

    def time_baseline(self, ours: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float | None]]:
        """The naive baseline's timings (same network and weights), and the ratio ours / baseline."""
        from .baseline import NaiveBaseline, naive_instance_array_msg

        seg = self.seg
        base = NaiveBaseline(seg.predictor.model, seg.meta, self.cfg, device=seg.predictor.device)
        self.log(f"baseline: the same network at torchvision's {base.min_size}/{base.max_size} px transform, "
                 f"{self.runs} runs after {self.warmup} warm-up")
        build = (lambda r: naive_instance_array_msg(r, self.hdr)) if self.build_msg is not None else None
        b = _time_runs(base.process, self.decode, build, self.runs, self.warmup, seg.predictor.device)
        b.pop("_result")
        ratio = {s: _ratio(ours["stages"][s]["median"], b["stages"][s]["median"]) for s in STAGES}
        ratio["end_to_end"] = _ratio(ours["end_to_end"]["median"], b["end_to_end"]["median"])
        ratio["outside_network"] = _ratio(ours["outside_network_ms"], b["outside_network_ms"])
        return b, ratio

    def time_node(self, params: str | Path | None, ours: dict[str, Any]) -> dict[str, Any]:
        """:func:`~instance_seg_ros.tools.bench_node.node_bench` with these very weights (saved for the node when
        untrained, not another random draw); the Segmenter is released first."""
        import tempfile

        from ..core.model import save_checkpoint

        cfg, seg = self.cfg, self.seg
        self.log("node: starting instance_seg_node in another process ...")
        with tempfile.TemporaryDirectory(prefix="isr_bench_") as tmp:
            node_cfg = cfg
            if cfg.model.weights.lower() == "none":
                path = save_checkpoint(Path(tmp) / "untrained.pt", seg.predictor.model, seg.meta)
                node_cfg = cfg.replace(**{"model.weights": str(path)})
            self.release()
            out = node_bench(node_cfg, params, self.frame, runs=self.runs, warmup=self.warmup, log=self.log)
        lat = out.get("latency")
        if lat is not None:
            out["overhead_vs_in_process_ms"] = lat["median"] - ours["end_to_end"]["median"]
        return out

    def release(self) -> None:
        """Free the Segmenter's model (and accelerator memory)."""
        self.seg.release()


def _ratio(a: float, b: float) -> float | None:
    if not (np.isfinite(a) and np.isfinite(b)) or b <= 0:
        return None
    return float(a / b)


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", help="config or ROS params YAML (e.g. config/cpu_fast.yaml); default: built-in "
                                         "defaults with the bundled model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one parameter, e.g. --set model.backbone=resnet50_fpn (repeatable)")
    parser.add_argument("--width", type=int, default=640, help="frame width (640)")
    parser.add_argument("--height", type=int, default=480, help="frame height (480)")
    parser.add_argument("--instances", type=int, default=None,
                        help="objects in the scene; also sets model.max_instances (default: the config's cap)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per pipeline (20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (3)")
    parser.add_argument("--device", help="model.device: cpu, cuda, cuda:N, auto")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (0)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the naive baseline")
    parser.add_argument("--no-check", action="store_true", help="skip the fast-vs-reference path comparison")
    parser.add_argument("--node", action="store_true",
                        help="also time instance_seg_node in another process (publish color -> receive instances)")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="write the report as JSON to PATH (or, without PATH, print only the JSON)")


def run(args: argparse.Namespace) -> int:
    json_only = args.json == "-"
    log = (lambda m: print(m, file=sys.stderr)) if json_only else print
    try:
        overrides = parse_set(args.set)
        cfg, notes = build_config(args.params, overrides, device=args.device, instances=args.instances)
        for note in notes:
            log(f"note: {note}")
        report = bench(
            cfg, width=args.width, height=args.height,
            instances=args.instances if args.instances is not None else cfg.model.max_instances,
            runs=args.runs, warmup=args.warmup, seed=args.seed, baseline=not args.no_baseline,
            check=not args.no_check, node=args.node, params=args.params, log=log,
        )
    except ValueError as exc:  # BenchError, ConfigError, WeightsError, PredictorError, SceneError
        print(f"isr bench: error: {exc}", file=sys.stderr)
        return 2
    report["arguments"] = {k: v for k, v in vars(args).items() if k != "command"}
    report["notes"] = notes
    text = json.dumps(_clean(report), indent=2, default=_json_default)
    if json_only:
        print(text)
    else:
        print()
        print(format_report(report))
        if args.json:
            Path(args.json).write_text(text + "\n")
            print(f"\nJSON report -> {args.json}")
    return 0


def _clean(o: Any) -> Any:
    """NaN / inf -> None (strict JSON)."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)
