"""One check of the project's CUDA code paths (issue 16), or, on a machine without CUDA, a CPU dry run of it.

    scripts/device_check.sh OUTDIR [--quick] [--cpu] [--only STEP,...] [--timeout STEP=SECONDS] [--timeout-scale F]

(the shell script picks the Python environment, then runs this file). Steps, in this order, each in a process of its
own with a timeout of its own, so a step that fails, crashes or hangs is reported and the others still run:

  environment         Python, torch, the GPU (name, memory, driver), which optional modules import; decides the mode
  cuda_tests          the tests that need CUDA: ``-k cuda`` in test_fast_paths.py and test_lifting.py (4 tests)
  bench_<model>_<p>   ``isr bench`` on CUDA with the naive baseline in the same run, <p> in fp32 / fp16 / bf16, for
                      <model> ``default`` (the built-in defaults = config/default.yaml: bundled model, 640x480) and
                      ``r50x30`` (an untrained ResNet-50 FPN model at 30 instances)
  oom_recovery        a real CUDA out-of-memory error: most of the GPU's memory is taken, a frame is processed
                      (Segmenter's retry at a reduced size, then ``FrameSkipped``), the memory is given back and the
                      next frame must be processed; then once more with headroom for the reduced size only
  release             ``torch.cuda.memory_allocated`` back at its baseline after ``Segmenter.release()`` and after the
                      node's lifecycle deactivate (and cleanup); reload / reactivate must work
  train_smoke         ``isr synth`` a tiny dataset, ``isr train --amp`` a few iterations on it: finite losses and a
                      checkpoint that loads

CPU dry run (no CUDA, or ``--cpu``): the CUDA tests are collected and reported skipped, ``isr bench`` runs once
(default config, fp32, one timed run), the OOM step is skipped with its reason, the release step checks that release
and reload work (no GPU memory to count) and the training smoke runs a handful of iterations. ``--quick`` shrinks
every step (160x120 frames, 3 training iterations): the test suite runs it.

Outputs, in OUTDIR (three files, so the device tool brings all of them back):

  device_check.json   ``steps``: per step name ``status`` (pass / fail / skipped), ``seconds``, ``timeout_s``,
                      ``figures``, ``error``, ``reason`` (why skipped), ``warnings``; plus the mode and machine
  device_check.md     the same as a report: the step table, the bench table, the errors
  device_check.log    every step's own output

Scratch files (datasets, checkpoints, bench JSON) go to ``--work`` (default: a temporary folder, removed at the end).
Exit status: 1 when a step failed, else 0 (a CPU dry run where nothing failed exits 0).

Test hook: ``ISR_DEVICE_CHECK_FAULT=STEP=raise|crash|hang[,STEP=...]`` makes a step raise, exit abruptly or hang.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20

# ---------------------------------------------------------------------------------------------------- the steps
PRECISIONS = ("fp32", "fp16", "bf16")
#: ``isr bench`` models: extra arguments and the instance count (None: the config's cap)
BENCH_MODELS: dict[str, tuple[list[str], int | None]] = {
    "default": ([], None),
    "r50x30": (["--set", "model.weights=none", "--set", "model.backbone=resnet50_fpn"], 30),
}
CUDA_TEST_FILES = ("instance_seg_ros/test/test_fast_paths.py", "instance_seg_ros/test/test_lifting.py")
#: left over after release that still counts as "back at the baseline"
RELEASE_TOLERANCE = 2 * MiB


@dataclass(frozen=True)
class Step:
    """One step: its timeouts (seconds) on CUDA and in the CPU dry run, and the least time it is left when earlier
    steps ran long (``floor``). ``cpu``: what the CPU dry run does with it: ``run``, or a reason to skip it."""

    name: str
    timeout: float
    cpu_timeout: float
    floor: float
    cpu: str = "run"


def all_steps() -> list[Step]:
    steps = [Step("environment", 60, 60, 15), Step("cuda_tests", 100, 120, 30)]
    fp32_only = "CPU dry run: isr bench runs the default config in fp32 only"
    for model in BENCH_MODELS:
        for p in PRECISIONS:
            cpu = "run" if (model, p) == ("default", "fp32") else fp32_only
            steps.append(Step(f"bench_{model}_{p}", 50 if model == "default" else 55, 180, 20, cpu))
    steps += [
        Step("oom_recovery", 60, 10, 20,
             "no CUDA device: a real out-of-memory error cannot be provoked on the CPU (the retry / skip logic itself "
             "is covered with an injected torch.cuda.OutOfMemoryError by test_faults.py::"
             "test_cuda_oom_retries_once_at_reduced_size_then_skips)"),
        Step("release", 60, 150, 20),
        Step("train_smoke", 120, 240, 45),
    ]
    return steps


#: the whole check stays within this (seconds); a step's timeout shrinks so the later ones keep their floor
BUDGET = {"cuda": 450.0, "cpu": 720.0}


class Skip(Exception):
    """The step does not apply here; ``figures`` are still reported."""

    def __init__(self, reason: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.figures = figures or {}


class Failed(Exception):
    """A check of the step did not hold; ``figures`` are still reported."""

    def __init__(self, message: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.figures = figures or {}


@dataclass
class Ctx:
    """What a step runs with: ``device`` is ``cuda`` or ``cpu``; ``work`` its scratch folder."""

    device: str
    quick: bool
    work: Path
    timeout: float
    warnings: list[str] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


# ---------------------------------------------------------------------------------------------------- helpers
def _frame(width: int, height: int) -> tuple[Any, Any, Any]:
    """A plain RGB-D frame without the simulator: a table 1 m away with six boxes on it."""
    import numpy as np

    from instance_seg_ros.core.types import Intrinsics

    rng = np.random.default_rng(0)
    color = np.full((height, width, 3), 170, np.uint8)
    depth = np.full((height, width), 1.0, np.float32)
    for k in range(6):
        bw, bh = width // 8, height // 5
        x, y = int(rng.integers(0, width - bw)), int(rng.integers(0, height - bh))
        color[y:y + bh, x:x + bw] = rng.integers(0, 256, 3)
        depth[y:y + bh, x:x + bw] = 0.9 - 0.02 * k
    f = 0.95 * width
    return color, depth, Intrinsics(fx=f, fy=f, cx=(width - 1) / 2, cy=(height - 1) / 2, width=width, height=height)


def _frame_size(ctx: Ctx) -> tuple[int, int]:
    return (160, 120) if ctx.quick else (640, 480)


def _config(ctx: Ctx) -> Any:
    """The default config (bundled model) on ``ctx.device``, every detection kept up to the cap, so the masks,
    lifting and geometry stages all have work."""
    from instance_seg_ros.tools.cli_config import build_config

    cfg, _ = build_config(None, {"model.score_threshold": 0.0}, device=ctx.device,
                          instances=5 if ctx.quick else 30)
    return cfg


def _allocated() -> int:
    """Allocated CUDA memory in bytes, after garbage collection, with cuBLAS's cached workspaces (torch's own, kept
    per handle) given back so they do not count."""
    import gc

    import torch

    gc.collect()
    torch.cuda.synchronize()
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    return torch.cuda.memory_allocated()


def _mb(x: float) -> float:
    return round(x / MiB, 2)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _json(o: Any) -> str:
    """Strict JSON: NaN / inf become null, anything else unknown its str()."""
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return json.dumps(clean(o), indent=2, default=str, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------------------------- environment
def step_environment(ctx: Ctx) -> dict[str, Any]:
    import importlib.util

    import torch

    fig: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "cpu_cores": os.cpu_count(),
    }
    try:
        import torchvision

        fig["torchvision"] = torchvision.__version__
    except ImportError as exc:
        fig["torchvision"] = f"missing ({exc})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        fig.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", gpus=torch.cuda.device_count(),
                   bf16_supported=torch.cuda.is_bf16_supported())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.used,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
            fig["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            fig["nvidia_smi"] = f"unavailable ({exc})"
    needed = {"instance_seg_ros": "everything", "open3d": "the pipeline (oriented boxes)",
              "pybullet": "isr bench's frame and isr synth", "pycocotools": "isr train",
              "rclpy": "isr bench's messages and the node", "instance_seg_msgs": "isr bench's messages and the node"}
    fig["modules"] = {m: importlib.util.find_spec(m) is not None for m in needed}
    missing = [m for m, ok in fig["modules"].items() if not ok]
    for m in missing:
        ctx.warnings.append(f"{m} is not importable with {sys.executable}: {needed[m]} will fail")
    if "instance_seg_ros" in missing:
        raise Failed("the instance_seg_ros package is not importable: run `make setup` and `source env.sh`", fig)
    return fig


# ---------------------------------------------------------------------------------------------------- CUDA tests
def step_cuda_tests(ctx: Ctx) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    junit = ctx.work / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", *CUDA_TEST_FILES, "-k", "cuda", "-q", f"--junitxml={junit}"]
    print("$", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=ROOT, timeout=max(10.0, ctx.timeout - 10)).returncode
    if not junit.is_file():
        raise Failed(f"pytest wrote no result (exit status {rc}); see device_check.log")
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, text = "passed", ""
        for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            el = case.find(tag)
            if el is not None:
                outcome, text = name, " ".join((el.get("message") or el.text or "").split())[:300]
                break
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome, "message": text})
    fig: dict[str, Any] = {"collected": len(cases), "exit_status": rc, "tests": cases}
    for o in ("passed", "failed", "error", "skipped"):
        fig[o] = sum(c["outcome"] == o for c in cases)
    bad = [c for c in cases if c["outcome"] in ("failed", "error")]
    if not cases:
        raise Failed(f"no test matched `-k cuda` in {', '.join(CUDA_TEST_FILES)}: the selection is out of date", fig)
    if bad:
        raise Failed("; ".join(f"{c['test']}: {c['outcome']}: {c['message']}" for c in bad), fig)
    if ctx.cuda:
        if fig["skipped"]:
            raise Failed(f"{fig['skipped']} CUDA test(s) skipped on a CUDA machine: "
                         + "; ".join(c["message"] for c in cases if c["outcome"] == "skipped"), fig)
        if rc != 0:
            raise Failed(f"pytest exit status {rc}", fig)
        return fig
    raise Skip(f"no CUDA: the {fig['skipped']} CUDA tests were collected and skip here", fig)


# ---------------------------------------------------------------------------------------------------- bench
def step_bench(ctx: Ctx, model: str, precision: str) -> dict[str, Any]:
    from instance_seg_ros.tools.cli import main as isr

    extra, instances = BENCH_MODELS[model]
    path = ctx.work / f"bench_{model}_{precision}.json"
    argv = ["bench", *extra, "--device", ctx.device, "--set", f"model.precision={precision}", "--json", str(path)]
    runs, warmup = ("10", "3") if ctx.cuda and not ctx.quick else ("2", "1") if ctx.cuda else ("1", "0")
    argv += ["--runs", runs, "--warmup", warmup]
    if ctx.quick:
        argv += ["--width", "160", "--height", "120", "--instances", "3"]
    elif instances is not None:
        argv += ["--instances", str(instances)]
    print("$ isr", " ".join(argv), flush=True)
    rc = isr(argv)
    if rc != 0 or not path.is_file():
        raise Failed(f"isr bench exited with status {rc} (its error is in device_check.log)")
    r = json.loads(path.read_text())
    ours, base, ratio = r["ours"], r.get("baseline"), r.get("ratio") or {}
    fig: dict[str, Any] = {
        "device": r["device"], "precision": r["precision"], "backbone": r["model"]["backbone"],
        "weights": r["model"]["weights"], "network_input": r["model"]["network_input"],
        "frame": f"{r['frame']['width']}x{r['frame']['height']}", "instances": ours["instances"],
        "runs": r["runs"], "e2e_median_ms": ours["end_to_end"]["median"], "e2e_p99_ms": ours["end_to_end"]["p99"],
        "fps": ours["fps"], "inference_median_ms": ours["stages"]["inference"]["median"],
        # outside the network: issue 16's share; proposals: on CUDA the wait for the geometric proposals, which run
        # in a worker thread beside the network (Segmenter.overlap_proposals)
        "outside_network_ms": ours.get("outside_network_ms"), "outside_network_share": ours.get(
            "outside_network_fraction"), "proposals_median_ms": ours["stages"].get("proposals", {}).get("median"),
        "cuda_peak_mb": ours["cuda_peak_mb"], "peak_rss_mb": ours["peak_rss_mb"],
        "baseline_e2e_median_ms": base["end_to_end"]["median"] if base else None,
        "baseline_cuda_peak_mb": base["cuda_peak_mb"] if base else None,
        "ratio_e2e": ratio.get("end_to_end"), "agreement": r.get("agreement"), "gpu": r["machine"].get("gpu"),
    }
    problems = []
    if not str(r["device"]).startswith(ctx.device):
        problems.append(f"ran on {r['device']}, not {ctx.device}")
    if ctx.cuda and r["precision"] != precision:
        problems.append(f"precision {r['precision']}, not {precision}")
    if ours["instances"] < 1:
        problems.append("no instances")
    if not (_finite(fig["e2e_median_ms"]) and fig["e2e_median_ms"] > 0):
        problems.append(f"end-to-end median {fig['e2e_median_ms']}")
    if ctx.cuda and not fig["cuda_peak_mb"]:
        problems.append("no GPU peak memory measured")
    if base is None or fig["ratio_e2e"] is None:
        problems.append("the naive baseline did not run")
    if problems:
        raise Failed("; ".join(problems), fig)
    a = r.get("agreement") or {}
    if a and a.get("matched_iou_0.99", 0) < a.get("instances", 0):
        ctx.warnings.append(f"fast vs reference path: {a['matched_iou_0.99']} of {a['instances']} instances match at "
                            f"mask IoU >= 0.99 (min IoU {a['min_mask_iou']:.3f}, {a['reference_instances']} in the "
                            "reference)")
    return fig


# ---------------------------------------------------------------------------------------------------- OOM
def _take_gpu_memory(leave: int) -> list[Any]:
    """Allocate (plain cudaMalloc through torch's allocator, 1 GiB blocks) until about ``leave`` bytes are free."""
    import torch

    torch.cuda.empty_cache()
    blocks = []
    free, _ = torch.cuda.mem_get_info()
    todo = free - leave
    while todo >= 2 * MiB:
        n = min(todo, 2**30)
        try:
            blocks.append(torch.empty(n, dtype=torch.uint8, device="cuda"))
        except torch.cuda.OutOfMemoryError:
            break
        todo = torch.cuda.mem_get_info()[0] - leave
    return blocks


def _process_under_pressure(seg: Any, frame: tuple, leave: int) -> dict[str, Any]:
    """Process ``frame`` with about ``leave`` bytes of GPU memory free; the outcome and the counters' changes."""
    import torch

    from instance_seg_ros.core.pipeline import FrameSkipped

    r0, s0 = seg.oom_retries, seg.oom_skipped
    blocks = _take_gpu_memory(leave)
    out: dict[str, Any] = {"free_mb": _mb(torch.cuda.mem_get_info()[0])}
    try:
        res = seg.process(*frame)
        out["outcome"] = "processed after a retry" if seg.oom_retries > r0 else "processed"
        out["instances"] = len(res.instances)
    except FrameSkipped as exc:
        out["outcome"], out["reason"], out["message"] = "skipped", exc.reason, str(exc)[:300]
    except Exception as exc:  # an allocation error the pipeline does not handle (cuDNN, cuBLAS ...)
        out["outcome"], out["message"] = f"raised {type(exc).__name__}", str(exc).splitlines()[0][:300]
    finally:
        del blocks
        torch.cuda.empty_cache()
    out["oom_retries"], out["oom_skipped"] = seg.oom_retries - r0, seg.oom_skipped - s0
    return out


def _frame_memory(seg: Any, frame: tuple, size: tuple[int, int] | None = None) -> int:
    """Peak GPU memory (bytes reserved by torch's allocator) one frame needs beyond the loaded model, at the network
    input ``size`` (min side, max side) or the predictor's own."""
    import torch

    pred = seg.predictor
    saved = (pred.min_size, pred.max_size)
    if size is not None:
        pred.min_size, pred.max_size = size
    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_reserved()
        seg.process(*frame)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_reserved() - base
    finally:
        pred.min_size, pred.max_size = saved


def step_oom_recovery(ctx: Ctx) -> dict[str, Any]:
    if not ctx.cuda:
        raise Skip("no CUDA device")
    from instance_seg_ros.tools.cli_config import seeded_segmenter

    seg = seeded_segmenter(_config(ctx), 0, log=print)
    frame = _frame(*_frame_size(ctx))
    first = seg.process(*frame)
    h, w = frame[1].shape
    min_s, max_s = seg.predictor.input_size(h, w)
    small = (max(32, int(min_s * seg.OOM_RETRY_SCALE)), max(32, int(max_s * seg.OOM_RETRY_SCALE)))
    full_need, small_need = _frame_memory(seg, frame), _frame_memory(seg, frame, small)
    fig: dict[str, Any] = {"frame": f"{w}x{h}", "instances": len(first.instances),
                           "network_input": [min_s, max_s], "retry_input": list(small),
                           "frame_memory_mb": _mb(full_need), "retry_frame_memory_mb": _mb(small_need)}
    # 1. (almost) no memory left: the frame and its retry run out of memory -> FrameSkipped; then the next frame
    fig["no_headroom"] = starved = _process_under_pressure(seg, frame, 4 * MiB)
    after = seg.process(*frame)
    fig["next_frame_instances"] = len(after.instances)
    # 2. room for the reduced size only: the retry should recover the frame (informational: the allocator's rounding
    # and what does not scale with the network input can tip it either way)
    fig["retry_headroom"] = _process_under_pressure(seg, frame, (full_need + small_need) // 2)
    fig["last_frame_instances"] = len(seg.process(*frame).instances)
    problems = []
    if starved["outcome"] != "skipped" or starved.get("reason") != "out_of_memory":
        problems.append(f"with no memory left the frame was {starved['outcome']} ({starved.get('message', '')}), "
                        "expected FrameSkipped('out_of_memory')")
    if starved["oom_retries"] != 1 or starved["oom_skipped"] != 1:
        problems.append(f"counters moved by oom_retries +{starved['oom_retries']}, oom_skipped "
                        f"+{starved['oom_skipped']}, expected +1 each")
    if fig["next_frame_instances"] != len(first.instances):
        problems.append(f"the next frame gave {fig['next_frame_instances']} instances, the first "
                        f"{len(first.instances)}")
    if fig["retry_headroom"]["outcome"].startswith("raised"):
        problems.append(f"with headroom for the reduced size: {fig['retry_headroom']['outcome']}: "
                        f"{fig['retry_headroom'].get('message', '')}")
    elif fig["retry_headroom"]["outcome"] != "processed after a retry":
        ctx.warnings.append(f"with headroom for the reduced size only the frame was {fig['retry_headroom']['outcome']}")
    if problems:
        raise Failed("; ".join(problems), fig)
    return fig


# ---------------------------------------------------------------------------------------------------- release
def _segmenter_release(ctx: Ctx, cfg: Any, frame: tuple) -> dict[str, Any]:
    """Load, process, release, reload, process, release: memory at each point (CUDA) or that it works (CPU)."""
    from instance_seg_ros.tools.cli_config import seeded_segmenter

    mem = _allocated if ctx.cuda else (lambda: 0)
    base = mem()
    seg = seeded_segmenter(cfg, 0, log=print)
    n = len(seg.process(*frame).instances)
    loaded = mem()
    seg.release()
    released = mem()
    if seg.loaded:
        raise Failed("Segmenter.loaded is still true after release()")
    seg.load()
    n2 = len(seg.process(*frame).instances)
    reloaded = mem()
    seg.release()
    released2 = mem()
    fig: dict[str, Any] = {"instances": n, "instances_after_reload": n2}
    if ctx.cuda:
        import torch

        fig.update(baseline_mb=_mb(base), loaded_mb=_mb(loaded), released_mb=_mb(released),
                   reloaded_mb=_mb(reloaded), released_again_mb=_mb(released2),
                   reserved_after_release_mb=_mb(torch.cuda.memory_reserved()))
        for key, value in (("release", released), ("second release", released2)):
            if value - base > RELEASE_TOLERANCE:
                raise Failed(f"Segmenter: {_mb(value - base)} MB still allocated after {key} (baseline "
                             f"{_mb(base)} MB, loaded {_mb(loaded)} MB)", fig)
        if loaded - base <= RELEASE_TOLERANCE:
            raise Failed(f"Segmenter: the loaded model holds only {_mb(loaded - base)} MB of GPU memory: did it "
                         "load on the GPU?", fig)
    if n2 != n:
        raise Failed(f"{n} instances before release, {n2} after reload", fig)
    return fig


def _node_lifecycle(ctx: Ctx, cfg: Any) -> dict[str, Any]:
    """A managed instance_seg_node in this process: configure, activate, deactivate, activate, cleanup."""
    try:
        import rclpy
        from rclpy.context import Context
        from rclpy.parameter import Parameter

        from instance_seg_ros.ros.node import InstanceSegNode
    except ImportError as exc:
        return {"status": "skipped", "reason": f"the node cannot be imported here: {exc}"}
    mem = _allocated if ctx.cuda else (lambda: 0)
    context = Context()
    rclpy.init(context=context)
    node = None
    fig: dict[str, Any] = {"status": "pass"}
    try:
        base = mem()
        overrides = [Parameter(k, value=v) for k, v in cfg.to_flat().items()]
        node = InstanceSegNode(context=context, parameter_overrides=overrides, managed=True)
        for name in ("configure", "activate", "deactivate", "activate", "deactivate", "cleanup"):
            ret = getattr(node, f"trigger_{name}")()
            label = name if name not in fig else f"{name}_again"
            fig[label] = ret.name
            if ret.name != "SUCCESS":
                raise Failed(f"node: {name} returned {ret.name} {node.configure_error}".strip(), fig)
            if ctx.cuda:
                fig[f"{label}_mb"] = _mb(mem())
        fig["baseline_mb"] = _mb(base)
        if ctx.cuda:
            for label in ("deactivate", "deactivate_again", "cleanup"):
                if (fig[f"{label}_mb"] - fig["baseline_mb"]) * MiB > RELEASE_TOLERANCE:
                    raise Failed(f"node: {fig[f'{label}_mb'] - fig['baseline_mb']:.1f} MB still allocated after "
                                 f"{label.replace('_again', ' (second time)')}", fig)
            if (fig["configure_mb"] - fig["baseline_mb"]) * MiB <= RELEASE_TOLERANCE:
                raise Failed("node: configure allocated no GPU memory: did the model load on the GPU?", fig)
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=context)
    return fig


def step_release(ctx: Ctx) -> dict[str, Any]:
    cfg = _config(ctx)
    frame = _frame(*_frame_size(ctx))
    fig: dict[str, Any] = {"segmenter": _segmenter_release(ctx, cfg, frame)}
    try:
        fig["node"] = _node_lifecycle(ctx, cfg)
    except Failed as exc:
        fig["node"] = {**exc.figures, "status": "fail"}
        raise Failed(str(exc), fig) from exc
    if fig["node"]["status"] == "skipped":
        ctx.warnings.append(f"node lifecycle not checked: {fig['node']['reason']}")
    return fig


# ---------------------------------------------------------------------------------------------------- training
def step_train_smoke(ctx: Ctx) -> dict[str, Any]:
    import torch

    from instance_seg_ros.core.model import load_checkpoint
    from instance_seg_ros.tools.cli import main as isr
    from instance_seg_ros.tools.train import get_args_parser
    from instance_seg_ros.tools.train import main as train

    data, run = ctx.work / "synth", ctx.work / "train"
    if ctx.quick:
        scenes, size, iters, batch, net, val = 2, ("160", "120"), 3, 2, ("96", "128"), "0"
    elif ctx.cuda:
        scenes, size, iters, batch, net, val = 12, ("320", "240"), 40, 4, ("240", "320"), "0.25"
    else:
        scenes, size, iters, batch, net, val = 4, ("320", "240"), 5, 2, ("120", "160"), "0"
    workers = max(1, min(8, (os.cpu_count() or 2) // 2))
    synth = ["synth", "--out", str(data), "--scenes", str(scenes), "--width", size[0], "--height", size[1],
             "--min-objects", "2", "--max-objects", "5", "--workers", str(workers if ctx.cuda else 1), "--quiet"]
    print("$ isr", " ".join(synth), flush=True)
    t = time.perf_counter()
    if isr(synth) != 0:
        raise Failed("isr synth failed (its error is in device_check.log)")
    synth_s = time.perf_counter() - t
    argv = ["--data", str(data), "--out", str(run), "--device", ctx.device, "--amp", "--iters", str(iters),
            "--batch-size", str(batch), "--min-size", net[0], "--max-size", net[1], "--val-fraction", val,
            "--eval-every", "0", "--checkpoint-every", str(max(1, iters // 2)), "--log-every", "1",
            "--workers", str(min(4, workers) if ctx.cuda else 0), "--seed", "0", "--quiet"]
    if not ctx.cuda:
        argv += ["--threads", "1" if ctx.quick else "0", "--rpn-post-nms-train", "300", "--box-batch-size", "64"]
    print("$ isr train", " ".join(argv), flush=True)
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train(get_args_parser().parse_args(argv))
    rows = [json.loads(x) for x in (run / "losses.jsonl").read_text().splitlines() if x.strip()]
    raw = [r.get("raw_loss") for r in rows]
    ckpt = run / "checkpoint_last.pt"
    fig: dict[str, Any] = {
        "scenes": scenes, "image_size": "x".join(size), "network_input": list(map(int, net)), "iterations": len(raw),
        "batch_size": batch, "synth_seconds": round(synth_s, 1), "seconds_per_iter": result.get("seconds_per_iter"),
        "first_loss": raw[0] if raw else None, "last_loss": raw[-1] if raw else None,
        "checkpoint_mb": _mb(ckpt.stat().st_size) if ckpt.is_file() else None,
        "metrics": {k: v for k, v in (result.get("metrics") or {}).items() if _finite(v)},
    }
    if ctx.cuda:
        fig["cuda_peak_mb"] = _mb(torch.cuda.max_memory_allocated())
    problems = []
    if len(raw) != iters:
        problems.append(f"{len(raw)} loss rows for {iters} iterations")
    if not all(_finite(v) for v in raw):
        problems.append(f"non-finite loss: {raw}")
    if not ckpt.is_file():
        problems.append("no checkpoint_last.pt written")
    else:
        _, meta, extra = load_checkpoint(ckpt)
        fig["checkpoint_iteration"] = extra.get("iteration")
        fig["amp"] = meta.training.get("amp")
        if extra.get("iteration") != iters:
            problems.append(f"checkpoint at iteration {extra.get('iteration')}, expected {iters}")
        if ctx.cuda and meta.training.get("amp") is not True:
            problems.append("--amp was not used on CUDA")
    if problems:
        raise Failed("; ".join(problems), fig)
    return fig


def _step_function(name: str) -> Callable[[Ctx], dict[str, Any]]:
    if name.startswith("bench_"):
        model, precision = name[len("bench_"):].rsplit("_", 1)
        return lambda ctx: step_bench(ctx, model, precision)
    return globals()[f"step_{name}"]


# ---------------------------------------------------------------------------------------------------- one step
def _inject_fault(name: str) -> None:
    for item in filter(None, os.environ.get("ISR_DEVICE_CHECK_FAULT", "").split(",")):
        step, _, kind = item.partition("=")
        if step != name:
            continue
        if kind == "raise":
            raise RuntimeError("injected fault (ISR_DEVICE_CHECK_FAULT)")
        if kind == "crash":
            os._exit(3)
        if kind == "hang":
            time.sleep(3600)


def run_one(name: str, device: str, quick: bool, work: Path, timeout: float, result: Path) -> int:
    """The child process: run step ``name``, write its outcome to ``result`` (JSON)."""
    ctx = Ctx(device=device, quick=quick, work=work, timeout=timeout)
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"status": "pass", "figures": {}, "error": None, "reason": None}
    try:
        _inject_fault(name)
        out["figures"] = _step_function(name)(ctx)
    except Skip as exc:
        out.update(status="skipped", reason=str(exc), figures=exc.figures)
    except Failed as exc:
        out.update(status="fail", error=str(exc), figures=exc.figures)
    except BaseException as exc:  # anything else is a failure of the step, with where it came from
        traceback.print_exc()
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
        out.update(status="fail", error=f"{type(exc).__name__}: {str(exc).strip()[:1500]}{where}")
    out["warnings"] = ctx.warnings
    result.write_text(_json(out))
    return 0


# ---------------------------------------------------------------------------------------------------- the driver
def _spawn(step: Step, device: str, args: argparse.Namespace, work: Path, timeout: float, log: Any) -> dict[str, Any]:
    """Run one step in a process (session) of its own; a timeout kills it with everything it started."""
    result = work / f"{step.name}.result.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", step.name, "--device", device,
           "--work", str(work / step.name), "--result", str(result), "--step-timeout", str(timeout)]
    if args.quick:
        cmd.append("--quick")
    on = "probe" if step.name == "environment" else device
    log.write(f"\n===== {step.name} ({on}, timeout {timeout:.0f} s) =====\n")
    log.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"status": "fail", "error": f"timed out after {timeout:.0f} s (killed; its output so far is in "
                                           "device_check.log)", "figures": {}, "reason": None, "warnings": []}
    finally:
        try:  # whatever the step left running in its session
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if result.is_file():
        return json.loads(result.read_text())
    return {"status": "fail", "error": f"the step's process exited with status {rc} without a result (crashed; see "
                                       "device_check.log)", "figures": {}, "reason": None, "warnings": []}


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_all(args: argparse.Namespace) -> int:
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="isr_device_check_"))
    work.mkdir(parents=True, exist_ok=True)
    steps = all_steps()
    names = [s.name for s in steps]
    only = set(filter(None, (args.only or "").split(",")))
    overrides = dict(_parse_timeout(t) for t in args.timeout)
    for n in {*only, *overrides} - set(names):
        print(f"device_check: unknown step {n!r}; steps: {', '.join(names)}", file=sys.stderr)
        return 2
    t_start, started = time.monotonic(), datetime.datetime.now().astimezone()
    results: dict[str, dict[str, Any]] = {}
    log_path = out / "device_check.log"
    with open(log_path, "w") as log:
        def timeout_of(i: int, step: Step, device: str) -> float:
            own = (step.timeout if device == "cuda" else step.cpu_timeout) * args.timeout_scale
            own = overrides.get(step.name, own)
            reserve = sum(s.floor for s in steps[i + 1:] if _runs(s, device, only))
            left = BUDGET[device] * args.timeout_scale - (time.monotonic() - t_start) - reserve
            return max(min(own, left), min(own, step.floor))

        def run(i: int, step: Step, device: str) -> None:
            timeout = timeout_of(i, step, device)
            t = time.monotonic()
            print(f"[{i + 1:2d}/{len(steps)}] {step.name:<22s}", end=" ", flush=True)
            res = _spawn(step, device, args, work, timeout, log)
            res["seconds"], res["timeout_s"] = round(time.monotonic() - t, 1), round(timeout)
            results[step.name] = res
            print(f"{res['status']:<7s} {res['seconds']:6.1f} s  {_one_line(res)}", flush=True)

        run(0, steps[0], "cpu")  # the probe: its device is not used
        env = results["environment"]
        cuda = bool(env.get("figures", {}).get("cuda_available")) and not args.cpu
        device = "cuda" if cuda else "cpu"
        if cuda:
            print(f"CUDA: {env['figures'].get('gpu')} ({env['figures'].get('gpu_memory_gib')} GiB), "
                  f"torch {env['figures'].get('torch')}: running every step on the GPU.", flush=True)
        else:
            why = "--cpu given" if args.cpu else (
                "the environment step failed" if env["status"] == "fail" else "torch sees no CUDA device")
            print(f"NO CUDA ({why}): this is a CPU DRY RUN of the same steps; nothing on a GPU was checked.",
                  flush=True)
        for i, step in enumerate(steps[1:], start=1):
            if not _runs(step, device, only):
                reason = "not selected (--only)" if only and step.name not in only else step.cpu
                results[step.name] = {"status": "skipped", "seconds": 0.0, "timeout_s": 0, "figures": {},
                                      "error": None, "reason": reason, "warnings": []}
                print(f"[{i + 1:2d}/{len(steps)}] {step.name:<22s} skipped   0.0 s  {reason}", flush=True)
                continue
            run(i, step, device)
    report = {
        "mode": device, "cuda": cuda, "quick": bool(args.quick), "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t_start, 1), "budget_s": BUDGET[device] * args.timeout_scale,
        "setup": os.environ.get("ISR_DEVICE_CHECK_SETUP", "unknown"), "host": platform.node(),
        "git": _git_head(), "command": " ".join(["scripts/device_check.sh", *args.argv]),
        "machine": env.get("figures", {}), "steps": results,
        "summary": {s: sum(r["status"] == s for r in results.values()) for s in ("pass", "fail", "skipped")},
    }
    failed = [n for n, r in results.items() if r["status"] == "fail"]
    report["exit_status"] = 1 if failed else 0
    (out / "device_check.json").write_text(_json(report))
    (out / "device_check.md").write_text(markdown(report))
    if not args.work and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    s = report["summary"]
    print(f"\n{'CUDA check' if cuda else 'CPU dry run (no CUDA)'}: {s['pass']} passed, {s['fail']} failed, "
          f"{s['skipped']} skipped in {report['seconds']:.0f} s -> {out}/device_check.{{json,md,log}}")
    if failed:
        print(f"failed: {', '.join(failed)}; last lines of the log:\n{_tail(log_path)}")
    return report["exit_status"]


