"""``isr train``'s engine: the model and optimizer, one training step, the training loop, evaluation on the
held-out sets, checkpoints, and the process setup (device, ``torchrun`` process group, RNG state).

Like torchvision's ``references/detection/engine.py``: :func:`train_step` is one iteration (forward, loss,
backward, clipped SGD step, scheduler step); :func:`train_loop` runs iterations and calls the periodic
evaluation and checkpoints of :class:`Checkpoints`; :func:`evaluate` scores a model through the inference path.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .machine import cpu_model_name
from .train_data import TrainError, eval_loader
from .train_log import RunLog, append_jsonl, json_safe, progress_bar

__all__ = [
    "Checkpoints",
    "Optimization",
    "build_model",
    "evaluate",
    "hardware_name",
    "init_distributed",
    "init_weights",
    "make_optimization",
    "make_scheduler",
    "rng_state",
    "select_device",
    "set_rng_state",
    "train_loop",
    "train_step",
    "wrap_distributed",
]


# =========================================================================== model and optimizer
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
    elif a.init != "none":  # fine-tuning our own model: keep its BatchNorm and freezing as it was trained
        from ..core.model import WeightsError, load_checkpoint

        try:
            built = load_checkpoint(a.init)[1].builder_kwargs
        except WeightsError as exc:
            raise TrainError(f"--init {a.init}: {exc}") from exc
        if built.get("frozen_bn") is not None:
            kw["frozen_bn"] = bool(built["frozen_bn"])
        if a.trainable_backbone_layers is None and built.get("trainable_backbone_layers") is not None:
            kw["trainable_backbone_layers"] = int(built["trainable_backbone_layers"])
    try:
        return build_amodal_maskrcnn(**kw)
    except ValueError as exc:
        raise TrainError(f"Cannot build the model: {exc}") from exc


def init_weights(model: Any, spec: str, log=print) -> dict[str, int]:
    """Copy into ``model`` every tensor of ``spec`` (``coco`` or a checkpoint path) whose name and shape fit;
    returns ``{"copied", "skipped", "total"}``."""
    import torch

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
    widened = {}
    for k, v in src.items():  # an RGB model's first convolution into an RGB-D model: the depth filter starts at 0
        t = own.get(k)
        if (k not in fit and t is not None and t.ndim == v.ndim == 4 and t.shape[0] == v.shape[0]
                and t.shape[2:] == v.shape[2:] and t.shape[1] > v.shape[1]):
            w = torch.zeros_like(t)
            w[:, :v.shape[1]] = v.to(t.dtype)
            widened[k] = w
    own.update(fit)
    own.update(widened)
    model.load_state_dict(own)
    copied = len(fit) + len(widened)
    stats = {"copied": copied, "widened": len(widened), "skipped": len(src) - copied, "total": len(own)}
    log(f"isr train: --init {spec}: {copied} of {stats['total']} tensors copied "
        f"({len(widened)} input convolution(s) widened with zero weights for the new channels; "
        f"{stats['skipped']} of the source did not fit: class-dependent layers start fresh).")
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


@dataclass
class Optimization:
    """What :func:`train_step` updates: the trainable ``params``, SGD, the LR schedule and the AMP GradScaler."""

    params: list[Any]
    optimizer: Any
    scheduler: Any
    scaler: Any

    def load_state_dict(self, extra: dict[str, Any], amp: bool) -> None:
        """Restore from a training checkpoint's ``optimizer`` / ``lr_scheduler`` / ``scaler`` entries."""
        self.optimizer.load_state_dict(extra["optimizer"])
        if "lr_scheduler" in extra:
            self.scheduler.load_state_dict(extra["lr_scheduler"])
        if amp and extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])


def make_optimization(model: Any, a: argparse.Namespace) -> Optimization:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
    return Optimization(params, optimizer, make_scheduler(optimizer, a), torch.amp.GradScaler("cuda", enabled=a.amp))


def wrap_distributed(model: Any, device: Any, world: int) -> Any:
    """``model`` in DistributedDataParallel under torchrun (``world`` > 1), else ``model`` itself."""
    import torch

    if world <= 1:
        return model
    # every head takes part in every loss (empty-target losses are `logits.sum() * 0`): no unused parameters
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)


# =========================================================================== one step, the loop
def train_step(model: Any, images: Sequence[Any], targets: Sequence[dict[str, Any]], opt: Optimization, *,
               device: Any, amp: bool, clip_grad: float, world: int = 1) -> tuple[float, dict[str, float]]:
    """One training iteration on one batch; returns ``(total loss, {loss name: value})`` (means over the
    ``world`` processes).

    Forward (fp16 autocast with ``amp``), backward, gradient norm clipped to ``clip_grad`` (0 = off), SGD step,
    scheduler step. A non-finite total loss skips the update (the scheduler still steps); the caller decides
    whether training diverged.
    """
    import torch

    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
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
    opt.optimizer.zero_grad(set_to_none=True)
    if math.isfinite(total):
        opt.scaler.scale(loss).backward()
        if clip_grad > 0:
            opt.scaler.unscale_(opt.optimizer)
            torch.nn.utils.clip_grad_norm_(opt.params, clip_grad)
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
    opt.scheduler.step()
    return total, vals


