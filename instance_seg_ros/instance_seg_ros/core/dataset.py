"""COCO-style amodal instance segmentation datasets (``isr synth`` output, KINS, COCOA) as numpy samples.

Annotation keys understood (per annotation; polygons, compressed or uncompressed RLE everywhere):

- ``isr synth`` / generic: ``segmentation`` = visible mask, ``amodal_segmentation`` = amodal mask.
- KINS: ``inmodal_seg`` (or ``i_segm``) = visible, ``segmentation`` (or ``a_segm``) = amodal.
- COCOA-style conversions: ``visible_mask`` = visible, ``segmentation`` = amodal.
- Original COCOA (``regions`` inside an annotation): each region is one instance, its
  ``segmentation`` amodal and its ``visible_mask`` visible (absent = not occluded).
- Plain COCO (no amodal key): amodal = visible, and ``targets["has_amodal"]`` is False.

Per image, :class:`AmodalCocoDataset` returns an :class:`AmodalSample`: RGB uint8, depth float32
meters (NaN invalid) when the image names a ``depth_file`` (or ``<root>/depth/<file name>`` exists),
:class:`Intrinsics` when the image has ``intrinsics``, and numpy targets. Importing this module does not
import torch (the mask boxes come from the numpy-only :mod:`~instance_seg_ros.core.masks`).

Example::

    ds = AmodalCocoDataset("data/synth")            # a directory with annotations.json, or the json
    train, val = ds.split(0.1, seed=0)              # images of one scene stay on one side
    sample = train[0]; sample.targets["amodal_masks"].shape  # (N, H, W) uint8
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .masks import mask_bboxes
from .types import Intrinsics

__all__ = [
    "AmodalCocoDataset",
    "AmodalSample",
    "DatasetError",
    "collate",
    "decode_segmentation",
    "target_boxes",
]


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message says which and what was expected."""


@dataclass
class AmodalSample:
    """One image and its instances.

    Attributes:
        image_id (int): the COCO image id.
        file_name (str): the color image path as written in the JSON.
        color (np.ndarray[H, W, 3] uint8): RGB.
        depth (np.ndarray[H, W] float32 | None): meters, NaN invalid.
        intrinsics (Intrinsics | None): the pinhole model, when the JSON has it.
        targets (dict[str, np.ndarray]): ``boxes`` float32[N, 4] (x1, y1, x2, y2; of the visible mask),
            ``amodal_boxes`` float32[N, 4], ``labels`` int64[N], ``masks`` uint8[N, H, W] (visible),
            ``amodal_masks`` uint8[N, H, W], ``occlusion`` float32[N], ``areas`` float32[N] (visible pixels),
            ``amodal_areas`` float32[N], ``iscrowd`` int64[N], ``has_amodal`` bool[N]
            (False where the source had no amodal mask), ``annotation_ids`` int64[N].
        info (dict): the raw COCO image entry.
    """

    image_id: int
    file_name: str
    color: np.ndarray
    depth: np.ndarray | None
    intrinsics: Intrinsics | None
    targets: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- masks
