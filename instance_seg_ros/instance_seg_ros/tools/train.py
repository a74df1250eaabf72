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

Data loading (PNG decode, RLE decode, augmentation, resize to the network input size) runs in
``--workers`` DataLoader processes; the samples arrive already at network size. The sample order
and every augmentation are a function of ``--seed`` and the sample's position in the run, so a
resumed run sees the same data as an uninterrupted one.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel, each rank
reads its own shard, and rank 0 alone logs, evaluates and writes files; ``--batch-size`` is per process.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import random
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .machine import cpu_model_name

__all__ = [
    "DEFAULTS",
    "TrainError",
    "add_arguments",
    "evaluate",
    "get_args_parser",
    "main",
    "plot_curves",
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
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask",
             "loss_amodal_mask", "loss_occlusion")


class TrainError(ValueError):
    """Bad ``isr train`` arguments or data; the message says what to change."""


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


# =========================================================================== data
class TrainingSet:
    """Map-style dataset of augmented training samples at network size (a ``torch.utils.data.Dataset``).

    Indexed by ``(index, seed)`` (from :class:`InfiniteSampler`) or a plain ``index`` (seed = index).
    Returns ``(image Tensor[C, h, w] float32 (frame_to_input), target dict)`` with ``boxes`` (amodal, Tensor[G, 4]),
    ``labels`` Tensor[G] int64 (contiguous 1..K-1), ``masks`` / ``amodal_masks`` uint8 [G, h, w], ``occlusion``.
    """

    def __init__(self, datasets: Sequence[Any], class_maps: Sequence[dict[int, int]], *, input_mode: str,
                 augment: Any, depth_max_m: float) -> None:
        self.datasets = list(datasets)
        self.class_maps = list(class_maps)
        self.input_mode = input_mode
        self.augment = augment
        self.depth_max_m = depth_max_m
        self.offsets = []
        n = 0
        for ds in self.datasets:
            self.offsets.append(n)
            n += len(ds)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def locate(self, index: int) -> tuple[int, int]:
        for k in range(len(self.datasets) - 1, -1, -1):
            if index >= self.offsets[k]:
                return k, index - self.offsets[k]
        raise IndexError(index)

    def __getitem__(self, key: Any) -> tuple[Any, dict[str, Any]]:
        import numpy as np
        import torch

        from ..core.model import frame_to_input, targets_from_masks

        index, seed = key if isinstance(key, tuple) else (int(key), int(key))
        k, i = self.locate(int(index))
        sample = self.datasets[k][i]
        sample = self.augment(sample, np.random.default_rng(seed))
        t = sample.targets
        cmap = self.class_maps[k]
        labels = torch.as_tensor([cmap.get(int(c), 1) for c in t["labels"]], dtype=torch.int64)
        image = frame_to_input(sample.color, sample.depth if self.input_mode == "rgbd" else None,
                               input_mode=self.input_mode, depth_max_m=self.depth_max_m)
        target = targets_from_masks(torch.from_numpy(t["masks"]), torch.from_numpy(t["amodal_masks"]), labels)
        return image, target


