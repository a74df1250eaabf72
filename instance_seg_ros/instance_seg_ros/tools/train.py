"""``isr train``: train the amodal Mask R-CNN on COCO-style amodal data (``isr synth`` output, KINS, COCOA).

Iteration-based, in the style of torchvision's ``references/detection/train.py`` (``get_args_parser()``
+ ``main(args)``; a checkpoint is ``{model, optimizer, lr_scheduler, args, epoch}`` plus our model meta).

Output directory (``--out``)::

    checkpoint_last.pt    every --checkpoint-every iterations and at the end (full precision, optimizer,
                          scheduler, GradScaler, RNG states, iteration); ``--resume`` continues from it
    checkpoint_best.pt    the checkpoint with the best --best-metric on the held-out split so far
    losses.jsonl          one line per --log-every iterations: smoothed losses, lr, s/iter
    metrics.jsonl         one line per evaluation: COCO mask AP/AP50/AP75 (visible), amodal AP/AP50, occlusion MAE
    training_curves.png   losses and AP vs iteration (at the end)
    args.json             the resolved arguments

Examples::

    isr train --data data/synth_train --val-data data/synth_val --out runs/lite0 \\
        --backbone efficientnet_lite0_fpn --min-size 240 --max-size 320 --iters 6000 --export model.pt
    isr train --resume runs/lite0/checkpoint_last.pt --iters 12000          # continue / extend a run
    torchrun --nproc_per_node 4 -m instance_seg_ros.tools.train --data ... --device cuda --amp

This module holds the arguments and :func:`main`; the rest is split as torchvision splits its references:

- :mod:`.train_data`: the training and held-out sets, the seeded, resumable sample stream, the DataLoaders
  (decoding and augmentation run in ``--workers`` processes; a resumed run sees the same data);
- :mod:`.train_engine`: :func:`~.train_engine.train_step` (one iteration), the training loop, evaluation,
  checkpoints, device / ``torchrun`` / RNG setup;
- :mod:`.train_log`: ``losses.jsonl`` / ``metrics.jsonl``, smoothed losses, ``training_curves.png``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel, each rank
reads its own shard, and rank 0 alone logs, evaluates and writes files; ``--batch-size`` is per process.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

from .train_data import TrainError, load_data, train_loader, training_set
from .train_engine import (
    Checkpoints,
    build_model,
    init_distributed,
    init_weights,
    make_optimization,
    select_device,
    set_rng_state,
    train_loop,
    wrap_distributed,
)
from .train_log import RunLog, json_safe, plot_curves, truncate_jsonl

__all__ = [
    "DEFAULTS",
    "TrainError",
    "add_arguments",
    "get_args_parser",
    "main",
    "resolve_args",
    "run",
]

#: Defaults of the options; ``None`` on the command line means "this default", or with ``--resume`` the
#: checkpoint's value (so ``isr train --resume CKPT --iters N`` continues a run as it was set up).
DEFAULTS: dict[str, Any] = {
    "data": None,
    "val_data": None,
    "val_fraction": 0.1,
    "out": "runs/train",
    "backbone": "efficientnet_lite0_fpn",
    "pretrained_backbone": None,  # None → True for efficientnet_lite0_fpn (offline), else False
    "input_mode": "rgb",
    "min_size": 240,
    "max_size": 320,
    "class_agnostic": False,
    "iters": 1000,
    "batch_size": 2,
    "lr": None,  # None → 0.00125 x images per step (batch size x processes), i.e. 0.0025 at batch 2
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "warmup_iters": None,  # None → min(500, iters // 10)
    "lr_schedule": "cosine",
    "lr_steps": [0.67, 0.89],
    "lr_gamma": 0.1,
    "clip_grad": 10.0,
    "rpn_post_nms_train": 1000,
    "box_batch_size": 256,
    "trainable_backbone_layers": None,
    "augment": True,
    "modality_dropout": 0.0,
    "workers": 2,
    "device": "auto",
    "amp": False,
    "checkpoint_every": 500,
    "eval_every": 1000,
    "eval_max_images": 0,
    "eval_score_threshold": 0.05,
    "best_metric": "mask_ap",
    "log_every": 20,
    "init": "none",
    "seed": 0,
    "threads": 0,
    "export": None,
    "export_best": False,
}
_ARCH_KEYS = ("backbone", "input_mode", "min_size", "max_size", "class_agnostic")

# =========================================================================== arguments
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``isr train`` options (``None`` defaults resolve through :data:`DEFAULTS`)."""
    from ..core.model import BACKBONES

    d = DEFAULTS
    g = parser.add_argument_group("data")
    g.add_argument("--data", action="append", metavar="DIR|JSON",
                   help="training set: a directory with annotations.json (isr synth) or a COCO amodal JSON; "
                        "repeat to concatenate sets")
    g.add_argument("--val-data", action="append", metavar="DIR|JSON",
                   help="held-out set to evaluate on (repeatable); default: --val-fraction of --data")
    g.add_argument("--val-fraction", type=float,
                   help=f"share of the --data scenes held out when no --val-data (default {d['val_fraction']}; "
                        "0 = no evaluation)")
    g.add_argument("--class-agnostic", action=argparse.BooleanOptionalAction,
                   help="one class 'object' whatever the data's categories (default off)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="flip, color jitter, depth noise, random scale (default on)")
    g.add_argument("--modality-dropout", type=float, metavar="P",
                   help="rgbd: probability that a sample loses its depth or its color (default 0; the sim2real "
                        "recipe uses 0.2)")
    g.add_argument("--workers", type=int, help=f"DataLoader worker processes (default {d['workers']})")

    g = parser.add_argument_group("model")
    g.add_argument("--backbone", choices=list(BACKBONES), help=f"default {d['backbone']}")
    g.add_argument("--pretrained-backbone", action=argparse.BooleanOptionalAction,
                   help="ImageNet backbone weights (default: on for efficientnet_lite0_fpn, whose weights are "
                        "installed; the others need a download)")
    g.add_argument("--input-mode", choices=["rgb", "rgbd"], help=f"default {d['input_mode']}")
    g.add_argument("--min-size", type=int, help=f"network input short side (default {d['min_size']})")
    g.add_argument("--max-size", type=int, help=f"network input long side (default {d['max_size']})")
    g.add_argument("--trainable-backbone-layers", type=int, help="backbone layer groups to train (default: model's)")
    g.add_argument("--rpn-post-nms-train", type=int,
                   help=f"RPN proposals kept per image in training (default {d['rpn_post_nms_train']})")
    g.add_argument("--box-batch-size", type=int,
                   help=f"RoIs sampled per image for the box head (default {d['box_batch_size']})")
    g.add_argument("--init", metavar="none|coco|PATH",
                   help="initial weights: none, coco (torchvision COCO Mask R-CNN, resnet50_fpn, needs a download) "
                        "or a checkpoint; tensors whose name and shape fit are copied (default none)")

    g = parser.add_argument_group("optimization")
    g.add_argument("--iters", type=int, help=f"total iterations (default {d['iters']})")
    g.add_argument("--batch-size", type=int, help=f"images per iteration and process (default {d['batch_size']})")
    g.add_argument("--lr", type=float, help="SGD learning rate (default 0.00125 per image: 0.0025 at batch 2)")
    g.add_argument("--momentum", type=float, help=f"default {d['momentum']}")
    g.add_argument("--weight-decay", type=float, help=f"default {d['weight_decay']}")
    g.add_argument("--warmup-iters", type=int, help="linear warm-up from lr/1000 (default min(500, iters/10))")
    g.add_argument("--lr-schedule", choices=["cosine", "multistep", "constant"],
                   help=f"after warm-up (default {d['lr_schedule']})")
    g.add_argument("--lr-steps", type=float, nargs="+",
                   help="multistep milestones: iterations, or fractions of --iters when < 1 (default 0.67 0.89)")
    g.add_argument("--lr-gamma", type=float, help=f"multistep factor (default {d['lr_gamma']})")
    g.add_argument("--clip-grad", type=float, help=f"gradient norm clip, 0 = off (default {d['clip_grad']})")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, help="CUDA autocast fp16 + GradScaler")
    g.add_argument("--seed", type=int, help=f"default {d['seed']}")

    g = parser.add_argument_group("run")
    g.add_argument("--out", help=f"output directory (default {d['out']})")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N (default auto)")
    g.add_argument("--threads", type=int, help="torch CPU threads, 0 = torch's default")
    g.add_argument("--checkpoint-every", type=int, help=f"iterations (default {d['checkpoint_every']})")
    g.add_argument("--eval-every", type=int, help=f"iterations, 0 = only at the end (default {d['eval_every']})")
    g.add_argument("--eval-max-images", type=int,
                   help="intermediate evaluations use at most this many images, 0 = all (the final one uses all)")
    g.add_argument("--eval-score-threshold", type=float, help="detections kept for AP (default 0.05)")
    g.add_argument("--best-metric", help=f"metric that picks checkpoint_best.pt (default {d['best_metric']})")
    g.add_argument("--log-every", type=int, help=f"iterations per losses.jsonl line (default {d['log_every']})")
    g.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (iteration, optimizer, scheduler, "
                                                    "RNG); unset options take the checkpoint's values")
    g.add_argument("--export", metavar="PATH", help="at the end, write the shipping file (fp16) here")
    g.add_argument("--export-best", action=argparse.BooleanOptionalAction,
                   help="export checkpoint_best.pt's weights instead of the final ones")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isr train", description=__doc__.splitlines()[0], add_help=add_help)
    add_arguments(parser)
    return parser


