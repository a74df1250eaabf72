"""``isr train``: augmentation, COCO evaluation, inference size from the weights, and real (tiny) training runs.

The training runs use a hand-made RGB-D dataset of occluding rectangles at 120x160 (written as
``isr synth`` writes: color PNG, 16-bit depth PNG, COCO JSON with visible / amodal RLE), the
efficientnet_lite0_fpn backbone with its installed ImageNet weights, one torch thread, no workers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from instance_seg_ros.core.augment import (
    Augment,
    AugmentConfig,
    AugmentError,
    color_jitter,
    depth_noise,
    hflip,
    net_scale,
    resize_crop,
)
from instance_seg_ros.core.coco_eval import AmodalCocoEvaluator, encode_masks
from instance_seg_ros.core.coco_eval import CocoInputError as EvalError
from instance_seg_ros.core.dataset import AmodalCocoDataset
from instance_seg_ros.core.model import ModelMeta, Predictor, load_checkpoint, load_model
from instance_seg_ros.tools import cli
from instance_seg_ros.tools.train import (
    TrainError,
    get_args_parser,
    main,
    resolve_args,
)
from instance_seg_ros.tools.train_data import InfiniteSampler, TrainingSet

H, W = 120, 160


# =========================================================================== a tiny dataset
def _rle(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def make_rect_dataset(root: Path, n_images: int, seed: int, size: tuple[int, int] = (H, W)) -> Path:
    """Occluding rectangles: color/NNNNNN.png, depth/NNNNNN.png (uint16 mm), annotations.json (isr synth keys)."""
    h, w = size
    rng = np.random.default_rng(seed)
    (root / "color").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        color = rng.integers(90, 140, (h, w, 3), dtype=np.uint8)
        depth = np.full((h, w), 1.2, np.float32)
        objs = []
        for _ in range(int(rng.integers(3, 5))):
            bh, bw = int(rng.integers(h // 5, h // 2)), int(rng.integers(w // 6, w // 3))
            y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
            objs.append((float(rng.uniform(0.5, 1.0)), (y, x, bh, bw), rng.integers(0, 256, 3)))
        objs.sort(key=lambda o: -o[0])  # far first: nearer ones paint over them
        amodal = []
        for z, (y, x, bh, bw), c in objs:
            m = np.zeros((h, w), bool)
            m[y:y + bh, x:x + bw] = True
            color[m] = c
            depth[m] = z
            amodal.append(m)
        name = f"{i:06d}.png"
        cv2.imwrite(str(root / "color" / name), color[..., ::-1])
        cv2.imwrite(str(root / "depth" / name), (depth * 1000).astype(np.uint16))
        images.append({"id": i + 1, "file_name": f"color/{name}", "depth_file": f"depth/{name}", "width": w,
                       "height": h, "depth_scale": 0.001, "scene_seed": seed * 1000 + i,
                       "intrinsics": {"fx": 100.0, "fy": 100.0, "cx": w / 2 - 0.5, "cy": h / 2 - 0.5}})
        for k, a in enumerate(amodal):
            vis = a & ~np.logical_or.reduce(amodal[k + 1:], axis=0) if k + 1 < len(amodal) else a
            if vis.sum() < 20:
                continue
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "segmentation": _rle(vis), "amodal_segmentation": _rle(a), "area": int(vis.sum())})
    coco = {"info": {"description": "test rectangles", "params": {"seed": seed, "width": w, "height": h}},
            "images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


@pytest.fixture(scope="module")
def rects(tmp_path_factory) -> Path:
    return make_rect_dataset(tmp_path_factory.mktemp("rects"), 6, seed=1)


# =========================================================================== augmentation
def rescale_sample(sample, out_size: tuple[int, int]):
    """The deterministic resize onto ``out_size`` (of the sample's aspect): :class:`Augment` with every
    augmentation off, as ``isr train --no-augment`` runs it (this was ``core.augment.rescale_sample``)."""
    h, w = out_size
    return Augment(AugmentConfig.none(), min_size=min(h, w), max_size=max(h, w))(sample, np.random.default_rng(0))


def _boxes_of(masks: np.ndarray) -> np.ndarray:
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.asarray(out, np.float32).reshape(-1, 4)


def test_net_scale_matches_torchvision_rule():
    assert net_scale(480, 640, 240, 320) == 0.5
    assert net_scale(720, 1280, 240, 320) == 0.25  # the long side caps it
    assert Augment(min_size=240, max_size=320).out_size(480, 640) == ((240, 320), 0.5)
    with pytest.raises(AugmentError, match="both"):
        Augment(min_size=240)


def test_resize_crop_pads_and_crops_consistently():
    color = np.zeros((40, 60, 3), np.uint8)
    color[10:20, 30:40] = 255
    depth = np.full((40, 60), 1.0, np.float32)
    masks = np.zeros((1, 40, 60), np.uint8)
    masks[0, 10:20, 30:40] = 1
    # zoom out x0.5 onto the same canvas at offset (5, 7): padding is PAD_COLOR / NaN / 0
    c, d, m, off = resize_crop(color, depth, masks, 0.5, (40, 60), offset=(5, 7))
    assert off == (5, 7) and c.shape == (40, 60, 3) and d.shape == (40, 60) and m.shape == (1, 40, 60)
    assert np.isnan(d[0, 0]) and np.isnan(d[-1, -1]) and d[5, 7] == 1.0
    assert tuple(_boxes_of(m)[0]) == (7 + 15, 5 + 5, 7 + 20, 5 + 10)
    assert (c[m[0] == 1] == 255).all()
    # zoom in x2 with a negative offset = crop
    c, d, m, _ = resize_crop(color, depth, masks, 2.0, (40, 60), offset=(-20, -60))
    assert tuple(_boxes_of(m)[0]) == (0, 0, 20, 20) and (c[1:19, 1:19] == 255).all()  # bilinear: edges blend
    with pytest.raises(AugmentError):
        resize_crop(color, depth, masks, 0.0, (40, 60))


def test_hflip_mirrors_everything():
    rng = np.random.default_rng(0)
    color = rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)
    depth = rng.random((8, 10), dtype=np.float32)
    masks = (rng.random((2, 8, 10)) > 0.5).astype(np.uint8)
    c, d, m = hflip(color, depth, masks)
    assert (c[:, 0] == color[:, -1]).all() and (d[:, 0] == depth[:, -1]).all() and (m[:, :, 0] == masks[:, :, -1]).all()
    assert hflip(color, None, masks)[1] is None


def test_augment_keeps_targets_consistent(rects):
    ds = AmodalCocoDataset(rects)
    sample = ds[0]
    aug = Augment(AugmentConfig(hflip=1.0, scale=(0.6, 1.6), scale_prob=1.0), min_size=60, max_size=80)
    seen_counts = set()
    for seed in range(12):
        s = aug(sample, np.random.default_rng(seed))
        t = s.targets
        n = len(t["labels"])
        seen_counts.add(n)
        assert s.color.shape == (60, 80, 3) and s.color.dtype == np.uint8
        assert s.depth.shape == (60, 80) and s.depth.dtype == np.float32
        assert t["masks"].shape == t["amodal_masks"].shape == (n, 60, 80)
        assert (t["amodal_masks"] >= t["masks"]).all()
        assert (t["areas"] >= 4).all() and np.allclose(t["areas"], t["masks"].reshape(n, -1).sum(1))
        if n:
            assert np.array_equal(t["boxes"], _boxes_of(t["masks"]))
            assert np.array_equal(t["amodal_boxes"], _boxes_of(t["amodal_masks"]))
            occ = 1 - t["areas"] / t["amodal_areas"]
            assert np.allclose(t["occlusion"], occ, atol=1e-6)
            assert all(len(v) == n for v in t.values() if isinstance(v, np.ndarray) and v.ndim)
        assert s.intrinsics.width == 80 and s.intrinsics.height == 60
    assert len(seen_counts) > 1  # zooming in crops objects away
    # the same seed gives the same sample
    a, b = aug(sample, np.random.default_rng(3)), aug(sample, np.random.default_rng(3))
    assert np.array_equal(a.color, b.color) and np.array_equal(a.targets["masks"], b.targets["masks"])


def test_plain_rescale_and_flip_geometry(rects):
    sample = AmodalCocoDataset(rects)[1]
    half = rescale_sample(sample, (60, 80))
    assert half.color.shape == (60, 80, 3)
    k, k2 = sample.intrinsics, half.intrinsics
    assert math.isclose(k2.fx, k.fx / 2) and math.isclose(k2.cx, (k.cx + 0.5) / 2 - 0.5)
    # flip only: masks, depth and boxes mirror exactly; intrinsics' cx mirrors
    s = Augment(AugmentConfig(hflip=1.0, brightness=0, contrast=0, saturation=0, hue=0, depth_noise=0,
                              depth_dropout=0, scale=(1, 1)))(sample, np.random.default_rng(0))
    assert np.array_equal(s.targets["masks"], sample.targets["masks"][:, :, ::-1])
    assert np.array_equal(s.color, sample.color[:, ::-1])
    x1, y1, x2, y2 = sample.targets["amodal_boxes"][0]
    assert tuple(s.targets["amodal_boxes"][0]) == (W - x2, y1, W - x1, y2)
    assert math.isclose(s.intrinsics.cx, W - 1 - sample.intrinsics.cx)


def test_color_jitter_and_depth_noise():
    rng = np.random.default_rng(0)
    color = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out = color_jitter(color, np.random.default_rng(1), 0.3, 0.3, 0.3, 0.05)
    assert out.shape == color.shape and out.dtype == np.uint8 and not np.array_equal(out, color)
    assert np.array_equal(color_jitter(color, np.random.default_rng(1)), color)  # all off = identity
    depth = np.full((100, 100), 2.0, np.float32)
    depth[0, 0] = np.nan
    noisy = depth_noise(depth, np.random.default_rng(2), sigma=0.01, dropout=0.2)
    valid = np.isfinite(noisy)
    assert np.isnan(noisy[0, 0]) and 0.75 < valid.mean() < 1.0
    assert abs(float(np.std(noisy[valid])) - 0.04) < 0.01  # sigma z² = 0.01 * 4
    with pytest.raises(AugmentError, match="hue"):
        AugmentConfig(hue=0.7)
    with pytest.raises(AugmentError, match="scale"):
        AugmentConfig(scale=(2.0, 1.0))


# =========================================================================== COCO evaluation
def _scene(n: int = 3, h: int = 60, w: int = 80):
    vis = np.zeros((n, h, w), bool)
    amo = np.zeros((n, h, w), bool)
    for k in range(n):
        amo[k, 5 + 15 * k:25 + 15 * k, 5 + 20 * k:30 + 20 * k] = True
        vis[k] = amo[k]
        vis[k, 5 + 15 * k:13 + 15 * k] = False  # top 8 of 20 rows hidden: occlusion 0.4
    return vis, amo


def test_coco_eval_perfect_wrong_and_empty():
    vis, amo = _scene()
    ev = AmodalCocoEvaluator()
    for i in range(2):
        ev.add_ground_truth(i, masks=vis, amodal_masks=amo)
        ev.add_predictions(i, masks=vis, amodal_masks=amo, scores=[0.9, 0.8, 0.7], occlusion=[0.35, 0.4, 0.5])
    m = ev.summarize()
    assert m["mask_ap"] == m["mask_ap50"] == m["amodal_ap"] == m["amodal_ap50"] == pytest.approx(1.0)
    assert m["occlusion_mae"] == pytest.approx((0.05 + 0.0 + 0.1) / 3)
    assert m["occlusion_matched"] == 6 and m["num_gt"] == 6 and m["num_images"] == 2

    # predicting the visible masks as amodal: visible AP stays 1, amodal IoU 0.6 passes AP50 but not AP75
    ev = AmodalCocoEvaluator()
    ev.add_ground_truth(1, masks=vis, amodal_masks=amo)
    ev.add_predictions(1, masks=vis, amodal_masks=vis, scores=[0.9, 0.8, 0.7])
    m = ev.summarize()
    assert m["mask_ap"] == pytest.approx(1.0) and m["amodal_ap50"] == pytest.approx(1.0)
    assert m["amodal_ap75"] < 0.5 and 0 <= m["amodal_ap"] < 1

    # no predictions: AP 0; no ground truth at all: nan
    ev = AmodalCocoEvaluator()
    ev.add_ground_truth(1, masks=vis, amodal_masks=amo)
    ev.add_predictions(1, masks=np.zeros((0, 60, 80), bool), scores=[])
    m = ev.summarize()
    assert m["mask_ap"] == 0.0 and math.isnan(m["occlusion_mae"])
    ev = AmodalCocoEvaluator()
    ev.add_ground_truth(1, masks=np.zeros((0, 60, 80), bool))
    assert math.isnan(ev.summarize()["mask_ap"])


def test_coco_eval_frame_result_and_errors():
    from instance_seg_ros.core.types import FrameResult, InstanceResult

    vis, amo = _scene(1)
    ys, xs = np.nonzero(amo[0])
    box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
    x, y, bw, bh = box
    inst = InstanceResult(index=1, class_id=1, class_name="object", score=0.9, bbox=box,
                          mask=vis[0, y:y + bh, x:x + bw], amodal_bbox=box, amodal_mask=amo[0, y:y + bh, x:x + bw],
                          occlusion=0.4, is_occluded=True)
    fr = FrameResult(80, 60, [inst], np.zeros((60, 80), np.uint16))
    ev = AmodalCocoEvaluator(class_agnostic=True)
    ev.add_ground_truth(7, masks=vis, amodal_masks=amo)
    ev.add_frame_result(7, fr)
    m = ev.summarize()
    assert m["mask_ap"] == pytest.approx(1.0) and m["amodal_ap"] == pytest.approx(1.0)
    assert m["occlusion_mae"] == pytest.approx(0.0)
    assert len(encode_masks(vis)) == 1 and isinstance(encode_masks(vis)[0]["counts"], str)
    with pytest.raises(EvalError, match="scores"):
        ev.add_predictions(8, masks=vis, scores=[0.1, 0.2])
    with pytest.raises(EvalError, match="one shape"):
        ev.add_ground_truth(9, masks=vis, amodal_masks=amo[:, :10])
    with pytest.raises(EvalError, match="labels"):
        AmodalCocoEvaluator(3).add_ground_truth(9, masks=vis, labels=[5])
    with pytest.raises(EvalError):
        AmodalCocoEvaluator(1)


# =========================================================================== inference size from the weights
def test_predictor_takes_the_weights_inference_size(tmp_path):
    from instance_seg_ros.core.model import save_weights

    model, meta = load_model("none", backbone="mobilenet_v3_large_fpn")
    assert meta.infer_min_size == meta.infer_max_size == 0 and meta.training == {}
    pred = Predictor(model, meta, device="cpu")
    assert pred.input_size(480, 640) == (480, 640)  # native
    meta.infer_min_size, meta.infer_max_size = 240, 320
    pred = Predictor(model, meta, device="cpu", score_threshold=0.99)
    assert pred.input_size(480, 640) == (240, 320)
    pred.predict(np.zeros((96, 128, 3), np.uint8))
    assert model.transform.min_size == (240,) and model.transform.max_size == 320
    pred.update(min_size=96, max_size=128)  # the configuration wins
    assert pred.input_size(480, 640) == (96, 128)
    # round trip through a file, and files without the keys read as 0 / {}
    path = save_weights(tmp_path / "w.pt", model, meta)
    _, m2, _ = load_checkpoint(path)
    assert (m2.infer_min_size, m2.infer_max_size) == (240, 320)
    d = meta.to_dict()
    del d["infer_min_size"], d["infer_max_size"], d["training"]
    old = ModelMeta.from_dict(d)
    assert old.infer_min_size == 0 and old.infer_max_size == 0 and old.training == {}
    with pytest.raises(ValueError, match="infer_min_size"):
        ModelMeta(classes=["__background__", "object"], infer_min_size=-1)


# =========================================================================== data pipeline
def test_sampler_is_a_resumable_seeded_stream():
    def take(s, n):
        it = iter(s)
        return [next(it) for _ in range(n)]

    full = take(InfiniteSampler(5, seed=3), 12)
    assert sorted(k for k, _ in full[:5]) == list(range(5))  # an epoch is a permutation
    assert take(InfiniteSampler(5, seed=3, start=7), 5) == full[7:12]  # resuming continues the stream
    r0 = take(InfiniteSampler(5, seed=3, rank=0, world_size=2), 3)
    r1 = take(InfiniteSampler(5, seed=3, rank=1, world_size=2), 3)
    assert r0 == full[0:6:2] and r1 == full[1:6:2]  # ranks interleave one stream
    assert len({s for _, s in full}) == 12  # every position its own augmentation seed
    with pytest.raises(TrainError, match="empty"):
        InfiniteSampler(0)


def test_training_set_rgbd_at_network_size(rects):
    ds = AmodalCocoDataset(rects, skip_empty=True)
    ts = TrainingSet([ds], [{1: 1}], input_mode="rgbd", augment=Augment(min_size=60, max_size=80), depth_max_m=2.0)
    image, target = ts[(0, 11)]
    assert image.shape == (4, 60, 80) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    g = target["boxes"].shape[0]
    assert g > 0 and target["masks"].shape == target["amodal_masks"].shape == (g, 60, 80)
    assert target["labels"].tolist() == [1] * g
    # boxes are the AMODAL boxes (targets_from_masks)
    amo = target["amodal_masks"][0].numpy()
    ys, xs = np.nonzero(amo)
    assert target["boxes"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


# =========================================================================== arguments
def _args(*argv: str):
    return get_args_parser().parse_args(list(argv))


def test_bad_arguments_are_refused(rects, tmp_path):
    with pytest.raises(TrainError, match="--data"):
        resolve_args(_args())
    with pytest.raises(TrainError, match="min-size"):
        resolve_args(_args("--data", str(rects), "--min-size", "400", "--max-size", "300"))
    with pytest.raises(TrainError, match="init coco"):
        resolve_args(_args("--data", str(rects), "--init", "coco"))
    with pytest.raises(TrainError, match="best-metric"):
        resolve_args(_args("--data", str(rects), "--best-metric", "accuracy"))
    with pytest.raises(TrainError, match="annotations.json"):
        main(_args("--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--iters", "1"))
    a = resolve_args(_args("--data", str(rects)))
    assert a.pretrained_backbone is True and a.backbone == "efficientnet_lite0_fpn" and a.iters == 1000
    assert cli.main(["train", "--data", str(rects), "--iters", "0", "--out", str(tmp_path / "o")]) == 2


# =========================================================================== training runs
COMMON = ["--backbone", "efficientnet_lite0_fpn", "--min-size", "96", "--max-size", "128", "--batch-size", "2",
          "--lr", "0.01", "--warmup-iters", "2", "--lr-schedule", "constant", "--workers", "0", "--threads", "1",
          "--log-every", "1", "--checkpoint-every", "4", "--eval-every", "0", "--no-augment", "--quiet",
          "--rpn-post-nms-train", "300", "--box-batch-size", "64"]


@pytest.fixture(scope="module")
def runs(rects, tmp_path_factory):
    """Run U: 10 iterations uninterrupted (through the `isr` CLI). Run R: 6 iterations, then --resume to 10.

    Both evaluate only at the end of each process (--eval-every 0): an evaluation in the middle of a run leaves
    the model's state untouched but perturbs later losses at the float-rounding level (CPU kernels), which
    a few iterations of detection training (top-k, NMS, sampling) amplify; the mid-run evaluation is
    exercised by the torchrun test."""
    base = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)
    train2 = make_rect_dataset(base / "train2", 2, seed=5)  # a fixed 2-image batch: overfit
    data = ["--data", str(train2), "--val-data", str(rects)]
    u = base / "u"
    rc = cli.main(["train", *data, *COMMON, "--iters", "10", "--out", str(u), "--export", str(base / "u.pt")])
    assert rc == 0
    r = base / "r"
    first = main(_args(*data, *COMMON, "--iters", "6", "--out", str(r)))
    ck6 = load_checkpoint(r / "checkpoint_last.pt")[2]
    second = main(_args("--resume", str(r / "checkpoint_last.pt"), "--iters", "10", "--quiet"))
    return {"u": u, "r": r, "export": base / "u.pt", "first": first, "second": second, "ck6": ck6}


def test_training_decreases_the_loss(runs):
    rows = [json.loads(x) for x in (runs["u"] / "losses.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 11))
    raw = [r["raw_loss"] for r in rows]
    assert all(math.isfinite(v) for v in raw)
    assert np.mean(raw[-3:]) < 0.8 * np.mean(raw[:3]), raw
    for k in ("loss_mask", "loss_amodal_mask", "loss_occlusion", "loss_classifier", "loss_objectness"):
        assert k in rows[-1]


def test_checkpoints_load_and_carry_training_state(runs):
    u = runs["u"]
    assert (u / "checkpoint_last.pt").is_file() and (u / "checkpoint_best.pt").is_file()
    model, meta = load_model(str(u / "checkpoint_last.pt"))
    assert meta.backbone == "efficientnet_lite0_fpn" and meta.classes == ["__background__", "object"]
    assert (meta.infer_min_size, meta.infer_max_size) == (96, 128)
    assert meta.training["iterations"] == 10 and meta.training["data"][0]["images"] == 2
    _, _, extra = load_checkpoint(u / "checkpoint_last.pt")
    assert extra["iteration"] == 10 and extra["lr_scheduler"]["last_epoch"] == 10
    assert {"model", "optimizer", "lr_scheduler", "args", "epoch"} <= set(extra) | {"model"}
    assert extra["optimizer"]["state"]  # momentum buffers
    pred = Predictor(model, meta, device="cpu", score_threshold=0.0)
    det = pred.predict(np.zeros((H, W, 3), np.uint8))
    assert det.masks.shape[1:] == (H, W)


def test_resume_continues_where_it_stopped(runs):
    ck6, first, second = runs["ck6"], runs["first"], runs["second"]
    assert first["iteration"] == 6 and second["iteration"] == 10
    assert ck6["iteration"] == 6 and ck6["optimizer"]["state"]
    rows = [json.loads(x) for x in (runs["r"] / "losses.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 11))
    # same data stream, optimizer, scheduler and RNG: the resumed run ends where the uninterrupted one does
    su, _, eu = load_checkpoint(runs["u"] / "checkpoint_last.pt")
    sr, _, er = load_checkpoint(runs["r"] / "checkpoint_last.pt")
    assert er["iteration"] == 10 and er["lr_scheduler"]["last_epoch"] == 10
    worst = max(float((su[k].float() - sr[k].float()).abs().max()) for k in su if su[k].is_floating_point())
    assert worst < 1e-5, worst
    raw_u = [json.loads(x)["raw_loss"] for x in (runs["u"] / "losses.jsonl").read_text().splitlines()]
    assert np.allclose([r["raw_loss"] for r in rows], raw_u, rtol=1e-5, atol=1e-6)
    assert torch.equal(eu["optimizer"]["state"][0]["momentum_buffer"], er["optimizer"]["state"][0]["momentum_buffer"])


def test_eval_metrics_curves_and_export(runs):
    u = runs["u"]
    rows = [json.loads(x) for x in (u / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [10]
    assert [json.loads(x)["iteration"] for x in (runs["r"] / "metrics.jsonl").read_text().splitlines()] == [6, 10]
    for r in rows:
        for k in ("mask_ap", "mask_ap50", "mask_ap75", "amodal_ap", "amodal_ap50"):
            assert 0.0 <= r[k] <= 1.0, (k, r[k])
        assert r["num_images"] == 6
    png = u / "training_curves.png"
    assert png.is_file() and png.stat().st_size > 10_000
    obj = torch.load(runs["export"], map_location="cpu", weights_only=True)
    floats = [v for k, v in obj["model"].items() if v.is_floating_point() and not k.endswith(("running_mean",
                                                                                              "running_var"))]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert "optimizer" not in obj
    assert obj["meta"]["metrics"]["mask_ap50"] == pytest.approx(rows[-1]["mask_ap50"])
    assert obj["meta"]["infer_min_size"] == 96 and "hardware" in obj["meta"]["training"]
    model, meta = load_model(str(runs["export"]))
    assert meta.training["iterations"] == 10


def test_torchrun_two_cpu_processes(rects, runs, tmp_path):
    """DistributedDataParallel on two CPU processes (gloo): rank 0 alone writes and evaluates (mid-run too);
    --init copies a checkpoint's weights; --amp without CUDA falls back to fp32 with a note."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "instance_seg_ros.tools.train", "--data", str(rects), "--val-data", str(rects), *COMMON,
           "--iters", "2", "--eval-every", "1", "--eval-max-images", "2", "--device", "cpu", "--out", str(out),
           "--init", str(runs["u"] / "checkpoint_last.pt"), "--amp"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tensors copied" in proc.stdout and "--amp needs CUDA" in proc.stderr
    _, meta, extra = load_checkpoint(out / "checkpoint_last.pt")
    assert extra["iteration"] == 2 and meta.training["processes"] == 2
    assert meta.training["init"].endswith("checkpoint_last.pt") and meta.training["amp"] is False
    assert not any(k.startswith("module.") for k in load_checkpoint(out / "checkpoint_last.pt")[0])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["num_images"]) for r in rows] == [(1, 2), (2, 6)]  # the final evaluation uses all
    assert (out / "checkpoint_best.pt").is_file()