def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygon list, compressed RLE with str/bytes counts, or uncompressed RLE with a
    list of counts) as uint8[H, W] in {0, 1}; ``None`` or an empty polygon list is an empty mask.

    Decoded by :func:`~instance_seg_ros.core.coco_eval.decode_segmentation`; what the annotation files allow
    beyond it (no segmentation, an RLE without ``size``) and every refusal are this module's.

    Raises:
        DatasetError: a malformed polygon, an RLE of another size, or something that is neither.
    """
    from .coco_eval import CocoInputError as EvalError
    from .coco_eval import decode_segmentation as decode

    if seg is None:
        return np.zeros((height, width), dtype=np.uint8)
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, (list, tuple)) and len(p) >= 6]
        if len(polys) != len(seg):
            raise DatasetError("A polygon segmentation must be a list of [x1, y1, x2, y2, ...] lists of >= 3 points.")
        if not polys:
            return np.zeros((height, width), dtype=np.uint8)
    elif isinstance(seg, dict) and "counts" in seg:
        size = seg.get("size", [height, width])
        if list(size) != [height, width]:
            raise DatasetError(f"RLE size {list(size)} does not match the image size [{height}, {width}].")
        seg = {"size": [height, width], "counts": seg["counts"]}
    else:
        raise DatasetError(f"Unsupported segmentation of type {type(seg).__name__}; expected polygons or RLE.")
    try:
        return decode(seg, height, width).astype(np.uint8)
    except EvalError as exc:
        raise DatasetError(str(exc)) from exc


def _visible_and_amodal(ann: dict[str, Any]) -> tuple[Any, Any, bool]:
    """(visible segmentation, amodal segmentation or None, amodal known) of one annotation."""
    if "amodal_segmentation" in ann:
        return ann.get("segmentation"), ann["amodal_segmentation"], True
    for key in ("inmodal_seg", "i_segm", "visible_mask"):
        if key in ann:
            return ann[key], ann.get("a_segm", ann.get("segmentation")), True
    if "a_segm" in ann:  # amodal only: visible = amodal minus the invisible part, if given
        return None, ann["a_segm"], True
    return ann.get("segmentation"), None, False


def _flatten_cocoa_regions(anns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Original COCOA: one annotation per image holding ``regions``; make one annotation per region."""
    out = []
    for ann in anns:
        if "regions" not in ann:
            out.append(ann)
            continue
        for j, region in enumerate(ann["regions"]):
            amodal = region.get("segmentation")
            if isinstance(amodal, list) and amodal and not isinstance(amodal[0], list):
                amodal = [amodal]  # COCOA stores one flat polygon
            out.append({
                "id": ann.get("id", 0) * 1000 + j, "image_id": ann["image_id"],
                "category_id": region.get("category_id", 1), "iscrowd": 0,
                "segmentation": amodal, "visible_mask": region.get("visible_mask", amodal),
                "object_name": region.get("name", ""),
            })
    return out


def target_boxes(masks: np.ndarray) -> np.ndarray:
    """The ``boxes`` / ``amodal_boxes`` of :class:`AmodalSample` targets: float32[N, 4] ``(x1, y1, x2, y2)`` of
    [N, H, W] masks, x2 / y2 exclusive, zeros for an empty mask (:func:`~instance_seg_ros.core.masks.mask_bboxes`
    as torchvision wants them)."""
    boxes = mask_bboxes(masks).astype(np.float32)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