def resolve_args(args: argparse.Namespace, checkpoint_args: dict[str, Any] | None = None) -> argparse.Namespace:
    """Fill ``None`` options from ``checkpoint_args`` (resume) then :data:`DEFAULTS`, and check them."""
    a = argparse.Namespace(**vars(args))
    for k, v in DEFAULTS.items():
        if getattr(a, k, None) is None:
            if checkpoint_args is not None and checkpoint_args.get(k) is not None and k not in ("export",):
                setattr(a, k, checkpoint_args[k])
            else:
                setattr(a, k, v)
    if checkpoint_args is not None:
        for k in _ARCH_KEYS:  # the architecture is the checkpoint's
            if checkpoint_args.get(k) is not None and getattr(a, k) != checkpoint_args[k]:
                print(f"isr train: --resume: using the checkpoint's {k}={checkpoint_args[k]!r} "
                      f"(not {getattr(a, k)!r})", file=sys.stderr)
                setattr(a, k, checkpoint_args[k])
    if a.pretrained_backbone is None:
        a.pretrained_backbone = a.backbone == "efficientnet_lite0_fpn" and a.init == "none"
    if not a.data:
        raise TrainError("Pass --data DIR (a directory with annotations.json, e.g. from `isr synth`) or a JSON file.")
    a.data = [str(p) for p in a.data]
    a.val_data = [str(p) for p in a.val_data] if a.val_data else None
    for name in ("iters", "batch_size", "min_size", "max_size", "checkpoint_every", "log_every",
                 "rpn_post_nms_train", "box_batch_size"):
        v = getattr(a, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}.")
    for name in ("workers", "eval_every", "eval_max_images", "threads", "seed"):
        v = getattr(a, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise TrainError(f"--{name.replace('_', '-')} must be an integer >= 0, got {v!r}.")
    if a.min_size > a.max_size:
        raise TrainError(f"--min-size ({a.min_size}) must not exceed --max-size ({a.max_size}).")
    if not 0.0 <= a.modality_dropout <= 1.0:
        raise TrainError(f"--modality-dropout must be a probability within [0, 1], got {a.modality_dropout}.")
    if not 0.0 <= a.val_fraction < 1.0:
        raise TrainError(f"--val-fraction must be within [0, 1), got {a.val_fraction}.")
    if a.lr is not None and not (math.isfinite(a.lr) and a.lr > 0):
        raise TrainError(f"--lr must be a positive number, got {a.lr}.")
    for name in ("weight_decay", "clip_grad", "momentum", "lr_gamma"):
        v = getattr(a, name)
        if not (math.isfinite(v) and v >= 0):
            raise TrainError(f"--{name.replace('_', '-')} must be a number >= 0, got {v}.")
    if a.warmup_iters is not None and a.warmup_iters < 0:
        raise TrainError(f"--warmup-iters must be >= 0, got {a.warmup_iters}.")
    if a.init not in ("none", "coco") and not Path(a.init).is_file():
        raise TrainError(f"--init must be none, coco or an existing checkpoint file, got {a.init!r}.")
    if a.init == "coco" and a.backbone != "resnet50_fpn":
        raise TrainError("--init coco needs --backbone resnet50_fpn (torchvision's COCO Mask R-CNN is a ResNet-50).")
    if a.pretrained_backbone and a.init != "none":
        a.pretrained_backbone = False  # the init weights replace them anyway
    from ..core.coco_eval import METRIC_KEYS

    if a.best_metric not in METRIC_KEYS or a.best_metric.startswith(("num_", "occlusion_matched")):
        raise TrainError(f"--best-metric must be one of the metrics ({', '.join(METRIC_KEYS[:8])}, amodal_ap, "
                         f"amodal_ap50, occlusion_mae ...), got {a.best_metric!r}.")
    return a


# =========================================================================== main
def _resume_checkpoint(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None]:
    """``(state dict, checkpoint extras)`` of ``--resume``, or ``(None, None)`` without it."""
    from ..core.model import WeightsError, load_checkpoint

    if not getattr(args, "resume", None):
        return None, None
    try:
        state, _, extra = load_checkpoint(args.resume)
    except WeightsError as exc:
        raise TrainError(f"--resume: {exc}") from exc
    if "iteration" not in extra or "optimizer" not in extra:
        raise TrainError(f"--resume {args.resume} is a weights file, not a training checkpoint (no optimizer "
                         "state); use --init PATH to start from its weights.")
    return state, extra


def _setup_process(a: argparse.Namespace, rank: int, world: int, local_rank: int | None, log) -> Any:
    """Threads, device, the options that depend on them (``--amp``, ``--lr``) and the seeds; returns the device."""
    import numpy as np
    import torch

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = select_device(a, local_rank)
    if a.amp and device.type != "cuda":
        log("isr train: --amp needs CUDA; training in fp32 on the CPU.", file=sys.stderr)
        a.amp = False
    if a.lr is None:
        a.lr = 0.00125 * a.batch_size * world
    torch.manual_seed(a.seed + rank)
    random.seed(a.seed + rank)
    np.random.seed((a.seed + rank) % 2**32)
    return device


def _model(a: argparse.Namespace, num_classes: int, resume_state: Any, device: Any, log) -> Any:
    """The model built from ``a``, with ``--init`` weights or the ``--resume`` state, on ``device``."""
    model = build_model(a, num_classes)
    if a.init != "none" and resume_state is None:
        init_weights(model, a.init, log=log)
    if resume_state is not None:
        try:
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in resume_state.items()})
        except RuntimeError as exc:
            raise TrainError(f"--resume {a.resume} does not fit the model built from its arguments: {exc}") from exc
    return model.to(device)


