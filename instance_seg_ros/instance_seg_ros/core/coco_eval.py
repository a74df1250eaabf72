"""COCO mask AP of visible and amodal masks (pycocotools), plus occlusion error, in memory.

One :class:`AmodalCocoEvaluator` collects ground truth and predictions image by image (masks are
RLE-encoded as they arrive, so memory stays small) and :meth:`~AmodalCocoEvaluator.summarize`
runs ``COCOeval(iouType="segm")`` twice: on visible masks and on amodal masks.

Metrics (floats; ``nan`` where COCO has no answer, e.g. no ground truth):

- ``mask_ap``, ``mask_ap50``, ``mask_ap75``, ``mask_ap_small/medium/large``, ``mask_ar100``: visible masks;
- ``amodal_ap``, ``amodal_ap50``, ``amodal_ap75``, ``amodal_ar100``: amodal masks (GT area = amodal area);
- ``occlusion_mae``: mean |predicted - true| hidden fraction over detections matched to a ground-truth
  object at visible-mask IoU ≥ 0.5 (COCO's greedy matching); ``occlusion_matched``: how many;
- ``num_images``, ``num_gt``, ``num_dets``.

Used by ``isr train`` (held-out split through the :class:`~.model.Predictor`) and the rosbag
evaluator (:meth:`~AmodalCocoEvaluator.add_frame_result`).

Example::

    ev = AmodalCocoEvaluator()
    ev.add_ground_truth(1, masks=gt_vis, amodal_masks=gt_amo)            # bool/uint8 [G, H, W]
    ev.add_predictions(1, masks=vis, amodal_masks=amo, scores=scores)    # [N, H, W], [N]
    ev.summarize()["mask_ap50"]
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from typing import Any

import numpy as np

__all__ = ["METRIC_KEYS", "AmodalCocoEvaluator", "CocoInputError", "decode_segmentation", "encode_masks"]

_STAT_NAMES = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100")
METRIC_KEYS = (
    *(f"mask_{n}" for n in _STAT_NAMES),
    *(f"amodal_{n}" for n in _STAT_NAMES),
    "occlusion_mae",
    "occlusion_matched",
    "num_images",
    "num_gt",
    "num_dets",
)


class CocoInputError(ValueError):
    """Input to the COCO evaluator or to :func:`decode_segmentation` is malformed (masks, labels, scores, a COCO
    segmentation); the message says what was expected."""


def _numpy(a: Any, name: str) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    return a


def encode_masks(masks: Any) -> list[dict[str, Any]]:
    """Binary masks ([N, H, W], bool / uint8 / torch) → COCO compressed RLEs (``counts`` as str)."""
    from pycocotools import mask as mask_utils

    m = _numpy(masks, "masks")
    if m.ndim != 3:
        raise CocoInputError(f"masks must be [N, H, W], got shape {m.shape}.")
    if m.shape[0] == 0:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        rles = mask_utils.encode(np.asfortranarray((m != 0).transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygon list, uncompressed RLE with a ``counts`` list, or compressed RLE with
    ``counts`` as str / bytes) → np.ndarray[height, width] bool.

    Raises:
        CocoInputError: it is none of these, cannot be decoded, or decodes to another size (the message says which).
    """
    from pycocotools import mask as mask_utils

    h, w = int(height), int(width)
    try:
        if isinstance(seg, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects([list(map(float, p)) for p in seg], h, w))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, h, w)
        elif isinstance(seg, dict):
            counts = seg["counts"]
            rle = {"size": list(seg["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise TypeError(f"a segmentation is a polygon list or an RLE dict, got {type(seg).__name__}")
        with warnings.catch_warnings():  # pycocotools vs numpy 2's copy keyword
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode(rle)
    except (TypeError, KeyError, ValueError) as exc:
        raise CocoInputError(f"a segmentation cannot be decoded ({exc}).") from exc
    if m.shape[:2] != (h, w):
        raise CocoInputError(f"a segmentation is {m.shape[1]}x{m.shape[0]} but its image is {w}x{h}.")
    return m.reshape(h, w).astype(bool)


class AmodalCocoEvaluator:
    """Collect ground truth and predictions; :meth:`summarize` computes the metrics in the module docstring.

    Args:
        num_classes (int): including the background; labels are 1..num_classes-1.
        class_agnostic (bool): ignore labels (every object is class 1) — the unseen-object setting.
        max_dets (int): detections per image considered (COCO's 100).
    """

    def __init__(self, num_classes: int = 2, *, class_agnostic: bool = False, max_dets: int = 100) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise CocoInputError(f"num_classes counts the background and must be >= 2, got {num_classes!r}.")
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.max_dets = int(max_dets)
        self._images: dict[int, tuple[int, int]] = {}
        self._gt: list[dict[str, Any]] = []
        self._dt: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._images)

    def _labels(self, labels: Any, n: int, what: str) -> np.ndarray:
        if labels is None or self.class_agnostic:
            return np.ones(n, np.int64)
        lab = _numpy(labels, "labels").astype(np.int64).reshape(-1)
        if lab.shape[0] != n:
            raise CocoInputError(f"{what}: {lab.shape[0]} labels for {n} masks.")
        if n and (lab.min() < 1 or lab.max() >= self.num_classes):
            raise CocoInputError(f"{what}: labels must be within 1..{self.num_classes - 1}, got {sorted(set(lab))}.")
        return lab

    @staticmethod
    def _pair(masks: Any, amodal_masks: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
        vis = _numpy(masks, "masks") != 0
        amo = vis.copy() if amodal_masks is None else (_numpy(amodal_masks, "amodal_masks") != 0)
        if vis.ndim != 3 or amo.shape != vis.shape:
            raise CocoInputError(f"{what}: masks and amodal_masks must be [N, H, W] of one shape, got {vis.shape} and "
                            f"{amo.shape}.")
        return vis, amo | vis

    def _image(self, image_id: int, hw: tuple[int, int]) -> None:
        image_id = int(image_id)
        if image_id in self._images and self._images[image_id] != hw:
            raise CocoInputError(f"image {image_id} was {self._images[image_id]} before and is now {hw}.")
        self._images[image_id] = hw

    def add_ground_truth(
        self,
        image_id: int,
        *,
        masks: Any,
        amodal_masks: Any = None,
        labels: Any = None,
        iscrowd: Any = None,
        occlusion: Any = None,
    ) -> None:
        """Ground truth of one image (call once per image, also for images without objects).

        Args:
            masks ([G, H, W] bool / uint8 / torch): visible masks.
            amodal_masks ([G, H, W] | None): amodal masks (``None`` = the visible ones); ``|= masks`` applied.
            labels ([G] int | None): classes 1..num_classes-1 (``None`` = all 1).
            iscrowd ([G] int | None): crowd regions (ignored for matching, as in COCO).
            occlusion ([G] float | None): true hidden fraction; ``None`` = from the masks.
        """
        vis, amo = self._pair(masks, amodal_masks, f"ground truth of image {image_id}")
        g = vis.shape[0]
        self._image(image_id, tuple(vis.shape[1:]))
        lab = self._labels(labels, g, f"ground truth of image {image_id}")
        crowd = np.zeros(g, np.int64) if iscrowd is None else _numpy(iscrowd, "iscrowd").astype(np.int64).reshape(-1)
        area = vis.sum(axis=(1, 2)).astype(np.float64)
        amodal_area = amo.sum(axis=(1, 2)).astype(np.float64)
        if occlusion is None:
            occ = np.where(amodal_area > 0, 1.0 - area / np.maximum(amodal_area, 1.0), 0.0)
        else:
            occ = _numpy(occlusion, "occlusion").astype(np.float64).reshape(-1)
        rv, ra = encode_masks(vis), encode_masks(amo)
        for i in range(g):
            self._gt.append({"image_id": int(image_id), "category_id": int(lab[i]), "iscrowd": int(crowd[i]),
                             "visible": rv[i], "amodal": ra[i], "area": float(area[i]),
                             "amodal_area": float(amodal_area[i]), "occlusion": float(occ[i])})

    def add_predictions(
        self,
        image_id: int,
        *,
        masks: Any,
        scores: Any,
        amodal_masks: Any = None,
        labels: Any = None,
        occlusion: Any = None,
    ) -> None:
        """Predictions of one image: ``masks`` / ``amodal_masks`` ([N, H, W] bool, full image), ``scores`` [N],
        ``labels`` [N] (``None`` = 1), ``occlusion`` [N] predicted hidden fraction (``None`` = from the masks)."""
        vis, amo = self._pair(masks, amodal_masks, f"predictions of image {image_id}")
        n = vis.shape[0]
        self._image(image_id, tuple(vis.shape[1:]))
        sc = _numpy(scores, "scores").astype(np.float64).reshape(-1)
        if sc.shape[0] != n:
            raise CocoInputError(f"predictions of image {image_id}: {sc.shape[0]} scores for {n} masks.")
        lab = self._labels(labels, n, f"predictions of image {image_id}")
        if occlusion is None:
            a = vis.sum(axis=(1, 2))
            aa = amo.sum(axis=(1, 2))
            occ = np.where(aa > 0, 1.0 - a / np.maximum(aa, 1), 0.0)
        else:
            occ = _numpy(occlusion, "occlusion").astype(np.float64).reshape(-1)
        order = np.argsort(-sc, kind="stable")[: self.max_dets]
        rv, ra = encode_masks(vis[order]), encode_masks(amo[order])
        for j, i in enumerate(order):
            self._dt.append({"image_id": int(image_id), "category_id": int(lab[i]), "score": float(sc[i]),
                             "visible": rv[j], "amodal": ra[j], "occlusion": float(occ[i])})

    def add_frame_result(self, image_id: int, result: Any) -> None:
        """Predictions from a :class:`~.types.FrameResult` (the pipeline's output)."""
        h, w = int(result.height), int(result.width)
        inst = list(result.instances)
        n = len(inst)
        vis = np.zeros((n, h, w), bool)
        amo = np.zeros((n, h, w), bool)
        for i, r in enumerate(inst):
            vis[i] = r.full_mask(h, w)
            amo[i] = r.full_mask(h, w, amodal=True)
        self.add_predictions(
            image_id, masks=vis, amodal_masks=amo, scores=[r.score for r in inst],
            labels=None if self.class_agnostic else [max(1, r.class_id) for r in inst],
            occlusion=[r.occlusion for r in inst],
        )

    # ------------------------------------------------------------------ evaluation
    def _coco(self, kind: str):
        from pycocotools.coco import COCO

        cats = [{"id": c, "name": str(c)} for c in range(1, 2 if self.class_agnostic else self.num_classes)]
        anns = []
        for k, g in enumerate(self._gt, start=1):
            anns.append({"id": k, "image_id": g["image_id"], "category_id": g["category_id"], "iscrowd": g["iscrowd"],
                         "segmentation": g[kind], "area": g["area" if kind == "visible" else "amodal_area"],
                         "bbox": _bbox(g[kind])})
        gt = COCO()
        gt.dataset = {"images": [{"id": i, "height": hw[0], "width": hw[1]} for i, hw in self._images.items()],
                      "annotations": anns, "categories": cats}
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
        return gt

    def _evaluate(self, kind: str):
        from pycocotools.cocoeval import COCOeval

        gt = self._coco(kind)
        dts = [{"image_id": d["image_id"], "category_id": d["category_id"], "score": d["score"],
                "segmentation": d[kind]} for d in self._dt]
        if not dts or not self._gt:
            return None, np.full(len(_STAT_NAMES), 0.0 if self._gt else math.nan)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dt = gt.loadRes(dts)
            ev = COCOeval(gt, dt, iouType="segm")
            ev.params.imgIds = sorted(self._images)
            ev.params.maxDets = [1, 10, self.max_dets]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = np.array([math.nan if s < 0 else float(s) for s in ev.stats[: len(_STAT_NAMES)]])
        return ev, stats

    def summarize(self) -> dict[str, float]:
        """Run COCOeval on visible and amodal masks; returns the metrics named in the module docstring."""
        out: dict[str, float] = {}
        ev_vis, s_vis = self._evaluate("visible")
        _, s_amo = self._evaluate("amodal")
        for name, v in zip(_STAT_NAMES, s_vis, strict=True):
            out[f"mask_{name}"] = float(v)
        for name, v in zip(_STAT_NAMES, s_amo, strict=True):
            out[f"amodal_{name}"] = float(v)
        errs = self._occlusion_errors(ev_vis)
        out["occlusion_mae"] = float(np.mean(errs)) if errs else math.nan
        out["occlusion_matched"] = float(len(errs))
        out["num_images"] = float(len(self._images))
        out["num_gt"] = float(sum(1 for g in self._gt if not g["iscrowd"]))
        out["num_dets"] = float(len(self._dt))
        return out

    def _occlusion_errors(self, ev) -> list[float]:
        """|predicted - true| occlusion of detections matched at IoU 0.5 (COCO's matching, area 'all')."""
        if ev is None:
            return []
        t = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
        all_rng = ev.params.areaRng[ev.params.areaRngLbl.index("all")]
        # loadRes numbers detections 1..N in list order; the GT ids are 1..G in self._gt order
        errs = []
        for e in ev.evalImgs:
            if e is None or list(e["aRng"]) != list(all_rng) or e["maxDet"] != self.max_dets:
                continue
            for dt_id, gt_id, ign in zip(e["dtIds"], e["dtMatches"][t], e["dtIgnore"][t], strict=True):
                if gt_id > 0 and not ign:
                    errs.append(abs(self._dt[int(dt_id) - 1]["occlusion"] - self._gt[int(gt_id) - 1]["occlusion"]))
        return errs


def _bbox(rle: dict[str, Any]) -> list[float]:
    from pycocotools import mask as mask_utils

    r = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return [float(v) for v in mask_utils.toBbox(r)]