def _runs(step: Step, device: str, only: set[str]) -> bool:
    if only and step.name not in only and step.name != "environment":
        return False
    return device == "cuda" or step.cpu == "run"


def _parse_timeout(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise SystemExit(f"device_check: --timeout expects STEP=SECONDS, got {text!r}") from None


def _git_head() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


# ---------------------------------------------------------------------------------------------------- the report
_KEY_FIGURES = {
    "environment": ("gpu", "gpu_memory_gib", "torch", "torch_cuda"),
    "cuda_tests": ("collected", "passed", "skipped", "failed"),
    "oom_recovery": ("frame_memory_mb", "retry_frame_memory_mb", "next_frame_instances"),
    "train_smoke": ("iterations", "seconds_per_iter", "first_loss", "last_loss", "checkpoint_mb", "amp"),
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _one_line(res: dict[str, Any]) -> str:
    if res["status"] == "fail":
        return str(res.get("error") or "").splitlines()[0][:160] if res.get("error") else ""
    if res["status"] == "skipped":
        return str(res.get("reason") or "")[:160]
    f = res.get("figures") or {}
    if "e2e_median_ms" in f:
        return (f"{f['backbone']} {f['precision']} on {f['device']}: {_fmt(f['e2e_median_ms'])} ms end to end, "
                f"baseline {_fmt(f['baseline_e2e_median_ms'])} ms")
    return ""


def _figures_cell(name: str, res: dict[str, Any]) -> str:
    f = res.get("figures") or {}
    if name.startswith("bench_") and "e2e_median_ms" in f:
        share = f.get("outside_network_share")
        outside = f", {_fmt(100 * share)} % outside the network" if _finite(share) else ""
        return f"{_fmt(f['e2e_median_ms'])} ms e2e, {_fmt(f['fps'])} fps, x{_fmt(f['ratio_e2e'])} of baseline{outside}"
    if name == "release":
        seg, node = f.get("segmenter", {}), f.get("node", {})
        parts = [f"segmenter {seg.get('loaded_mb')} -> {seg.get('released_mb')} MB" if "loaded_mb" in seg else
                 ("segmenter release/reload ok" if seg else "")]
        parts.append(f"node {node.get('status')}" if node else "")
        return ", ".join(p for p in parts if p)
    if name == "oom_recovery" and "no_headroom" in f:
        return (f"no headroom: {f['no_headroom']['outcome']}; retry headroom: {f['retry_headroom']['outcome']}; "
                f"next frame {f.get('next_frame_instances')} instances")
    keys = _KEY_FIGURES.get(name, ())
    return ", ".join(f"{k} {_fmt(f[k])}" for k in keys if f.get(k) is not None)


def _cell(text: Any) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ")[:200]


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the verdict, the step table, the bench table, the errors and warnings."""
    m, steps = report["machine"], report["steps"]
    s = report["summary"]
    title = "CUDA check" if report["cuda"] else "CPU dry run (no CUDA: nothing on a GPU was checked)"
    lines = [
        f"# Device check: {title}", "",
        f"{report['started']} on {report['host']} (commit {report['git']}), {report['seconds']:.0f} s of a "
        f"{report['budget_s']:.0f} s budget; `{report['command']}`", "",
        f"- GPU: {m.get('gpu', 'none')}" + (f", {m['gpu_memory_gib']} GiB, compute capability {m['capability']}, "
                                            f"nvidia-smi: {m.get('nvidia_smi')}" if m.get("gpu") else ""),
        f"- torch {m.get('torch')} (CUDA {m.get('torch_cuda')}), torchvision {m.get('torchvision')}, Python "
        f"{m.get('python')} ({m.get('executable')}), {m.get('cpu_cores')} CPU cores" if m else
        "- the environment probe failed (below): Python, torch and the GPU are unknown",
        f"- environment: {report['setup']}", "",
        f"**{s['pass']} passed, {s['fail']} failed, {s['skipped']} skipped** (exit status {report['exit_status']})",
        "", "| step | status | seconds (timeout) | figures | error / reason |", "| --- | --- | --- | --- | --- |",
    ]
    for name, r in steps.items():
        lines.append(f"| {name} | {r['status']} | {r['seconds']:.1f} ({r['timeout_s']}) | "
                     f"{_cell(_figures_cell(name, r))} | {_cell(r.get('error') or r.get('reason'))} |")
    bench = [(n, r["figures"]) for n, r in steps.items() if n.startswith("bench_") and r.get("figures")]
    if bench:
        lines += ["", "## isr bench (milliseconds per frame, median of the timed runs)", "",
                  "| model | precision | device | network input | frame | instances | ours e2e | p99 | fps | "
                  "inference | GPU peak MB | baseline e2e | ours / baseline | fast vs reference |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for _, f in bench:
            a = f.get("agreement") or {}
            agree = f"{a.get('matched_iou_0.99')}/{a.get('instances')} at IoU 0.99" if a else "-"
            lines.append(
                f"| {f['backbone']} ({f['weights']}) | {f['precision']} | {f['device']} | "
                f"{'x'.join(map(str, f['network_input']))} | {f['frame']} | {f['instances']} | "
                f"{_fmt(f['e2e_median_ms'])} | {_fmt(f['e2e_p99_ms'])} | {_fmt(f['fps'])} | "
                f"{_fmt(f['inference_median_ms'])} | {_fmt(f['cuda_peak_mb'])} | {_fmt(f['baseline_e2e_median_ms'])} | "
                f"{_fmt(f['ratio_e2e'])} | {agree} |")
    notes = [(n, r) for n, r in steps.items() if r["status"] == "fail" or r.get("warnings")]
    if notes:
        lines += ["", "## Errors and warnings", ""]
        for name, r in notes:
            lines.append(f"### {name}: {r['status']}")
            if r.get("error"):
                lines += ["", "```", str(r["error"]), "```"]
            lines += [f"- warning: {w}" for w in r.get("warnings") or []]
            lines.append("")
    lines += ["", "Every figure of every step is in device_check.json; each step's own output in device_check.log.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", nargs="?", help="where device_check.json / .md / .log go (created)")
    p.add_argument("--quick", action="store_true", help="shrink every step (160x120 frames, 3 training iterations)")
    p.add_argument("--cpu", action="store_true", help="the CPU dry run even where CUDA is available")
    p.add_argument("--only", help="run only these steps (comma-separated; environment always runs)")
    p.add_argument("--timeout", action="append", default=[], metavar="STEP=SECONDS",
                   help="override one step's timeout (repeatable)")
    p.add_argument("--timeout-scale", type=float, default=1.0,
                   help="multiply every timeout and the total budget (a slower GPU: 2)")
    p.add_argument("--work", help="scratch folder, kept (default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary scratch folder")
    # one step, in its own process (what the driver runs)
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--step-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step:
        return run_one(args.step, args.device, args.quick, Path(args.work), args.step_timeout, Path(args.result))
    if not args.outdir:
        p.error("OUTDIR is required")
    if args.timeout_scale <= 0:
        p.error("--timeout-scale must be > 0")
    args.argv = argv
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
