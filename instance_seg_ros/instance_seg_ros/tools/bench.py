"""``isr bench``: per-stage timings of the pipeline against a naive baseline, on one fixed synthetic frame.

The frame is a simulated tabletop pile (``sim.scene``, fixed seed) at ``--width`` x ``--height`` with
``--instances`` objects, encoded once as the messages a camera driver sends (``rgb8`` color, ``16UC1``
depth in millimetres, CameraInfo). Each run then goes the node's way: decode the messages, run the pipeline,
build the ``InstanceArray``. Per stage (``decode``, ``preprocess``, ``inference``, ``postprocess``, ``lift``,
``cloud_filter``, ``geometry``, ``message``) and end to end it reports the median and p99 over ``--runs``
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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .machine import cpu_model_name

__all__ = [
    "OUTSIDE_NETWORK",
    "STAGES",
    "BenchError",
    "RssSampler",
    "add_arguments",
    "bench",
    "build_config",
    "format_report",
    "make_frame",
    "run",
    "stats",
]

#: Stages timed per run, in pipeline order.
STAGES = ("decode", "preprocess", "inference", "postprocess", "lift", "support_plane", "cloud_filter", "geometry",
          "message")
#: Stages outside the network (the issue's "overhead"): everything but ``inference``.
OUTSIDE_NETWORK = tuple(s for s in STAGES if s != "inference")
FRAME_ID = "camera_color_optical_frame"


class BenchError(ValueError):
    """Bad ``isr bench`` arguments; the message says what to change."""


# ---------------------------------------------------------------------------------------- measuring
def stats(samples: list[float] | np.ndarray) -> dict[str, float]:
    """``{"median", "p99", "mean", "min", "max"}`` of a list of milliseconds (p99: linear interpolation)."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return {"median": float("nan"), "p99": float("nan"), "mean": float("nan"), "min": float("nan"),
                "max": float("nan")}
    return {"median": float(np.median(a)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean()),
            "min": float(a.min()), "max": float(a.max())}


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the process peak so far
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