def train_loop(model: Any, loader: Any, opt: Optimization, ckpts: Checkpoints, runlog: RunLog, a: argparse.Namespace,
               *, start_iter: int, device: Any, world: int, log: Callable[..., Any]) -> int:
    """Iterations ``start_iter..a.iters`` with the periodic evaluation and ``checkpoint_last.pt`` of ``ckpts``;
    returns the iteration reached. Ten non-finite losses in a row raise :class:`TrainError`; Ctrl-C saves
    ``checkpoint_last.pt`` (``--resume`` continues from it) and re-raises."""
    import torch

    main_proc = ckpts.main_proc
    it = start_iter
    bad_steps = 0
    batches = iter(loader) if it < a.iters else iter(())
    try:
        while it < a.iters:
            t0 = time.perf_counter()
            images, targets = next(batches)
            t_data = time.perf_counter() - t0
            total, vals = train_step(model, images, targets, opt, device=device, amp=a.amp, clip_grad=a.clip_grad,
                                     world=world)
            it += 1
            if not math.isfinite(total):
                bad_steps += 1
                log(f"isr train: iteration {it - 1}: non-finite loss {vals}; batch skipped.", file=sys.stderr)
                if bad_steps >= 10:
                    raise TrainError(f"The loss was not finite for {bad_steps} iterations in a row at iteration "
                                     f"{it - 1}: training diverged. Lower --lr (or raise --warmup-iters) and --resume "
                                     "from the last good checkpoint.")
                continue
            bad_steps = 0
            now = time.perf_counter()
            runlog.step(it, total=total, losses=vals, lr=opt.optimizer.param_groups[0]["lr"], t_data=t_data,
                        t_iter=now - t0, now=now)
            if ckpts.do_eval and a.eval_every and it % a.eval_every == 0 and it < a.iters:
                if main_proc:
                    ckpts.keep_if_best(it, ckpts.evaluate(it))
                if world > 1:
                    torch.distributed.barrier()
            if main_proc and (it % a.checkpoint_every == 0) and it < a.iters:
                ckpts.save("checkpoint_last.pt", it, ckpts.last_metrics)
    except KeyboardInterrupt:
        if main_proc and it > start_iter:  # Ctrl-C keeps the work done: --resume continues from here
            runlog.close()
            ckpts.save("checkpoint_last.pt", it, ckpts.last_metrics)
            log(f"isr train: interrupted at iteration {it}; saved {ckpts.out / 'checkpoint_last.pt'}.", file=sys.stderr)
        raise
    finally:
        runlog.close()
    return it