def _restore(opt: Any, extra: dict[str, Any] | None, a: argparse.Namespace, out: Path, main_proc: bool, log) -> int:
    """The iteration to start at: the ``--resume`` checkpoint's (optimizer, scheduler, scaler and RNG restored,
    the logs cut back to it), or 0 (the logs of an earlier run in ``out`` removed)."""
    if extra is None:
        if main_proc:
            for name in ("losses.jsonl", "metrics.jsonl"):
                (out / name).unlink(missing_ok=True)
        return 0
    opt.load_state_dict(extra, a.amp)
    start_iter = int(extra["iteration"])
    if extra.get("rng"):
        set_rng_state(extra["rng"])
    log(f"isr train: resumed {a.resume} at iteration {start_iter}.")
    if main_proc:
        truncate_jsonl(out / "losses.jsonl", start_iter)
        truncate_jsonl(out / "metrics.jsonl", start_iter)
    return start_iter


def _export(ckpts: Checkpoints, iteration: int, metrics: dict[str, Any], a: argparse.Namespace, log) -> str:
    """Write the shipping file (fp16) of the final weights, or with ``--export-best`` of ``checkpoint_best.pt``."""
    from ..core.model.weights import load_checkpoint, model_from_state, save_weights

    best = ckpts.out / "checkpoint_best.pt"
    if a.export_best and best.is_file():
        state, meta, _ = load_checkpoint(best)
        model = model_from_state(state, meta, str(best))
    else:
        model, meta = ckpts.model, ckpts.meta(metrics, iteration)
    path = str(save_weights(a.export, model, meta, half=True))
    log(f"isr train: exported {path} ({Path(path).stat().st_size / 1e6:.1f} MB).")
    return path