# ---------------------------------------------------------------------------------------- dataset
class AmodalCocoDataset:
    """An indexable dataset of :class:`AmodalSample` over a COCO-style amodal JSON.

    Args:
        root_or_json: a directory holding ``annotations.json`` (``isr synth`` output) or a JSON file.
        image_root: where ``file_name`` paths start; default the JSON's directory (then ``<dir>/images``).
        load_depth: read depth images when available.
        min_visible_area: drop instances whose decoded visible mask has fewer pixels.
        skip_crowd: drop ``iscrowd`` annotations (otherwise they are kept with ``iscrowd = 1``).
        skip_empty: drop images without any instance left.
        transforms: ``f(sample) -> anything``, applied by ``__getitem__`` (e.g. :func:`to_torch`).
    """

    def __init__(
        self,
        root_or_json: str | Path,
        *,
        image_root: str | Path | None = None,
        load_depth: bool = True,
        min_visible_area: int = 1,
        skip_crowd: bool = False,
        skip_empty: bool = False,
        transforms: Callable[[AmodalSample], Any] | None = None,
    ) -> None:
        path = Path(root_or_json)
        json_path = path / "annotations.json" if path.is_dir() else path
        if not json_path.is_file():
            raise DatasetError(f"No annotation file at {json_path}; pass a JSON file or a directory with "
                               "annotations.json (as written by `isr synth`).")
        try:
            coco = json.loads(json_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"Cannot read {json_path}: {exc}") from exc
        if not isinstance(coco, dict) or "images" not in coco or "annotations" not in coco:
            raise DatasetError(f"{json_path} is not a COCO file: it needs 'images' and 'annotations' lists.")
        self.json_path = json_path
        self.root = Path(image_root) if image_root is not None else json_path.parent
        self.load_depth = load_depth
        self.min_visible_area = int(min_visible_area)
        self.skip_crowd = skip_crowd
        self.transforms = transforms
        self.info = coco.get("info", {}) or {}
        self.categories: list[dict[str, Any]] = coco.get("categories", [])
        self._images = {int(im["id"]): im for im in coco["images"]}
        self._anns: dict[int, list[dict[str, Any]]] = {i: [] for i in self._images}
        for ann in _flatten_cocoa_regions(coco["annotations"]):
            img = int(ann.get("image_id", -1))
            if img not in self._anns:
                raise DatasetError(f"Annotation {ann.get('id')} refers to image {img}, which is not in 'images'.")
            if skip_crowd and ann.get("iscrowd", 0):
                continue
            self._anns[img].append(ann)
        ids = sorted(self._images)
        if skip_empty:
            ids = [i for i in ids if self._anns[i]]
        self.image_ids: list[int] = ids

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.image_ids)

    def subset(self, indices: Sequence[int]) -> AmodalCocoDataset:
        """A dataset over ``self[indices]`` (shares the parsed annotations)."""
        n = len(self.image_ids)
        bad = [i for i in indices if not -n <= int(i) < n]
        if bad:
            raise DatasetError(f"subset indices {bad[:5]} are out of range for a dataset of {n} images.")
        out = copy.copy(self)
        out.image_ids = [self.image_ids[int(i)] for i in indices]
        return out

    def split(self, held_out_fraction: float, seed: int = 0) -> tuple[AmodalCocoDataset, AmodalCocoDataset]:
        """``(train, held_out)``: a random, seeded split by image, keeping the views of one scene (same
        ``scene_seed``) together so that held-out scenes are really unseen. At least one group is held out
        when the fraction is positive."""
        if not 0.0 <= held_out_fraction < 1.0:
            raise DatasetError(f"held_out_fraction must be within [0, 1), got {held_out_fraction!r}.")
        groups: dict[Any, list[int]] = {}
        for idx, img_id in enumerate(self.image_ids):
            im = self._images[img_id]
            groups.setdefault(im.get("scene_seed", ("image", img_id)), []).append(idx)
        keys = list(groups)
        order = np.random.default_rng(seed).permutation(len(keys))
        n_held = min(len(keys) - 1, max(1, round(held_out_fraction * len(keys)))) if held_out_fraction > 0 else 0
        held_keys = {keys[int(i)] for i in order[:n_held]}
        held = sorted(i for k in held_keys for i in groups[k])
        train = sorted(i for k in keys if k not in held_keys for i in groups[k])
        return self.subset(train), self.subset(held)

    def image_info(self, index: int) -> dict[str, Any]:
        return self._images[self.image_ids[index]]

    def annotations(self, index: int) -> list[dict[str, Any]]:
        """The raw COCO annotations of image ``index``."""
        return self._anns[self.image_ids[index]]

    # ------------------------------------------------------------------ loading
    def _read_color(self, im: dict[str, Any]) -> np.ndarray:
        import cv2

        path = self._resolve(im["file_name"])
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"Cannot read the image {path} (image id {im['id']}).")
        return np.ascontiguousarray(bgr[..., ::-1])

    def _resolve(self, name: str) -> Path:
        p = Path(name)
        if p.is_absolute():
            return p
        for base in (self.root, self.root / "images"):
            if (base / p).is_file():
                return base / p
        return self.root / p

    def _read_depth(self, im: dict[str, Any]) -> np.ndarray | None:
        import cv2

        name = im.get("depth_file")
        if name is None:
            guess = self.root / "depth" / Path(im["file_name"]).name
            if not guess.is_file():
                return None
            path = guess
        else:
            path = self._resolve(name)
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise DatasetError(f"Cannot read the depth image {path} (image id {im['id']}).")
        if raw.ndim != 2:
            raise DatasetError(f"Depth image {path} must have one channel, got shape {raw.shape}.")
        if raw.dtype == np.uint16:
            scale = float(im.get("depth_scale", self.info.get("depth_scale", 0.001)))
            depth = (raw * scale).astype(np.float32)
            depth[raw == 0] = np.nan
        else:
            depth = raw.astype(np.float32)
            depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
        return depth

    @staticmethod
    def _intrinsics(im: dict[str, Any], h: int, w: int) -> Intrinsics | None:
        k = im.get("intrinsics")
        if not k:
            return None
        if isinstance(k, dict):
            return Intrinsics(float(k["fx"]), float(k["fy"]), float(k["cx"]), float(k["cy"]), w, h)
        return Intrinsics.from_k(k, w, h)

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images.")
        img_id = self.image_ids[index]
        im = self._images[img_id]
        color = self._read_color(im)
        h, w = color.shape[:2]
        if ("height" in im and int(im["height"]) != h) or ("width" in im and int(im["width"]) != w):
            raise DatasetError(
                f"Image {img_id} is {w}x{h} on disk but {im.get('width')}x{im.get('height')} in the JSON."
            )
        depth = self._read_depth(im) if self.load_depth else None
        if depth is not None and depth.shape != (h, w):
            raise DatasetError(f"Depth of image {img_id} is {depth.shape[::-1]} but the color image is {(w, h)}.")
        sample = AmodalSample(img_id, im["file_name"], color, depth, self._intrinsics(im, h, w),
                              self._targets(self._anns[img_id], h, w), im)
        return self.transforms(sample) if self.transforms is not None else sample

    def _targets(self, anns: list[dict[str, Any]], h: int, w: int) -> dict[str, np.ndarray]:
        vis_l, amo_l, cats, crowd, known, ids = [], [], [], [], [], []
        for ann in anns:
            vis_seg, amo_seg, has_amodal = _visible_and_amodal(ann)
            amodal = decode_segmentation(amo_seg, h, w) if amo_seg is not None else None
            if vis_seg is None:
                visible = amodal.copy()
                if "invisible_mask" in ann:
                    visible &= 1 - decode_segmentation(ann["invisible_mask"], h, w)
            else:
                visible = decode_segmentation(vis_seg, h, w)
            if amodal is None:
                amodal = visible.copy()
            amodal |= visible  # the amodal mask contains the visible one by definition
            if int(visible.sum()) < self.min_visible_area:
                continue
            vis_l.append(visible)
            amo_l.append(amodal)
            cats.append(int(ann.get("category_id", 1)))
            crowd.append(int(ann.get("iscrowd", 0)))
            known.append(has_amodal)
            ids.append(int(ann.get("id", -1)))
        n = len(vis_l)
        masks = np.stack(vis_l) if n else np.zeros((0, h, w), np.uint8)
        amodal_masks = np.stack(amo_l) if n else np.zeros((0, h, w), np.uint8)
        areas = masks.sum(axis=(1, 2)).astype(np.float32)
        amodal_areas = amodal_masks.sum(axis=(1, 2)).astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            occlusion = np.where(amodal_areas > 0, 1.0 - areas / np.maximum(amodal_areas, 1), 0.0).astype(np.float32)
        return {
            "boxes": target_boxes(masks),
            "amodal_boxes": target_boxes(amodal_masks),
            "labels": np.asarray(cats, dtype=np.int64),
            "masks": masks,
            "amodal_masks": amodal_masks,
            "occlusion": occlusion,
            "areas": areas,
            "amodal_areas": amodal_areas,
            "iscrowd": np.asarray(crowd, dtype=np.int64),
            "has_amodal": np.asarray(known, dtype=bool),
            "annotation_ids": np.asarray(ids, dtype=np.int64),
        }


# ---------------------------------------------------------------------------------------- torch
def collate(batch: Sequence[Any]) -> tuple[Any, ...]:
    """The torchvision detection collate: a batch of ``(image, targets)`` pairs -> ``(images, targets)`` tuples."""
    return tuple(zip(*batch, strict=True))
