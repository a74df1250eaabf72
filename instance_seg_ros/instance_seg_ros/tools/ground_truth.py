"""Ground truth of ``isr eval`` as :class:`~instance_seg_ros.core.types.FrameResult`: from masks
(:func:`ground_truth_result`, also used by ``isr eval --frames``) and from a COCO-style amodal JSON keyed by the
color image's stamp (:class:`JsonGroundTruth`, ``--gt-json``; the keys are in ``docs/eval.md``)."""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core.coco_eval import CocoInputError, decode_segmentation
from ..core.lifting import lift_instances
from ..core.masks import box_and_crop
from ..core.types import FrameResult, InstanceResult, Intrinsics
from .eval_errors import GroundTruthError

__all__ = ["JsonGroundTruth", "ground_truth_result"]





class JsonGroundTruth:
    """COCO-style amodal ground truth keyed by stamp (``--gt-json``).

    Layout (``isr synth``'s ``annotations.json`` plus one key per image)::

        {"images": [{"id": 1, "width": 640, "height": 480, "stamp_ns": 1700000000100000000}, ...],
         "annotations": [{"image_id": 1, "segmentation": RLE | polygons,            # visible mask (required)
                          "amodal_segmentation": RLE | polygons,                      # optional (= visible)
                          "occlusion": 0.25,                                          # optional (from the masks)
                          "is_occluded": true,                                        # optional
                          "centroid": [x, y, z],                                      # optional, meters
                          "category_id": 1, "object_name": "mug", "iscrowd": 0}, ...]}

    ``stamp_ns`` is the header stamp of the frame's color image in nanoseconds. Missing ``occlusion`` =
    ``1 - visible area / amodal area``; missing ``is_occluded`` = ``occlusion > occlusion.threshold``; missing
    ``centroid`` = the mean of the visible mask lifted with the frame's depth (pipeline mode; unknown in
    predictions mode). Crowd annotations (``iscrowd: 1``) are ignored.

    Raises:
        GroundTruthError: unreadable file, an image without ``stamp_ns``, duplicate stamps, an annotation without
            ``segmentation``; a segmentation that cannot be decoded (:meth:`frame_result`).
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise GroundTruthError(f"Cannot read the ground-truth JSON {p}: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise GroundTruthError(f"{p} is not a COCO-style JSON: it needs an 'images' list and an 'annotations' "
                                   "list.")
        self.path = p
        self._images: dict[int, dict[str, Any]] = {}
        for img in data["images"]:
            stamp = img.get("stamp_ns") if isinstance(img, dict) else None
            if isinstance(stamp, bool) or not isinstance(stamp, int) or stamp <= 0:
                raise GroundTruthError(
                    f"{p}: image {img.get('id') if isinstance(img, dict) else img!r} has no valid 'stamp_ns'; every "
                    "image needs the header stamp of its color image as an integer number of nanoseconds "
                    "(sec * 10**9 + nanosec).")
            if stamp in self._images:
                raise GroundTruthError(f"{p}: two images have stamp_ns {stamp}; stamps must be unique.")
            for key in ("id", "width", "height"):
                if not isinstance(img.get(key), int):
                    raise GroundTruthError(f"{p}: image with stamp_ns {stamp} needs an integer '{key}'.")
            self._images[stamp] = img
        self._anns: dict[int, list[dict[str, Any]]] = {}
        for ann in data.get("annotations", []):
            if int(ann.get("iscrowd", 0)):
                continue
            if "segmentation" not in ann:
                raise GroundTruthError(f"{p}: annotation {ann.get('id')} of image {ann.get('image_id')} has no "
                                "'segmentation' (the visible mask).")
            self._anns.setdefault(int(ann["image_id"]), []).append(ann)
        self._stamps = sorted(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def lookup(self, stamp_ns: int, slop_ns: int) -> int | None:
        """The stamp of the image for a frame stamped ``stamp_ns``: the same, else the nearest within ``slop_ns``."""
        if stamp_ns in self._images:
            return stamp_ns
        k = bisect.bisect_left(self._stamps, stamp_ns)
        best = None
        for c in (k - 1, k):
            if 0 <= c < len(self._stamps) and abs(self._stamps[c] - stamp_ns) <= slop_ns:
                if best is None or abs(self._stamps[c] - stamp_ns) < abs(best - stamp_ns):
                    best = self._stamps[c]
        return best

    def _decode(self, seg: Any, h: int, w: int) -> np.ndarray:
        try:
            return decode_segmentation(seg, h, w)
        except CocoInputError as exc:
            raise GroundTruthError(f"{self.path}: {exc}") from exc

    def frame_result(
        self,
        stamp_ns: int,
        *,
        depth: np.ndarray | None = None,
        K: Intrinsics | None = None,
        depth_min: float = 0.1,
        depth_max: float = 5.0,
        occlusion_threshold: float = 0.1,
    ) -> FrameResult:
        """The ground truth of the image stamped ``stamp_ns`` (a key from :meth:`lookup`) as a FrameResult.

        Args:
            depth (np.ndarray[H, W] float32 | None), K: the frame's depth (meters, NaN invalid) and intrinsics;
                when given, each visible mask is lifted to the object's points (for the centroid when the JSON
                has none, and the cloud precision).

        Raises:
            GroundTruthError: a segmentation cannot be decoded or has another size than its image.
        """
        img = self._images[stamp_ns]
        h, w = int(img["height"]), int(img["width"])
        anns = self._anns.get(int(img["id"]), [])
        vis = np.zeros((len(anns), h, w), bool)
        amo = np.zeros((len(anns), h, w), bool)
        for i, ann in enumerate(anns):
            vis[i] = self._decode(ann["segmentation"], h, w)
            amo[i] = vis[i] | (self._decode(ann["amodal_segmentation"], h, w) if ann.get("amodal_segmentation")
                               else vis[i])
        return ground_truth_result(
            vis, amo, depth=depth, K=K, depth_min=depth_min, depth_max=depth_max,
            occlusion_threshold=occlusion_threshold,
            occlusion=[ann.get("occlusion") for ann in anns], is_occluded=[ann.get("is_occluded") for ann in anns],
            centroids=[ann.get("centroid") for ann in anns], class_ids=[int(ann.get("category_id", 1)) for ann in anns],
            class_names=[str(ann.get("object_name", "object")) for ann in anns])


def ground_truth_result(
    visible: np.ndarray,
    amodal: np.ndarray | None = None,
    *,
    depth: np.ndarray | None = None,
    K: Intrinsics | None = None,
    depth_min: float = 0.1,
    depth_max: float = 5.0,
    occlusion_threshold: float = 0.1,
    occlusion: list[float | None] | None = None,
    is_occluded: list[bool | None] | None = None,
    centroids: list[Any] | None = None,
    class_ids: list[int] | None = None,
    class_names: list[str] | None = None,
) -> FrameResult:
    """Ground-truth masks of one image as a :class:`FrameResult` (score 1.0), the form the scorers compare.

    Args:
        visible (np.ndarray[G, H, W] bool): visible masks. amodal (np.ndarray[G, H, W] bool | None): amodal masks
            (``None``: the visible ones); each is united with its visible mask.
        depth (np.ndarray[H, W] float32 | None), K: the frame's depth (meters, NaN invalid) and intrinsics; when
            given, each visible mask is lifted to the object's points (for the centroid where none is given, and
            the cloud precision).
        occlusion, is_occluded, centroids, class_ids, class_names: per object, ``None`` entries (or lists) for
            unknown: occlusion = ``1 - visible area / amodal area``; is_occluded = occlusion above
            ``occlusion_threshold``; centroid = the mean of the lifted points (zeros without depth).
    """
    vis = np.asarray(visible, bool)
    g, h, w = vis.shape
    amo = vis.copy() if amodal is None else (np.asarray(amodal, bool) | vis)
    clouds = None
    if depth is not None and K is not None and g:
        clouds = lift_instances(depth, vis, K, depth_min=depth_min, depth_max=depth_max, flying_pixel_threshold=0.0)
    label = np.zeros((h, w), np.uint16)
    instances = []
    for i in range(g):
        area, aarea = int(vis[i].sum()), int(amo[i].sum())
        given = occlusion[i] if occlusion is not None else None
        occ = float(given) if given is not None else (1.0 - area / aarea if aarea else 0.0)
        flag = is_occluded[i] if is_occluded is not None else None
        pts = clouds[i].points if clouds is not None else np.zeros((0, 3), np.float32)
        c_given = centroids[i] if centroids is not None else None
        if c_given is not None:
            c = np.asarray(c_given, dtype=np.float64).reshape(3)
        else:
            c = pts.astype(np.float64).mean(axis=0) if pts.shape[0] else np.zeros(3)
        bbox, crop = box_and_crop(vis[i])
        abox, acrop = box_and_crop(amo[i])
        label[vis[i] & (label == 0)] = i + 1
        instances.append(InstanceResult(
            index=i + 1, class_id=class_ids[i] if class_ids else 1,
            class_name=class_names[i] if class_names else "object", score=1.0, bbox=bbox, mask=crop,
            amodal_bbox=abox, amodal_mask=acrop, occlusion=occ,
            is_occluded=bool(flag) if flag is not None else occ > occlusion_threshold,
            points=pts, depth_coverage=clouds[i].depth_coverage if clouds is not None else 0.0, centroid=c,
        ))
    return FrameResult(width=w, height=h, instances=instances, label_image=label)