def _finish(ckpts: Checkpoints, iteration: int, a: argparse.Namespace, log) -> dict[str, Any]:
    """Rank 0 at the end: the final evaluation, ``checkpoint_last.pt``, the curves and ``--export``."""
    m = ckpts.final_metrics(iteration)
    done: dict[str, Any] = {"metrics": {k: v for k, v in m.items() if k != "iteration"}}
    done["checkpoint"] = str(ckpts.save("checkpoint_last.pt", iteration, m))
    try:
        plot_curves(ckpts.out)
    except Exception as exc:  # a plotting problem must not lose a finished run
        log(f"isr train: could not draw the training curves: {exc}", file=sys.stderr)
    if a.export:
        done["export"] = _export(ckpts, iteration, done["metrics"], a, log)
    return done


def _quiet(*_a: Any, **_k: Any) -> None:
    return None


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train; returns ``{"iteration", "out", "checkpoint", "best", "metrics", "export", "seconds_per_iter"}``.

    Raises:
        TrainError: bad arguments or data (what to change).
    """
    import torch

    resume_state, resume_extra = _resume_checkpoint(args)
    a = resolve_args(args, resume_extra.get("args") if resume_extra else None)
    if a.warmup_iters is None:
        a.warmup_iters = min(500, a.iters // 10)
    rank, world, local_rank = init_distributed(a)
    main_proc = rank == 0
    log = print if main_proc else _quiet
    device = _setup_process(a, rank, world, local_rank, log)
    out = Path(a.out)
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(json_safe(vars(a)), indent=2, default=str) + "\n")

    data = load_data(a)
    model = _model(a, len(data["classes"]), resume_state, device, log)
    train_set = training_set(a, data)
    opt = make_optimization(model, a)
    start_iter = _restore(opt, resume_extra, a, out, main_proc, log)
    ddp_model = wrap_distributed(model, device, world)
    loader = train_loader(train_set, a, start_iter=start_iter, rank=rank, world=world, device=device)
    ckpts = Checkpoints(a, out, model, opt, data, device=device, world=world, train_size=len(train_set),
                        main_proc=main_proc, log=log, extra=resume_extra)
    log(f"isr train: {a.backbone} ({a.input_mode}, {len(data['classes']) - 1} class(es)) at {a.min_size}x"
        f"{a.max_size}, {sum(d['images'] for d in data['description']['train'])} training images, {ckpts.n_val} "
        f"held-out, iterations {start_iter}..{a.iters}, batch {a.batch_size} x {world}, lr {a.lr:g}, "
        f"on {ckpts.hardware}")

    ddp_model.train()
    runlog = RunLog(out, iters=a.iters, start_iter=start_iter, log_every=a.log_every, write=main_proc, quiet=a.quiet)
    it = train_loop(ddp_model, loader, opt, ckpts, runlog, a, start_iter=start_iter, device=device, world=world,
                    log=log)
    result: dict[str, Any] = {"iteration": it, "out": str(out), "seconds_per_iter": runlog.seconds_per_iter(),
                              "train_seconds": time.perf_counter() - runlog.t_start, "best": ckpts.best,
                              "export": None}
    if main_proc:
        result.update(_finish(ckpts, it, a, log))
        log(f"isr train: {it} iterations, {result['seconds_per_iter']:.2f} s/iteration (last 50), checkpoint "
            f"{result['checkpoint']}")
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


def run(args: argparse.Namespace) -> int:
    """``isr train`` entry point: 0 on success, 2 on bad arguments / data."""
    try:
        main(args)
    except TrainError as exc:
        print(f"isr train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("isr train: interrupted; continue with --resume <out>/checkpoint_last.pt", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # torchrun -m instance_seg_ros.tools.train ...
    sys.exit(run(get_args_parser().parse_args()))