# =========================================================================== RGB -> RGB-D fine-tuning
def test_modality_dropout_removes_depth_or_color(rects):
    ds = AmodalCocoDataset(rects, skip_empty=True)
    sample = ds[0]
    aug = Augment(AugmentConfig.none().__class__(**{**AugmentConfig.none().__dict__, "modality_dropout": 1.0}))
    kinds = set()
    for seed in range(12):
        out = aug(sample, np.random.default_rng(seed))
        if np.isnan(out.depth).all():
            kinds.add("depth")
            assert np.array_equal(out.color, sample.color)
        else:
            kinds.add("color")
            assert (out.color == 128).all() and np.array_equal(out.depth, sample.depth, equal_nan=True)
    assert kinds == {"depth", "color"}
    with pytest.raises(AugmentError, match="modality_dropout"):
        AugmentConfig(modality_dropout=1.5)
    # off by default: the stream of an existing recipe is unchanged
    a = Augment(AugmentConfig())(sample, np.random.default_rng(3))
    b = Augment(AugmentConfig(modality_dropout=0.0))(sample, np.random.default_rng(3))
    assert np.array_equal(a.color, b.color)


def test_init_widens_an_rgb_model_to_rgbd(runs, rects, tmp_path):
    """--init of an RGB checkpoint into --input-mode rgbd: every tensor copied, the first convolution widened with a
    zero depth filter (the model starts as the RGB one), BatchNorm and freezing as the checkpoint was built."""
    from instance_seg_ros.tools.train_engine import build_model, init_weights

    src = runs["u"] / "checkpoint_last.pt"
    a = resolve_args(_args("--data", str(rects), *COMMON, "--input-mode", "rgbd", "--init", str(src)))
    model = build_model(a, 2)
    logs = []
    stats = init_weights(model, str(src), log=logs.append)
    state, meta, _ = load_checkpoint(src)
    assert stats["widened"] == 1 and stats["skipped"] == 0 and stats["copied"] == len(state)
    own = model.state_dict()
    (name,) = [k for k, v in own.items() if v.ndim == 4 and v.shape[1] == 4]
    assert torch.equal(own[name][:, :3], state[name].to(own[name].dtype))
    assert torch.count_nonzero(own[name][:, 3]) == 0
    assert model.builder_kwargs["frozen_bn"] == meta.builder_kwargs["frozen_bn"]
    assert "widened" in logs[0]