class InfiniteSampler:
    """Endless, seeded sample keys ``(index, seed)`` for this rank, starting at ``start`` (samples this rank
    has already consumed, so resuming continues the same stream). Epoch ``e`` is a permutation seeded by
    ``seed`` and ``e``; rank ``r`` of ``world`` takes every ``world``-th key."""

    def __init__(self, size: int, *, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if size < 1:
            raise TrainError("The training set is empty: no image with an instance was found in --data.")
        self.size, self.seed, self.start, self.rank, self.world = size, seed, start, rank, world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        import numpy as np

        pos = self.start * self.world + self.rank  # global position in the stream of all ranks
        epoch = pos // self.size
        perm = None
        while True:
            if perm is None or pos // self.size != epoch:
                epoch = pos // self.size
                perm = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            yield int(perm[pos % self.size]), int(self.seed * 1_000_003 + pos) % (2**63)
            pos += self.world

    def __len__(self) -> int:  # DataLoader asks; the stream has no end
        return 2**62


def _collate(batch):
    return tuple(zip(*batch, strict=True))


def _identity(x):
    return x


def _worker_init(_worker_id: int) -> None:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _class_map(ds: Any, class_agnostic: bool, names: list[str] | None) -> tuple[dict[int, int], list[str]]:
    """COCO category id → contiguous label 1..K-1, and the class names (index 0 background)."""
    cats = sorted(ds.categories, key=lambda c: int(c["id"])) if ds.categories else []
    if class_agnostic or not cats:
        return {int(c["id"]): 1 for c in cats}, ["__background__", "object"]
    these = ["__background__"] + [str(c.get("name", c["id"])) for c in cats]
    if names is not None and these != names:
        raise TrainError(f"{ds.json_path} has categories {these[1:]}, the first --data set has {names[1:]}; "
                         "use --class-agnostic or data sets with the same categories.")
    return {int(c["id"]): i for i, c in enumerate(cats, start=1)}, these


def _describe(ds: Any, used: int) -> dict[str, Any]:
    info = ds.info or {}
    params = info.get("params") if isinstance(info.get("params"), dict) else {}
    d: dict[str, Any] = {"path": str(ds.json_path), "images": int(used)}
    for k in ("seed", "width", "height", "views_per_scene", "noise", "min_objects", "max_objects"):
        if k in params:
            d[k] = params[k]
    if "scenes" in info:
        d["scenes"] = info["scenes"]
    if info.get("description"):
        d["description"] = str(info["description"])
    return d


def load_data(a: argparse.Namespace) -> dict[str, Any]:
    """Read the training (and held-out) sets: ``{"train": [...], "val": [...], "class_maps", "classes",
    "description"}``."""
    from ..core.dataset import AmodalCocoDataset, DatasetError

    rgbd = a.input_mode == "rgbd"
    train, val, maps, classes, desc_train, desc_val = [], [], [], None, [], []
    try:
        for p in a.data:
            ds = AmodalCocoDataset(p, load_depth=rgbd, skip_crowd=True, skip_empty=True)
            cmap, classes = _class_map(ds, a.class_agnostic, classes)
            if not a.val_data and a.val_fraction > 0:
                full = AmodalCocoDataset(p, load_depth=rgbd, skip_empty=True)
                tr, held = full.split(a.val_fraction, seed=a.seed)
                held_ids = set(held.image_ids)
                ds.image_ids = [i for i in ds.image_ids if i not in held_ids]
                val.append((held, cmap))
                desc_val.append({**_describe(full, len(held)), "split": f"held-out {a.val_fraction} (seed {a.seed})"})
            train.append(ds)
            maps.append(cmap)
            desc_train.append(_describe(ds, len(ds)))
        for p in a.val_data or []:
            # skip_empty: images without any object add nothing to AP but false positives; skipping them
            # also sidesteps AmodalCocoDataset failing on them (reshape of 0 masks)
            ds = AmodalCocoDataset(p, load_depth=rgbd, skip_empty=True)
            cmap, _ = _class_map(ds, a.class_agnostic, classes)
            val.append((ds, cmap))
            desc_val.append(_describe(ds, len(ds)))
    except DatasetError as exc:
        raise TrainError(str(exc)) from exc
    if sum(len(d) for d in train) == 0:
        raise TrainError(f"No training image with an instance in {', '.join(a.data)}.")
    return {"train": train, "val": val, "class_maps": maps, "classes": classes,
            "description": {"train": desc_train, "val": desc_val}}


# =========================================================================== model
def _device(a: argparse.Namespace, local_rank: int | None):
    import torch

    from ..core.model import resolve_device

    if local_rank is not None and str(a.device) in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    try:
        return resolve_device(a.device)
    except ValueError as exc:
        raise TrainError(str(exc)) from exc


def build_model(a: argparse.Namespace, num_classes: int):
    from ..core.model import build_amodal_maskrcnn

    kw: dict[str, Any] = {
        "backbone": a.backbone, "input_mode": a.input_mode, "num_classes": num_classes,
        "min_size": a.min_size, "max_size": a.max_size, "pretrained_backbone": bool(a.pretrained_backbone),
        "rpn_post_nms_top_n_train": a.rpn_post_nms_train, "box_batch_size_per_image": a.box_batch_size,
    }
    if a.trainable_backbone_layers is not None:
        kw["trainable_backbone_layers"] = a.trainable_backbone_layers
    if a.init == "coco":
        kw["frozen_bn"] = True
    try:
        return build_amodal_maskrcnn(**kw)
    except ValueError as exc:
        raise TrainError(f"Cannot build the model: {exc}") from exc


def init_weights(model: Any, spec: str, log=print) -> dict[str, int]:
    """Copy into ``model`` every tensor of ``spec`` (``coco`` or a checkpoint path) whose name and shape fit;
    returns ``{"copied", "skipped", "total"}``."""
    from ..core.model import WeightsError, load_checkpoint, load_model

    try:
        if spec == "coco":
            src = load_model("coco", log=log)[0].state_dict()
        else:
            src = load_checkpoint(spec)[0]
    except WeightsError as exc:
        raise TrainError(f"--init {spec}: {exc}") from exc
    own = model.state_dict()
    fit = {k: v.to(own[k].dtype) for k, v in src.items() if k in own and own[k].shape == v.shape}
    own.update(fit)
    model.load_state_dict(own)
    stats = {"copied": len(fit), "skipped": len(src) - len(fit), "total": len(own)}
    log(f"isr train: --init {spec}: {stats['copied']} of {stats['total']} tensors copied "
        f"({stats['skipped']} of the source did not fit: class-dependent layers start fresh).")
    return stats


def make_scheduler(optimizer: Any, a: argparse.Namespace):
    """Linear warm-up (from lr/1000) then cosine to 0, multistep, or constant; stepped every iteration."""
    import torch

    iters = a.iters
    warm = a.warmup_iters
    steps = sorted(int(s * iters) if s < 1 else int(s) for s in (a.lr_steps or []))
    schedule, gamma = a.lr_schedule, a.lr_gamma

    def factor(it: int) -> float:
        f = 1.0
        if schedule == "cosine":
            span = max(1, iters - warm)
            f = 0.5 * (1.0 + math.cos(math.pi * min(max(it - warm, 0), span) / span))
        elif schedule == "multistep":
            f = gamma ** sum(1 for s in steps if it >= s)
        if warm > 0 and it < warm:
            alpha = it / warm
            f *= 0.001 * (1 - alpha) + alpha
        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# =========================================================================== evaluation
def evaluate(
    model: Any,
    meta: Any,
    datasets: Sequence[tuple[Any, dict[int, int]]],
    *,
    device: Any = "cpu",
    score_threshold: float = 0.05,
    max_images: int = 0,
    class_agnostic: bool = True,
    workers: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """COCO metrics of ``model`` on held-out samples, through the inference path (:class:`Predictor`).

    Args:
        model (AmodalMaskRCNN), meta (ModelMeta): the model (left in eval mode) and its meta (class names,
            inference input size ``infer_min_size`` / ``infer_max_size``).
        datasets: ``(AmodalCocoDataset, category id → label map)`` pairs, full-resolution samples.
        score_threshold: detections kept (COCO-style low threshold).
        max_images: evaluate on the first this many images (spread over the sets), 0 = all.

    Returns:
        :class:`~instance_seg_ros.core.coco_eval.AmodalCocoEvaluator` metrics plus ``eval_seconds``.
    """
    import torch
    from torch.utils.data import DataLoader

    from ..core.coco_eval import AmodalCocoEvaluator
    from ..core.model import Predictor

    t0 = time.perf_counter()
    rh = model.roi_heads
    saved = (model.transform.min_size, model.transform.max_size, rh.score_thresh, rh.nms_thresh,
             rh.detections_per_img, model.training)
    pred = Predictor(model, meta, device=device, score_threshold=score_threshold, mask_threshold=0.5,
                     nms_threshold=0.5, max_instances=100)
    ev = AmodalCocoEvaluator(meta.num_classes, class_agnostic=class_agnostic or meta.num_classes == 2)
    total = sum(len(ds) for ds, _ in datasets)
    budget = max_images if max_images > 0 else total
    uid = 0
    try:
        for ds, cmap in datasets:
            n = min(len(ds), budget)
            budget -= n
            if n <= 0:
                break
            sub = ds.subset(range(n)) if n < len(ds) else ds
            loader = DataLoader(sub, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity,
                                worker_init_fn=_worker_init if workers else None,
                                generator=torch.Generator().manual_seed(0))  # keeps the global RNG as it was
            bar = _tqdm(total=n, desc="eval", disable=not progress, leave=False)
            for s in loader:
                uid += 1
                t = s.targets
                labels = [cmap.get(int(c), 1) for c in t["labels"]]
                ev.add_ground_truth(uid, masks=t["masks"], amodal_masks=t["amodal_masks"], labels=labels,
                                    iscrowd=t["iscrowd"], occlusion=t["occlusion"])
                det = pred.predict(s.color, s.depth if model.input_mode == "rgbd" else None).to("cpu")
                ev.add_predictions(uid, masks=det.masks, amodal_masks=det.amodal_masks, scores=det.scores,
                                   labels=det.labels, occlusion=det.occlusion_pred)
                bar.update(1)
            bar.close()
    finally:
        model.transform.min_size, model.transform.max_size = saved[0], saved[1]
        rh.score_thresh, rh.nms_thresh, rh.detections_per_img = saved[2], saved[3], saved[4]
        model.train(saved[5])
    metrics = ev.summarize()
    metrics["eval_seconds"] = time.perf_counter() - t0
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return metrics


# =========================================================================== logging
def _tqdm(**kw):
    from tqdm import tqdm

    return tqdm(dynamic_ncols=True, **kw)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(_json_safe(record)) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash
    return out


def _truncate_jsonl(path: Path, max_iteration: int) -> None:
    """Drop lines past ``max_iteration`` (a resumed run rewrites them)."""
    rows = _read_jsonl(path)
    if rows:
        keep = [r for r in rows if int(r.get("iteration", 0)) <= max_iteration]
        path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def plot_curves(out_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """``training_curves.png`` from ``losses.jsonl`` and ``metrics.jsonl`` in ``out_dir``: smoothed losses
    (log scale) and validation AP vs iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    path = Path(path) if path is not None else out_dir / "training_curves.png"
    losses = _read_jsonl(out_dir / "losses.jsonl")
    metrics = _read_jsonl(out_dir / "metrics.jsonl")
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.8))
    if losses:
        its = [r["iteration"] for r in losses]
        for k in ("loss", *LOSS_KEYS):
            ys = [r.get(k) for r in losses]
            if any(y is not None and y > 0 for y in ys):
                ax0.plot(its, [y if y is not None and y > 0 else float("nan") for y in ys],
                         label=k.replace("loss_", "") if k != "loss" else "total", lw=2.0 if k == "loss" else 1.0)
        ax0.set_yscale("log")
        ax0.legend(fontsize=8, ncol=2)
    ax0.set_xlabel("iteration")
    ax0.set_title("training losses (smoothed)")
    ax0.grid(alpha=0.3)
    if metrics:
        its = [r["iteration"] for r in metrics]
        for k, label in (("mask_ap", "visible AP"), ("mask_ap50", "visible AP50"), ("mask_ap75", "visible AP75"),
                         ("amodal_ap", "amodal AP"), ("amodal_ap50", "amodal AP50")):
            ax1.plot(its, [r.get(k) if r.get(k) is not None else float("nan") for r in metrics], "o-", label=label)
        ax1.set_ylim(0, 1)
        ax1.legend(fontsize=8)
    ax1.set_xlabel("iteration")
    ax1.set_title("held-out COCO mask AP")
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class Smoother:
    """Running means of the last ``window`` values per key."""

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self.values: dict[str, deque] = {}

    def update(self, **kv: float) -> None:
        for k, v in kv.items():
            self.values.setdefault(k, deque(maxlen=self.window)).append(float(v))

    def mean(self, key: str) -> float:
        v = self.values.get(key)
        return sum(v) / len(v) if v else float("nan")

    def means(self) -> dict[str, float]:
        return {k: self.mean(k) for k in self.values}


# =========================================================================== distributed
def _init_distributed(a: argparse.Namespace) -> tuple[int, int, int | None]:
    """(rank, world size, local rank or None); initializes the process group under torchrun."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = str(a.device) != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=_dt.timedelta(minutes=60))
    return rank, world, local


def _hardware(device: Any, world: int) -> str:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{world} x {name}" if world > 1 else name
    cpu = cpu_model_name()
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads" + (
        f", {world} processes" if world > 1 else "")


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    _, keys, pos, has_gauss, gauss = np.random.get_state()
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                          "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        st["cuda"] = list(torch.cuda.get_rng_state_all())
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    import numpy as np
    import torch

    if "torch" in st:
        torch.set_rng_state(st["torch"])
    if "python" in st:
        random.setstate((3, tuple(st["python"]), None))
    if "numpy" in st:
        keys, pos, has_gauss, gauss = st["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


# =========================================================================== main
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train; returns ``{"iteration", "out", "checkpoint", "best", "metrics", "export", "seconds_per_iter"}``.

    Raises:
        TrainError: bad arguments or data (what to change).
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from ..core.augment import Augment, AugmentConfig
    from ..core.model import DEPTH_MAX_M, ModelMeta, WeightsError, load_checkpoint, save_checkpoint, save_weights

    ckpt_extra: dict[str, Any] | None = None
    ckpt_state = None
    if getattr(args, "resume", None):
        try:
            ckpt_state, _, ckpt_extra = load_checkpoint(args.resume)
        except WeightsError as exc:
            raise TrainError(f"--resume: {exc}") from exc
        if "iteration" not in ckpt_extra or "optimizer" not in ckpt_extra:
            raise TrainError(f"--resume {args.resume} is a weights file, not a training checkpoint (no optimizer "
                             "state); use --init PATH to start from its weights.")
    a = resolve_args(args, ckpt_extra.get("args") if ckpt_extra else None)
    if a.warmup_iters is None:
        a.warmup_iters = min(500, a.iters // 10)
    rank, world, local_rank = _init_distributed(a)
    main_proc = rank == 0
    log = print if main_proc else (lambda *_a, **_k: None)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = _device(a, local_rank)
    if a.amp and device.type != "cuda":
        log("isr train: --amp needs CUDA; training in fp32 on the CPU.", file=sys.stderr)
        a.amp = False
    if a.lr is None:
        a.lr = 0.00125 * a.batch_size * world
    torch.manual_seed(a.seed + rank)
    random.seed(a.seed + rank)
    np.random.seed((a.seed + rank) % 2**32)

    out = Path(a.out)
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(_json_safe(vars(a)), indent=2, default=str) + "\n")

    data = load_data(a)
    classes = data["classes"]
    model = build_model(a, len(classes))
    if a.init != "none" and ckpt_state is None:
        init_weights(model, a.init, log=log)
    if ckpt_state is not None:
        try:
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt_state.items()})
        except RuntimeError as exc:
            raise TrainError(f"--resume {a.resume} does not fit the model built from its arguments: {exc}") from exc
    model.to(device)

    aug_cfg = AugmentConfig() if a.augment else AugmentConfig.none()
    train_set = TrainingSet(data["train"], data["class_maps"], input_mode=a.input_mode,
                            augment=Augment(aug_cfg, min_size=a.min_size, max_size=a.max_size),
                            depth_max_m=DEPTH_MAX_M)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
    scheduler = make_scheduler(optimizer, a)
    scaler = torch.amp.GradScaler("cuda", enabled=a.amp)
    start_iter, best = 0, {"metric": a.best_metric, "value": None, "iteration": None}
    if ckpt_extra is not None:
        optimizer.load_state_dict(ckpt_extra["optimizer"])
        if "lr_scheduler" in ckpt_extra:
            scheduler.load_state_dict(ckpt_extra["lr_scheduler"])
        if a.amp and ckpt_extra.get("scaler"):
            scaler.load_state_dict(ckpt_extra["scaler"])
        start_iter = int(ckpt_extra["iteration"])
        best = dict(ckpt_extra.get("best") or best)
        if ckpt_extra.get("rng"):
            _set_rng_state(ckpt_extra["rng"])
        log(f"isr train: resumed {a.resume} at iteration {start_iter}.")
        if main_proc:
            _truncate_jsonl(out / "losses.jsonl", start_iter)
            _truncate_jsonl(out / "metrics.jsonl", start_iter)
    elif main_proc:
        for name in ("losses.jsonl", "metrics.jsonl"):
            (out / name).unlink(missing_ok=True)

    model_without_ddp = model
    if world > 1:
        # every head takes part in every loss (empty-target losses are `logits.sum() * 0`): no unused parameters
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)

    sampler = InfiniteSampler(len(train_set), seed=a.seed, start=start_iter * a.batch_size, rank=rank,
                              world_size=world)
    loader = DataLoader(train_set, batch_size=a.batch_size, sampler=sampler, num_workers=a.workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda", worker_init_fn=_worker_init,
                        persistent_workers=a.workers > 0, prefetch_factor=4 if a.workers > 0 else None,
                        generator=torch.Generator().manual_seed(a.seed))  # leaves the global RNG alone (resume)

    hardware = _hardware(device, world)
    desc = data["description"]
    n_train = sum(d["images"] for d in desc["train"])
    n_val = sum(len(d) for d, _ in data["val"])
    training_data = "; ".join(
        f"{d['path']} ({d['images']} images" + (f", seed {d['seed']}" if "seed" in d else "") + ")"
        for d in desc["train"])

    def make_meta(metrics: dict[str, Any], iteration: int) -> ModelMeta:
        return ModelMeta.from_model(
            model_without_ddp, classes=classes, training_data=training_data,
            metrics={k: v for k, v in _json_safe(metrics).items() if v is not None},
            infer_min_size=a.min_size, infer_max_size=a.max_size,
            training={"iterations": iteration, "batch_size": a.batch_size, "processes": world, "lr": a.lr,
                      "lr_schedule": a.lr_schedule, "warmup_iters": a.warmup_iters, "weight_decay": a.weight_decay,
                      "augment": bool(a.augment), "init": a.init, "pretrained_backbone": bool(a.pretrained_backbone),
                      "amp": bool(a.amp), "seed": a.seed, "hardware": hardware, "data": desc["train"],
                      "val_data": desc["val"]},
            notes=f"isr train, {iteration} iterations x {a.batch_size * world} images on {hardware}",
        )

    def save(path: Path, iteration: int, metrics: dict[str, Any]) -> Path:
        return save_checkpoint(
            path, model_without_ddp, make_meta(metrics, iteration),
            optimizer=optimizer.state_dict(), lr_scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if a.amp else {}, args=_json_safe(vars(a)),
            epoch=(iteration * a.batch_size * world) // max(1, len(train_set)), iteration=iteration,
            rng=_rng_state(), best=best, last_metrics=_json_safe(last_metrics))

    do_eval = bool(data["val"])
    last_metrics: dict[str, Any] = dict((ckpt_extra or {}).get("last_metrics") or {})

    def run_eval(iteration: int, final: bool = False) -> dict[str, Any]:
        nonlocal last_metrics
        m = evaluate(model_without_ddp, make_meta({}, iteration), data["val"], device=device,
                     score_threshold=a.eval_score_threshold, max_images=0 if final else a.eval_max_images,
                     class_agnostic=a.class_agnostic, workers=min(a.workers, 2), progress=not a.quiet)
        last_metrics = {"iteration": iteration, **m}
        _append_jsonl(out / "metrics.jsonl", last_metrics)
        log(f"isr train: iteration {iteration}: visible AP {m['mask_ap']:.3f} AP50 {m['mask_ap50']:.3f} "
            f"AP75 {m['mask_ap75']:.3f} | amodal AP {m['amodal_ap']:.3f} AP50 {m['amodal_ap50']:.3f} | "
            f"occlusion MAE {m['occlusion_mae']:.3f} ({m['eval_seconds']:.0f} s, {int(m['num_images'])} images)")
        return m

    def maybe_best(iteration: int, m: dict[str, Any]) -> None:
        v = m.get(a.best_metric)
        if v is None or not math.isfinite(v):
            return
        lower_better = a.best_metric == "occlusion_mae"
        cur = best.get("value")
        if cur is None or (v < cur if lower_better else v > cur):
            best.update(value=float(v), iteration=iteration)
            save(out / "checkpoint_best.pt", iteration, m)

    log(f"isr train: {a.backbone} ({a.input_mode}, {len(classes) - 1} class(es)) at {a.min_size}x{a.max_size}, "
        f"{n_train} training images, {n_val} held-out, iterations "
        f"{start_iter}..{a.iters}, batch {a.batch_size} x {world}, lr {a.lr:g}, on {hardware}")

    smooth = Smoother(window=max(a.log_every, 20))
    model.train()
    it = start_iter
    bad_steps = 0
    t_start = time.perf_counter()
    t_last = t_start
    iter_times: deque = deque(maxlen=50)
    bar = _tqdm(total=a.iters, initial=start_iter, desc="train", disable=not main_proc or a.quiet)
    batches = iter(loader) if it < a.iters else iter(())
    try:
        while it < a.iters:
            t0 = time.perf_counter()
            images, targets = next(batches)
            t_data = time.perf_counter() - t0
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            with torch.autocast("cuda", dtype=torch.float16, enabled=a.amp):
                loss_dict = model(images, targets)
                loss = sum(loss_dict.values())
            vals = {k: float(v.detach()) for k, v in loss_dict.items()}
            total = float(loss.detach())
            if world > 1:
                vec = torch.tensor([total, *[vals[k] for k in sorted(vals)]], device=device)
                torch.distributed.all_reduce(vec)
                vec /= world
                total = float(vec[0])
                vals = {k: float(x) for k, x in zip(sorted(vals), vec[1:].tolist(), strict=True)}
            optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(total):
                bad_steps += 1
                log(f"isr train: iteration {it}: non-finite loss {vals}; batch skipped.", file=sys.stderr)
                if bad_steps >= 10:
                    raise TrainError(f"The loss was not finite for {bad_steps} iterations in a row at iteration {it}: "
                                     "training diverged. Lower --lr (or raise --warmup-iters) and --resume from the "
                                     "last good checkpoint.")
                it += 1
                scheduler.step()
                continue
            bad_steps = 0
            scaler.scale(loss).backward()
            if a.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, a.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            it += 1
            now = time.perf_counter()
            iter_times.append(now - t0)
            smooth.update(loss=total, data_s=t_data, iter_s=now - t0, **vals)
            if main_proc:
                bar.update(1)
                if it % 5 == 0 or it == a.iters:
                    bar.set_postfix_str(
                        f"loss {smooth.mean('loss'):.3f} mask {smooth.mean('loss_mask'):.3f} "
                        f"amodal {smooth.mean('loss_amodal_mask'):.3f} occ {smooth.mean('loss_occlusion'):.3f} "
                        f"lr {optimizer.param_groups[0]['lr']:.2g}")
                if it % a.log_every == 0 or it == a.iters:
                    rec = {"iteration": it, "lr": optimizer.param_groups[0]["lr"], **smooth.means(),
                           "raw_loss": total, "elapsed_s": now - t_start}
                    _append_jsonl(out / "losses.jsonl", rec)
                    t_last = now
            if do_eval and a.eval_every and it % a.eval_every == 0 and it < a.iters:
                if main_proc:
                    maybe_best(it, run_eval(it))
                if world > 1:
                    torch.distributed.barrier()
            if main_proc and (it % a.checkpoint_every == 0) and it < a.iters:
                save(out / "checkpoint_last.pt", it, last_metrics)
    except KeyboardInterrupt:
        if main_proc and it > start_iter:  # Ctrl-C keeps the work done: --resume continues from here
            bar.close()
            save(out / "checkpoint_last.pt", it, last_metrics)
            log(f"isr train: interrupted at iteration {it}; saved {out / 'checkpoint_last.pt'}.", file=sys.stderr)
        raise
    finally:
        bar.close()
    del t_last
    train_seconds = time.perf_counter() - t_start
    sec_per_iter = (sum(iter_times) / len(iter_times)) if iter_times else float("nan")

    result: dict[str, Any] = {"iteration": it, "out": str(out), "seconds_per_iter": sec_per_iter,
                              "train_seconds": train_seconds, "best": best, "export": None}
    if main_proc:
        m = last_metrics
        if do_eval and (last_metrics.get("iteration") != it or last_metrics.get("num_images", 0) < n_val):
            m = run_eval(it, final=True)
            maybe_best(it, m)
        elif do_eval:
            m = {k: v for k, v in last_metrics.items() if k != "iteration"}
        result["metrics"] = {k: v for k, v in m.items() if k != "iteration"}
        result["checkpoint"] = str(save(out / "checkpoint_last.pt", it, m))
        try:
            plot_curves(out)
        except Exception as exc:  # a plotting problem must not lose a finished run
            log(f"isr train: could not draw the training curves: {exc}", file=sys.stderr)
        if a.export:
            src_meta = make_meta(result["metrics"], it)
            if a.export_best and (out / "checkpoint_best.pt").is_file():
                state, bmeta, _ = load_checkpoint(out / "checkpoint_best.pt")
                from ..core.model.weights import _load_state_strict

                export_model = bmeta.build_model()
                _load_state_strict(export_model, state, str(out / "checkpoint_best.pt"))
                src_meta = bmeta
            else:
                export_model = model_without_ddp
            result["export"] = str(save_weights(a.export, export_model, src_meta, half=True))
            log(f"isr train: exported {result['export']} ({Path(result['export']).stat().st_size / 1e6:.1f} MB).")
        log(f"isr train: {it} iterations, {sec_per_iter:.2f} s/iteration (last 50), checkpoint "
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
