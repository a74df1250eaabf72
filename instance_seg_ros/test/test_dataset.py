"""AmodalCocoDataset: `isr synth` output, KINS / COCOA / plain COCO keys, splits, torch conversion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from instance_seg_ros.core.dataset import AmodalCocoDataset, AmodalSample, DatasetError, collate, decode_segmentation
from instance_seg_ros.tools.synth import SynthParams, synthesize


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "synth"
    synthesize(out, 3, SynthParams(seed=3, width=96, height=72, min_objects=2, max_objects=4, views_per_scene=2),
               progress=False)
    return out


def _rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode()}


def _write_coco(tmp_path: Path, anns: list[dict], h: int = 16, w: int = 20) -> Path:
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.full((h, w, 3), (10, 20, 30), np.uint8))  # BGR on disk
    path = tmp_path / "kins.json"
    path.write_text(json.dumps({
        "images": [{"id": 5, "file_name": "a.png", "height": h, "width": w}],
        "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "tram"}],
        "annotations": anns,
    }))
    return path


def test_reads_synth_output(synth_dir):
    ds = AmodalCocoDataset(synth_dir)
    coco = json.loads((synth_dir / "annotations.json").read_text())
    assert len(ds) == 6 and ds.image_ids == [1, 2, 3, 4, 5, 6]
    for i in range(len(ds)):
        s = ds[i]
        assert s.color.shape == (72, 96, 3) and s.color.dtype == np.uint8
        assert s.depth.shape == (72, 96) and s.depth.dtype == np.float32
        raw = cv2.imread(str(synth_dir / s.info["depth_file"]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(np.isnan(s.depth), raw == 0)
        np.testing.assert_allclose(s.depth[raw > 0], raw[raw > 0] / 1000.0, rtol=1e-6)
        assert s.intrinsics.width == 96 and s.intrinsics.fx == pytest.approx(615 * 96 / 640)
        t = s.targets
        anns = [a for a in coco["annotations"] if a["image_id"] == s.image_id]
        n = len(anns)
        assert t["masks"].shape == (n, 72, 96) and t["masks"].dtype == np.uint8
        assert t["amodal_masks"].shape == (n, 72, 96) and t["boxes"].shape == (n, 4)
        assert t["labels"].tolist() == [1] * n and t["iscrowd"].tolist() == [0] * n and t["has_amodal"].all()
        assert t["annotation_ids"].tolist() == [a["id"] for a in anns]
        assert t["areas"].tolist() == [a["area"] for a in anns]
        assert t["amodal_areas"].tolist() == [a["amodal_area"] for a in anns]
        np.testing.assert_allclose(t["occlusion"], [a["occlusion"] for a in anns], atol=1e-5)
        for box, amodal_box, a in zip(t["boxes"], t["amodal_boxes"], anns, strict=True):
            x, y, w, h = a["bbox"]
            assert box.tolist() == [x, y, x + w, y + h]
            x, y, w, h = a["amodal_bbox"]
            assert amodal_box.tolist() == [x, y, x + w, y + h]
        assert np.all(t["amodal_masks"] >= t["masks"])


def test_split_keeps_scenes_together_and_is_seeded(synth_dir):
    ds = AmodalCocoDataset(synth_dir / "annotations.json")
    train, held = ds.split(0.3, seed=1)
    assert len(train) + len(held) == len(ds) and len(held) == 2
    assert set(train.image_ids).isdisjoint(held.image_ids)
    seeds = lambda d: {d.image_info(i)["scene_seed"] for i in range(len(d))}  # noqa: E731
    assert seeds(train).isdisjoint(seeds(held))
    again, _ = ds.split(0.3, seed=1)
    assert again.image_ids == train.image_ids
    assert ds.split(0.0)[1].image_ids == []
    sub = ds.subset([5, 0])
    assert sub.image_ids == [6, 1] and sub[0].image_id == 6
    with pytest.raises(DatasetError, match="out of range"):
        ds.subset([6])
    with pytest.raises(DatasetError, match="held_out_fraction"):
        ds.split(1.0)
    with pytest.raises(IndexError):
        ds[6]


def to_torch(sample: AmodalSample, *, with_depth: bool = False) -> tuple[Any, dict[str, Any]]:
    """torchvision detection inputs: ``(image FloatTensor[C, H, W] in 0..1, targets)`` (a test helper: training
    builds its inputs in ``tools.train_data``).

    ``C`` is 3, or 4 with ``with_depth`` (depth in meters as the 4th channel, 0 where invalid; raises when the
    sample has no depth). Targets: every entry of ``sample.targets`` as a tensor (``masks`` and
    ``amodal_masks`` UInt8Tensor[N, H, W], ``boxes`` FloatTensor[N, 4], ``labels`` Int64Tensor[N], ...) plus
    ``image_id`` (Int64Tensor[1]).
    """
    import torch

    img = torch.from_numpy(np.ascontiguousarray(sample.color)).permute(2, 0, 1).float().div_(255.0)
    if with_depth:
        if sample.depth is None:
            raise DatasetError(f"Image {sample.image_id} has no depth; use with_depth=False or add depth images.")
        d = torch.from_numpy(np.nan_to_num(sample.depth, nan=0.0).astype(np.float32))[None]
        img = torch.cat([img, d], dim=0)
    targets = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sample.targets.items()}
    targets["image_id"] = torch.tensor([sample.image_id], dtype=torch.int64)
    return img, targets


def test_to_torch_and_collate(synth_dir):
    import torch

    ds = AmodalCocoDataset(synth_dir, transforms=lambda s: to_torch(s, with_depth=True))
    img, tgt = ds[0]
    assert img.shape == (4, 72, 96) and img.dtype == torch.float32
    assert 0.0 <= float(img[:3].min()) and float(img[:3].max()) <= 1.0 and not torch.isnan(img).any()
    assert tgt["masks"].dtype == torch.uint8 and tgt["boxes"].dtype == torch.float32
    assert tgt["labels"].dtype == torch.int64 and tgt["image_id"].tolist() == [1]
    images, targets = collate([ds[0], ds[1]])
    assert len(images) == 2 and targets[1]["image_id"].tolist() == [2]
    no_depth = AmodalCocoDataset(synth_dir, load_depth=False)[0]
    assert no_depth.depth is None
    with pytest.raises(DatasetError, match="no depth"):
        to_torch(no_depth, with_depth=True)


def test_torch_free_import():
    code = "import sys, instance_seg_ros.core.dataset; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_kins_cocoa_and_plain_coco_keys(tmp_path):
    h, w = 16, 20
    amodal = np.zeros((h, w), np.uint8)
    amodal[2:10, 3:13] = 1
    visible = amodal.copy()
    visible[2:10, 8:13] = 0  # right half hidden
    polygon = [[3, 2, 12.999, 2, 12.999, 9.999, 3, 9.999]]  # the amodal rectangle (pixel centres 3..12, 2..9)
    uncompressed = {"size": [h, w], "counts": [int(c) for c in _uncompressed_counts(visible)]}
    anns = [
        # KINS: segmentation = amodal polygon, inmodal_seg = visible RLE
        {"id": 1, "image_id": 5, "category_id": 2, "segmentation": polygon, "inmodal_seg": _rle(visible),
         "bbox": [3, 2, 10, 8], "iscrowd": 0},
        # KINS 2020 keys
        {"id": 2, "image_id": 5, "category_id": 1, "a_segm": polygon, "i_segm": uncompressed},
        # COCOA conversion: visible_mask
        {"id": 3, "image_id": 5, "category_id": 1, "segmentation": _rle(amodal), "visible_mask": _rle(visible)},
        # plain COCO: no amodal information
        {"id": 4, "image_id": 5, "category_id": 1, "segmentation": _rle(visible), "iscrowd": 1},
        # original COCOA: regions inside one annotation
        {"id": 6, "image_id": 5, "regions": [{"segmentation": polygon[0], "visible_mask": _rle(visible), "name": "a"},
                                             {"segmentation": polygon[0], "name": "b"}]},
        # too small after decoding: dropped
        {"id": 7, "image_id": 5, "category_id": 1, "segmentation": _rle(np.zeros((h, w), np.uint8))},
    ]
    ds = AmodalCocoDataset(_write_coco(tmp_path, anns))
    s = ds[0]
    assert s.color[0, 0].tolist() == [30, 20, 10] and s.depth is None and s.intrinsics is None
    t = s.targets
    assert t["annotation_ids"].tolist() == [1, 2, 3, 4, 6000, 6001]
    assert t["labels"].tolist() == [2, 1, 1, 1, 1, 1]
    for i in (0, 1, 2, 4):
        assert np.array_equal(t["masks"][i], visible) and np.array_equal(t["amodal_masks"][i], amodal), i
        assert t["occlusion"][i] == pytest.approx(0.5)
    assert np.array_equal(t["amodal_masks"][3], visible) and not t["has_amodal"][3] and t["iscrowd"][3] == 1
    assert np.array_equal(t["masks"][5], amodal) and t["occlusion"][5] == 0.0  # unoccluded COCOA region
    assert t["boxes"][0].tolist() == [3, 2, 8, 10] and t["amodal_boxes"][0].tolist() == [3, 2, 13, 10]
    assert len(AmodalCocoDataset(tmp_path / "kins.json", skip_crowd=True)[0].targets["labels"]) == 5
    assert len(AmodalCocoDataset(tmp_path / "kins.json", min_visible_area=41)[0].targets["labels"]) == 1


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.T.reshape(-1)  # column-major, starting with a run of zeros
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return counts


def test_bad_files_raise_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="annotations.json"):
        AmodalCocoDataset(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="Cannot read"):
        AmodalCocoDataset(tmp_path / "bad.json")
    (tmp_path / "x.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="not a COCO file"):
        AmodalCocoDataset(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"images": [], "annotations": [{"id": 1, "image_id": 9}]}))
    with pytest.raises(DatasetError, match="image 9"):
        AmodalCocoDataset(tmp_path / "y.json")
    with pytest.raises(DatasetError, match="size"):
        decode_segmentation({"size": [4, 4], "counts": "0"}, 5, 5)
    with pytest.raises(DatasetError, match="polygon"):
        decode_segmentation([[1, 2]], 5, 5)
    (tmp_path / "z.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "missing.png"}], "annotations": []}))
    with pytest.raises(DatasetError, match="Cannot read the image"):
        AmodalCocoDataset(tmp_path / "z.json")[0]


def test_image_without_instances_gives_empty_targets(tmp_path):
    cv2.imwrite(str(tmp_path / "empty.png"), np.zeros((6, 8, 3), np.uint8))
    (tmp_path / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "empty.png", "width": 8, "height": 6}],
        "annotations": [], "categories": [{"id": 1, "name": "object"}],
    }))
    ds = AmodalCocoDataset(tmp_path, skip_empty=False)
    t = ds[0].targets
    assert t["masks"].shape == (0, 6, 8) and t["areas"].shape == (0,) and t["occlusion"].shape == (0,)