class RssSampler:
    """Peak resident set size of this process while a ``with`` block runs (a thread samples it every
    ``period`` s). ``peak`` and ``start`` are in bytes."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.start = self.peak = _rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


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
            for s in ("preprocess", "inference", "postprocess", "lift", "support_plane", "cloud_filter", "geometry"):
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


# ---------------------------------------------------------------------------------------- inputs
def make_frame(width: int, height: int, instances: int, seed: int = 0):
    """The fixed synthetic frame: a random pile of ``instances`` objects (at most 40; some may be hidden or fall
    off) seen from a random viewpoint, rendered without noise, with ground truth (amodal masks included).
    Returns a ``sim.scene.Frame``."""
    from ..sim.scene import Scene, SceneConfig, d435_intrinsics

    n = max(1, min(int(instances), 40))
    cfg = SceneConfig(min_objects=n, max_objects=n, supports=("table",))
    with Scene.random(seed, cfg) as scene:
        cam = scene.random_camera(seed=0, intrinsics=d435_intrinsics(width, height))
        return scene.render(cam, amodal=True)


def frame_messages(frame: Any, stamp_ns: int = 1_700_000_000_000_000_000) -> tuple[Any, Any, Any, Any]:
    """``(image rgb8, depth 16UC1 mm, camera_info, header)`` messages of a frame, as a driver publishes them."""
    from ..core.images import encode_depth_16uc1
    from ..ros.conversions import camera_info_msg, header, image_msg

    hdr = header(FRAME_ID, stamp_ns)
    return (image_msg(frame.color, "rgb8", hdr), image_msg(encode_depth_16uc1(frame.depth), "16UC1", hdr),
            camera_info_msg(frame.intrinsics, hdr), hdr)


def _parse_set(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--set expects KEY=VALUE (e.g. model.backbone=resnet50_fpn), got {item!r}.")
        out[key.strip()] = yaml.safe_load(value)
    return out


def build_config(
    params: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    device: str | None = None,
    instances: int | None = None,
) -> tuple[Any, list[str]]:
    """The benchmark's :class:`~instance_seg_ros.core.config.Config` and the notes about what was adjusted.

    ``params`` (a config / ROS params YAML; default: the built-in defaults), then ``overrides`` (dotted keys),
    ``device`` (``model.device``) and ``instances`` (``model.max_instances``). ``bundled`` weights fall back to
    untrained ones of the configured backbone while no bundled model is shipped; untrained weights get score and
    mask thresholds 0 and the support-plane check off unless overridden.
    """
    from ..core.config import Config
    from ..core.model import BUNDLED_WEIGHTS

    notes: list[str] = []
    overrides = dict(overrides or {})
    cfg = Config.from_yaml(params) if params is not None else Config()
    if (cfg.model.weights.lower() == "bundled" and "model.weights" not in overrides
            and not BUNDLED_WEIGHTS.is_file()):
        overrides["model.weights"] = "none"
        notes.append(f"no bundled model is shipped yet: untrained {cfg.model.backbone} weights "
                     "(model.weights=none; the timings hold for the same architecture)")
    if device is not None:
        overrides["model.device"] = device
    if instances is not None:
        overrides["model.max_instances"] = int(instances)
    flat = {**cfg.to_flat(), **overrides}
    if str(flat["model.weights"]).lower() == "none":
        for key in ("model.score_threshold", "model.mask_threshold"):
            if key not in overrides and flat[key] != 0.0:
                flat[key] = 0.0
                notes.append(f"untrained weights: {key}=0 so every detection counts")
        if "filter.support_plane" not in overrides and flat["filter.support_plane"] != "off":
            flat["filter.support_plane"] = "off"
            notes.append("untrained weights: filter.support_plane=off so every detection counts")
    return Config.from_flat(flat), notes


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


# ---------------------------------------------------------------------------------------- node mode
def _ros_params_args(cfg: Any, params: str | Path | None) -> list[str]:
    args = ["--ros-args"]
    if params is not None:
        args += ["--params-file", str(params)]
    for name, value in cfg.to_flat().items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(float(value))
        else:
            text = str(value)
        args += ["-p", f"{name}:={text}"]
    return args


def node_bench(
    cfg: Any,
    params: str | Path | None,
    frame: Any,
    *,
    runs: int,
    warmup: int,
    timeout: float = 120.0,
    frame_timeout: float = 10.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Latency from publishing the color image to receiving ``instances`` from ``instance_seg_node`` running in
    another process with ``cfg`` (and reliable input QoS). A frame not answered within ``frame_timeout`` s counts
    as lost; the measurement stops after 3 lost frames. Returns ``{"latency": stats, ...}`` or
    ``{"skipped": reason}``."""
    import importlib.util
    import subprocess
    import tempfile

    if importlib.util.find_spec("instance_seg_ros.ros.node") is None:
        return {"skipped": "instance_seg_ros.ros.node is not available in this installation"}
    try:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        from instance_seg_msgs.msg import InstanceArray

        from ..ros.conversions import stamp_from_ns, stamp_to_ns
    except ImportError as exc:
        return {"skipped": f"ROS 2 Python packages are not importable ({exc}); source the ROS setup first"}

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    ns = f"/isr_bench_{os.getpid()}"
    # reliable input QoS: large best-effort samples need Fast DDS's LARGE_DATA transport, which a localhost-only
    # discovery range disables; with a reliable publisher and subscriber every frame arrives either way
    cmd = [sys.executable, "-m", "instance_seg_ros.ros.node", *_ros_params_args(cfg, params), "-r", f"__ns:={ns}",
           "-p", "managed:=false", "-p", "qos.input_reliability:=reliable"]
    image, depth, info, _ = frame_messages(frame)
    log_file = tempfile.NamedTemporaryFile(prefix="isr_bench_node_", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("isr_bench_client", namespace=ns, context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    received: dict[int, float] = {}
    try:
        rel = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        pubs = {
            "image": node.create_publisher(Image, "image", rel),
            "depth": node.create_publisher(Image, "depth", rel),
            "camera_info": node.create_publisher(CameraInfo, "camera_info", rel),
        }
        node.create_subscription(
            InstanceArray, "instances", lambda m: received.setdefault(stamp_to_ns(m.header.stamp), time.perf_counter()),
            rel)

        def spin_until(cond: Callable[[], bool], limit: float) -> bool:
            end = time.monotonic() + limit
            while time.monotonic() < end:
                if cond():
                    return True
                if proc.poll() is not None:
                    return False
                executor.spin_once(timeout_sec=0.01)
            return cond()

        t_start = time.monotonic()
        ready = spin_until(lambda: all(p.get_subscription_count() > 0 for p in pubs.values())
                           and node.count_publishers(f"{ns}/instances") > 0, timeout)
        if not ready:
            log_file.flush()
            tail = Path(log_file.name).read_text(errors="replace")[-2000:]
            return {"skipped": f"instance_seg_node did not come up within {timeout:.0f} s "
                               f"(exit code {proc.poll()}); its log:\n{tail}"}
        startup_s = time.monotonic() - t_start
        latencies: list[float] = []
        lost = 0
        stamp = 1_800_000_000_000_000_000
        n_total = warmup + runs
        i = 0
        while len(latencies) < runs and i < n_total + runs and lost < 3:  # lost frames are retried, within bounds
            stamp += 33_000_000
            hdr_stamp = stamp_from_ns(stamp)
            for msg in (info, depth, image):
                msg.header.stamp = hdr_stamp
            pubs["camera_info"].publish(info)
            pubs["depth"].publish(depth)
            t0 = time.perf_counter()
            pubs["image"].publish(image)
            ok = spin_until(lambda s=stamp: s in received, frame_timeout)
            if ok and i >= warmup:
                latencies.append((received[stamp] - t0) * 1e3)
            elif not ok:
                lost += 1
                if proc.poll() is not None:
                    break
            i += 1
        if not latencies:
            log_file.flush()
            tail = Path(log_file.name).read_text(errors="replace")[-2000:]
            return {"skipped": f"instance_seg_node answered none of {i} frames ({lost} lost); its log:\n{tail}"}
        return {"latency": stats(latencies), "frames": len(latencies), "lost": lost, "startup_s": startup_s,
                "command": " ".join(cmd)}
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
        if proc.poll() is None:
            import signal

            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_file.close()
        os.unlink(log_file.name)


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
        cfg: the pipeline's Config (see :func:`build_config`).
        width, height: frame size. instances: objects in the scene (the untrained net's detections follow
            ``model.max_instances``). runs, warmup: timed and untimed runs per pipeline. seed: scene seed.
        baseline: also time the naive baseline. check: compare the fast paths with the reference path.
        node: also time ``instance_seg_node`` in another process. params: the params file the node gets.

    Raises:
        BenchError: bad sizes or counts. WeightsError / ConfigError: the model cannot be loaded.
    """
    import torch

    from ..core.images import color_from_msg, depth_from_msg, intrinsics_from_camera_info
    from ..core.pipeline import Segmenter

    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise BenchError(f"--width/--height must be within 16..4096, got {width}x{height}.")
    if runs < 1 or warmup < 0:
        raise BenchError(f"--runs must be >= 1 and --warmup >= 0, got {runs} and {warmup}.")
    if instances < 1:
        raise BenchError(f"--instances must be >= 1, got {instances}.")
    try:
        from ..ros.conversions import instance_array_msg
    except ImportError:  # no ROS: the message stage is skipped
        instance_array_msg = None
        log("ROS 2 messages are not importable: the message stage is not measured.")

    t = time.perf_counter()
    frame = make_frame(width, height, instances, seed)
    image, depth_msg, info, hdr = frame_messages(frame)
    log(f"frame: {width}x{height}, {len(frame.ground_truth)} visible objects (rendered in "
        f"{time.perf_counter() - t:.1f} s)")

    def decode():
        return (color_from_msg(image), depth_from_msg(depth_msg, scale_16uc1=cfg.depth.scale_16uc1),
                intrinsics_from_camera_info(info))

    seg = Segmenter(cfg, log=lambda m: None)
    torch.manual_seed(seed)  # untrained weights: the same model (and so the same detections) on every run
    seg.load()
    device = seg.predictor.device
    report: dict[str, Any] = {
        "config": cfg.to_flat(),
        "frame": {"width": width, "height": height, "instances": instances, "seed": seed,
                  "visible_objects": len(frame.ground_truth)},
        "model": {"backbone": seg.meta.backbone, "weights": cfg.model.weights, "input_mode": seg.meta.input_mode,
                  "network_input": list(seg.predictor.input_size(height, width))},
        "device": str(device),
        "precision": seg.predictor.precision,
        "runs": runs,
        "warmup": warmup,
        "machine": _machine(),
    }
    log(f"ours: {seg.meta.backbone} on {device} ({seg.predictor.precision}, {torch.get_num_threads()} threads), "
        f"{runs} runs after {warmup} warm-up")
    ours = _time_runs(seg.process, decode, (lambda r: instance_array_msg(r, hdr)) if instance_array_msg else None,
                      runs, warmup, device)
    ours_result = ours.pop("_result")
    report["ours"] = ours
    if instance_array_msg is not None:
        # message building on realistic content: the scene's ground-truth instances (true masks, their clouds)
        # rather than the untrained net's box-shaped masks
        gt = frame.to_frame_result()
        samples = []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            instance_array_msg(gt, hdr)
            if i >= warmup:
                samples.append((time.perf_counter() - t0) * 1e3)
        report["message_ground_truth"] = {"time": stats(samples), "instances": len(gt.instances),
                                          "points": int(sum(i.num_points for i in gt.instances))}

    if check:
        ref = Segmenter(cfg, log=lambda m: None, reference=True)
        ref.load()
        ref.predictor.model.load_state_dict(seg.predictor.model.state_dict())
        ref_result = ref.process(*decode())
        report["agreement"] = _agreement(ours_result, ref_result)
        ref.release()
        del ref

    if baseline:
        from .baseline import NaiveBaseline, naive_instance_array_msg

        base = NaiveBaseline(seg.predictor.model, seg.meta, cfg, device=device)
        log(f"baseline: the same network at torchvision's {base.min_size}/{base.max_size} px transform, "
            f"{runs} runs after {warmup} warm-up")
        b = _time_runs(base.process, decode, (lambda r: naive_instance_array_msg(r, hdr)) if instance_array_msg
                       else None, runs, warmup, device)
        b.pop("_result")
        report["baseline"] = b
        ratio = {s: _ratio(ours["stages"][s]["median"], b["stages"][s]["median"]) for s in STAGES}
        ratio["end_to_end"] = _ratio(ours["end_to_end"]["median"], b["end_to_end"]["median"])
        ratio["outside_network"] = _ratio(ours["outside_network_ms"], b["outside_network_ms"])
        report["ratio"] = ratio
        del base
    else:
        report["baseline"] = None
        report["ratio"] = None

    if node:
        import tempfile

        from ..core.model import save_checkpoint

        log("node: starting instance_seg_node in another process ...")
        with tempfile.TemporaryDirectory(prefix="isr_bench_") as tmp:
            node_cfg = cfg
            if cfg.model.weights.lower() == "none":  # the node gets these very weights, not another random draw
                path = save_checkpoint(Path(tmp) / "untrained.pt", seg.predictor.model, seg.meta)
                node_cfg = cfg.replace(**{"model.weights": str(path)})
            seg.release()
            report["node"] = node_bench(node_cfg, params, frame, runs=runs, warmup=warmup, log=log)
        lat = report["node"].get("latency")
        if lat is not None:
            report["node"]["overhead_vs_in_process_ms"] = lat["median"] - ours["end_to_end"]["median"]
    else:
        seg.release()
        report["node"] = None
    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def _ratio(a: float, b: float) -> float | None:
    if not (np.isfinite(a) and np.isfinite(b)) or b <= 0:
        return None
    return float(a / b)


# ---------------------------------------------------------------------------------------- output
def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    return f"{v:.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of a :func:`bench` report."""
    o, b, r = report["ours"], report.get("baseline"), report.get("ratio")
    m = report["machine"]
    lines = [
        f"isr bench: {report['model']['backbone']} ({report['model']['weights']} weights, network input "
        f"{report['model']['network_input'][0]}/{report['model']['network_input'][1]} px) on {report['device']} "
        f"{report['precision']}, {m['torch_threads']} torch threads, {m['cpu']}"
        + (f", load average {m['load_average'][0]}" if "load_average" in m else ""),
        f"frame {report['frame']['width']}x{report['frame']['height']}: {o['instances']} instances, "
        f"{o['points']} points; {report['runs']} runs after {report['warmup']} warm-up; times in ms",
    ]
    loads = [x for k in ("load_average", "load_average_end") for x in m.get(k, [])[:1]]
    if loads and m.get("cores") and max(loads) > m["cores"] - 0.5:
        lines.append(f"warning: the machine was busy (load average up to {max(loads):.1f} on {m['cores']} cores): "
                     "other processes took CPU time, so the timings are pessimistic and noisy")
    lines += [
        "",
        f"{'stage':<14}{'median':>9}{'p99':>9}" + (f"{'baseline':>11}{'p99':>9}{'ours/base':>11}" if b else ""),
    ]
    for s in (*STAGES, "end_to_end"):
        so = o["end_to_end"] if s == "end_to_end" else o["stages"][s]
        row = f"{s:<14}{_fmt(so['median'], 2):>9}{_fmt(so['p99'], 2):>9}"
        if b:
            sb = b["end_to_end"] if s == "end_to_end" else b["stages"][s]
            row += f"{_fmt(sb['median'], 2):>11}{_fmt(sb['p99'], 2):>9}{_fmt(r.get(s), 3):>11}"
        lines.append(row)
    lines.append("")
    row = f"{'fps':<14}{_fmt(o['fps'], 2):>9}{'':>9}"
    if b:
        row += f"{_fmt(b['fps'], 2):>11}{'':>9}{_fmt(o['fps'] / b['fps'] if b['fps'] else None, 2):>10}x"
    lines.append(row)
    row = f"{'outside net':<14}{_fmt(o['outside_network_ms'], 2):>9}{_fmt(100 * o['outside_network_fraction']):>8}%"
    if b:
        row += f"{_fmt(b['outside_network_ms'], 2):>11}{_fmt(100 * b['outside_network_fraction']):>8}%"
        row += f"{_fmt(r.get('outside_network'), 3):>11}"
    lines.append(row)
    row = f"{'peak RSS MB':<14}{_fmt(o['peak_rss_mb'], 0):>9}{'':>9}"
    if b:
        row += f"{_fmt(b['peak_rss_mb'], 0):>11}"
    lines.append(row + "   (process; growth during runs: "
                 f"ours {_fmt(o['rss_growth_mb'], 0)}" + (f", baseline {_fmt(b['rss_growth_mb'], 0)})" if b else ")"))
    if o.get("cuda_peak_mb") is not None:
        row = f"{'CUDA peak MB':<14}{_fmt(o['cuda_peak_mb'], 0):>9}{'':>9}"
        if b:
            row += f"{_fmt(b['cuda_peak_mb'], 0):>11}"
        lines.append(row)
    g = report.get("message_ground_truth")
    if g:
        lines.append(f"message of the scene's ground truth ({g['instances']} instances, {g['points']} points): "
                     f"median {_fmt(g['time']['median'], 2)} ms, p99 {_fmt(g['time']['p99'], 2)} ms")
    a = report.get("agreement")
    if a:
        lines.append(
            f"fast vs reference path: {a['instances']} vs {a['reference_instances']} instances, "
            f"{a['matched_iou_0.99']} matched at mask IoU >= 0.99, min IoU {a['min_mask_iou']:.4f} "
            f"(amodal {a['min_amodal_iou']:.4f}), max centroid difference {a['max_centroid_mm']:.3f} mm"
        )
    n = report.get("node")
    if n:
        if "skipped" in n:
            lines.append(f"node: skipped: {n['skipped']}")
        else:
            lat = n["latency"]
            lines.append(
                f"node (publish color -> receive instances, other process): median {_fmt(lat['median'], 2)} ms, "
                f"p99 {_fmt(lat['p99'], 2)} ms over {n['frames']} frames ({n['lost']} lost); "
                f"node minus in-process end to end: {_fmt(n.get('overhead_vs_in_process_ms'), 2)} ms"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", help="config or ROS params YAML (e.g. config/cpu_fast.yaml); default: built-in "
                                         "defaults with the bundled model (untrained weights when none is shipped)")
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
        overrides = _parse_set(args.set)
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
