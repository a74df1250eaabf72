"""``isr train``'s data: the training and held-out sets, the seeded sample stream and the DataLoaders.

Data loading (PNG decode, RLE decode, augmentation, resize to the network input size) runs in ``--workers``
DataLoader processes; the samples arrive already at network size. The sample order and every augmentation are
a function of ``--seed`` and the sample's position in the run (:class:`InfiniteSampler`), so a resumed run
sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = [
    "InfiniteSampler",
    "TrainError",
    "TrainingSet",
    "eval_loader",
    "load_data",
    "train_loader",
    "training_set",
]


class TrainError(ValueError):
    """Bad ``isr train`` arguments or data; the message says what to change.

    Defined here, in the module every other ``train*`` module imports, so that under
    ``torchrun -m instance_seg_ros.tools.train`` (where ``train.py`` runs as ``__main__``) the error raised and
    the error caught are one class.
    """


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


# =========================================================================== the data sets
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


def training_set(a: argparse.Namespace, data: dict[str, Any]) -> TrainingSet:
    """The augmented training samples of :func:`load_data`'s sets at the network input size of ``a``."""
    from ..core.augment import Augment, AugmentConfig
    from ..core.model import DEPTH_MAX_M

    aug_cfg = AugmentConfig() if a.augment else AugmentConfig.none()
    if a.augment and getattr(a, "modality_dropout", 0.0):
        aug_cfg = dataclasses.replace(aug_cfg, modality_dropout=a.modality_dropout)
    return TrainingSet(data["train"], data["class_maps"], input_mode=a.input_mode,
                       augment=Augment(aug_cfg, min_size=a.min_size, max_size=a.max_size), depth_max_m=DEPTH_MAX_M)


# =========================================================================== loaders
def _identity(x):
    return x


def _worker_init(_worker_id: int) -> None:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def train_loader(train_set: TrainingSet, a: argparse.Namespace, *, start_iter: int, rank: int, world: int,
                 device: Any):
    """The endless DataLoader of this rank's batches, from iteration ``start_iter`` on (``a.batch_size`` per batch)."""
    import torch
    from torch.utils.data import DataLoader

    from ..core.dataset import collate

    sampler = InfiniteSampler(len(train_set), seed=a.seed, start=start_iter * a.batch_size, rank=rank,
                              world_size=world)
    return DataLoader(train_set, batch_size=a.batch_size, sampler=sampler, num_workers=a.workers,
                      collate_fn=collate, pin_memory=device.type == "cuda", worker_init_fn=_worker_init,
                      persistent_workers=a.workers > 0, prefetch_factor=4 if a.workers > 0 else None,
                      generator=torch.Generator().manual_seed(a.seed))  # leaves the global RNG alone (resume)


def eval_loader(ds: Any, workers: int):
    """The held-out samples of ``ds`` one by one, full resolution, in order."""
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity,
                      worker_init_fn=_worker_init if workers else None,
                      generator=torch.Generator().manual_seed(0))  # keeps the global RNG as it was