# =========================================================================== checkpoints and evaluation
class Checkpoints:
    """The files of one run besides the losses: ``checkpoint_last.pt``, ``checkpoint_best.pt`` (best
    ``a.best_metric`` so far) and ``metrics.jsonl``, and the :class:`ModelMeta` every weights file carries.

    A checkpoint is torchvision's ``{model, optimizer, lr_scheduler, args, epoch}`` plus ``scaler``,
    ``iteration``, ``rng``, ``best`` and ``last_metrics``, in full precision.
    """

    def __init__(self, a: argparse.Namespace, out: Path, model: Any, opt: Optimization, data: dict[str, Any], *,
                 device: Any, world: int, train_size: int, main_proc: bool, log: Callable[..., Any],
                 extra: dict[str, Any] | None = None) -> None:
        self.a, self.out, self.model, self.opt, self.data = a, Path(out), model, opt, data
        self.device, self.world, self.train_size, self.main_proc, self.log = device, world, train_size, main_proc, log
        self.hardware = hardware_name(device, world)
        self.best: dict[str, Any] = {"metric": a.best_metric, "value": None, "iteration": None}
        if extra is not None:
            self.best = dict(extra.get("best") or self.best)
        self.last_metrics: dict[str, Any] = dict((extra or {}).get("last_metrics") or {})
        self.do_eval = bool(data["val"])
        self.n_val = sum(len(d) for d, _ in data["val"])

    def meta(self, metrics: dict[str, Any], iteration: int):
        """The :class:`ModelMeta` of the weights at ``iteration`` with ``metrics``."""
        from ..core.model import ModelMeta

        a, desc = self.a, self.data["description"]
        training_data = "; ".join(
            f"{d['path']} ({d['images']} images" + (f", seed {d['seed']}" if "seed" in d else "") + ")"
            for d in desc["train"])
        return ModelMeta.from_model(
            self.model, classes=self.data["classes"], training_data=training_data,
            metrics={k: v for k, v in json_safe(metrics).items() if v is not None},
            infer_min_size=a.min_size, infer_max_size=a.max_size,
            training={"iterations": iteration, "batch_size": a.batch_size, "processes": self.world, "lr": a.lr,
                      "lr_schedule": a.lr_schedule, "warmup_iters": a.warmup_iters, "weight_decay": a.weight_decay,
                      "augment": bool(a.augment), "init": a.init, "pretrained_backbone": bool(a.pretrained_backbone),
                      "amp": bool(a.amp), "seed": a.seed, "hardware": self.hardware, "data": desc["train"],
                      "val_data": desc["val"]},
            notes=f"isr train, {iteration} iterations x {a.batch_size * self.world} images on {self.hardware}",
        )

    def save(self, name: str, iteration: int, metrics: dict[str, Any]) -> Path:
        """Write the checkpoint ``out/name`` at ``iteration``."""
        from ..core.model import save_checkpoint

        a, opt = self.a, self.opt
        return save_checkpoint(
            self.out / name, self.model, self.meta(metrics, iteration),
            optimizer=opt.optimizer.state_dict(), lr_scheduler=opt.scheduler.state_dict(),
            scaler=opt.scaler.state_dict() if a.amp else {}, args=json_safe(vars(a)),
            epoch=(iteration * a.batch_size * self.world) // max(1, self.train_size), iteration=iteration,
            rng=rng_state(), best=self.best, last_metrics=json_safe(self.last_metrics))

    def evaluate(self, iteration: int, final: bool = False) -> dict[str, Any]:
        """Score the model on the held-out sets (``final``: all their images), log it and append it to
        ``metrics.jsonl``."""
        a = self.a
        m = evaluate(self.model, self.meta({}, iteration), self.data["val"], device=self.device,
                     score_threshold=a.eval_score_threshold, max_images=0 if final else a.eval_max_images,
                     class_agnostic=a.class_agnostic, workers=min(a.workers, 2), progress=not a.quiet)
        self.last_metrics = {"iteration": iteration, **m}
        append_jsonl(self.out / "metrics.jsonl", self.last_metrics)
        self.log(f"isr train: iteration {iteration}: visible AP {m['mask_ap']:.3f} AP50 {m['mask_ap50']:.3f} "
                 f"AP75 {m['mask_ap75']:.3f} | amodal AP {m['amodal_ap']:.3f} AP50 {m['amodal_ap50']:.3f} | "
                 f"occlusion MAE {m['occlusion_mae']:.3f} ({m['eval_seconds']:.0f} s, {int(m['num_images'])} images)")
        return m

    def keep_if_best(self, iteration: int, m: dict[str, Any]) -> None:
        """Write ``checkpoint_best.pt`` when ``m`` beats the best ``a.best_metric`` so far."""
        v = m.get(self.a.best_metric)
        if v is None or not math.isfinite(v):
            return
        lower_better = self.a.best_metric == "occlusion_mae"
        cur = self.best.get("value")
        if cur is None or (v < cur if lower_better else v > cur):
            self.best.update(value=float(v), iteration=iteration)
            self.save("checkpoint_best.pt", iteration, m)

    def final_metrics(self, iteration: int) -> dict[str, Any]:
        """The metrics at the end: a full evaluation unless the last one was of this iteration on all images."""
        last = self.last_metrics
        if self.do_eval and (last.get("iteration") != iteration or last.get("num_images", 0) < self.n_val):
            m = self.evaluate(iteration, final=True)
            self.keep_if_best(iteration, m)
            return m
        if self.do_eval:
            return {k: v for k, v in last.items() if k != "iteration"}
        return last


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
            bar = progress_bar(total=n, desc="eval", disable=not progress, leave=False)
            for s in eval_loader(sub, workers):
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


# =========================================================================== process: device, torchrun, RNG
def init_distributed(a: argparse.Namespace) -> tuple[int, int, int | None]:
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


def select_device(a: argparse.Namespace, local_rank: int | None):
    """``a.device`` as a ``torch.device``; under torchrun ``auto`` / ``cuda`` is this process's GPU."""
    import torch

    from ..core.model import resolve_device

    if local_rank is not None and str(a.device) in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    try:
        return resolve_device(a.device)
    except ValueError as exc:
        raise TrainError(str(exc)) from exc


def hardware_name(device: Any, world: int) -> str:
    """What the run trains on, in words (stored in the weights' meta)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{world} x {name}" if world > 1 else name
    cpu = cpu_model_name()
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads" + (
        f", {world} processes" if world > 1 else "")


def rng_state() -> dict[str, Any]:
    """The torch, Python, numpy (and CUDA) global RNG states, as a checkpoint stores them."""
    import numpy as np
    import torch

    _, keys, pos, has_gauss, gauss = np.random.get_state()
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                          "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        st["cuda"] = list(torch.cuda.get_rng_state_all())
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
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
