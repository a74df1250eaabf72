"""Amodal Mask R-CNN: torchvision's Mask R-CNN with an amodal mask branch and an occlusion head.

:class:`AmodalMaskRCNN` is composed like torchvision's models: a backbone, the RPN, RoI heads and
the transform are handed in or built from defaults when ``None``. On top of :class:`MaskRCNN` it
swaps in :class:`~.heads.AmodalRoIHeads` (the same box / mask parts plus ``amodal_mask_head``,
``amodal_mask_predictor``, ``occlusion_predictor``) and :class:`AmodalRCNNTransform` (which resizes
and pastes ``amodal_masks`` like ``masks``).

Input images are ``Tensor[C, H, W]`` float (see :mod:`.inputs`: RGB in [0, 1], and for ``rgbd`` a
4th depth channel). Training targets per image:

- ``boxes`` (Tensor[G, 4] float, x1 y1 x2 y2): we use the **amodal** box (around the amodal mask) so
  both masks fit the RoI (see :mod:`.heads`); :func:`targets_from_masks` builds them;
- ``labels`` (Tensor[G] int64, 1..num_classes-1);
- ``masks`` (Tensor[G, H, W] uint8, visible) and ``amodal_masks`` (Tensor[G, H, W] uint8);
- ``occlusion`` (Tensor[G] float in [0, 1]; computed from the masks when absent).

Training returns ``loss_classifier, loss_box_reg, loss_objectness, loss_rpn_box_reg, loss_mask,
loss_amodal_mask, loss_occlusion``. Eval returns per image ``boxes`` [N, 4], ``labels`` [N],
``scores`` [N], ``masks`` and ``amodal_masks`` (Tensor[N, 1, H, W] probabilities; amodal ≥ visible
pixelwise) and ``occlusion`` [N].
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from ..masks import mask_bboxes
from .backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, build_backbone
from .heads import AmodalMaskHeads, AmodalMaskPredictor, AmodalRoIHeads, OcclusionPredictor, occlusion_from_masks
from .inputs import DEPTH_MAX_M, DEPTH_MEAN, DEPTH_STD, INPUT_MODES

__all__ = [
    "AmodalMaskRCNN",
    "AmodalRCNNTransform",
    "BuildError",
    "DEFAULT_HEADS",
    "build_amodal_maskrcnn",
    "count_parameters",
    "targets_from_masks",
]


class BuildError(ValueError):
    """The model cannot be built with these arguments; the message says what to change."""


class AmodalRCNNTransform(GeneralizedRCNNTransform):
    """:class:`GeneralizedRCNNTransform` that also resizes (training) and pastes (eval) ``amodal_masks``.

    Works for any number of input channels: ``image_mean`` / ``image_std`` have one entry per channel.
    """

    def resize(self, image, target=None):
        amodal = None
        if target is not None and "amodal_masks" in target:
            target = dict(target)
            amodal = target.pop("amodal_masks")
        image, target = super().resize(image, target)
        if amodal is not None:
            size = image.shape[-2:]
            if amodal.shape[-2:] != size:
                amodal = F.interpolate(amodal[:, None].float(), size=tuple(size))[:, 0].byte()
            target["amodal_masks"] = amodal
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training:
            return result
        result = super().postprocess(result, image_shapes, original_image_sizes)
        for pred, o_im_s in zip(result, original_image_sizes, strict=True):
            if "amodal_masks" in pred:
                pred["amodal_masks"] = paste_masks_in_image(pred["amodal_masks"], pred["boxes"], o_im_s)
        return result


class AmodalMaskRCNN(MaskRCNN):
    """Mask R-CNN with an amodal mask branch and a per-instance occlusion (hidden fraction) output.

    Args:
        backbone (nn.Module): returns an OrderedDict of feature maps and has ``out_channels``.
        num_classes (int | None): including background; ``None`` when ``box_predictor`` and
            ``mask_predictor`` are given.
        amodal_mask_head, amodal_mask_predictor, occlusion_predictor (nn.Module | None): the amodal
            parts; defaults mirror torchvision's mask branch (4 x 256-ch convs, 14 → 28).
        input_mode (str): ``rgb`` or ``rgbd``; recorded on the model (``model.input_mode``) for the
            code that prepares inputs.
        depth_max_m (float): depth range of the depth channel (``rgbd``), see :mod:`.inputs`.
        **kwargs: every :class:`MaskRCNN` argument (``min_size``, ``image_mean``, ``rpn_*``, ``box_*``,
            ``mask_*`` ...). ``image_mean`` / ``image_std`` default to ImageNet's, extended with the
            depth channel's :data:`DEPTH_MEAN` / :data:`DEPTH_STD` for ``rgbd``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        *,
        amodal_mask_head: nn.Module | None = None,
        amodal_mask_predictor: nn.Module | None = None,
        occlusion_predictor: nn.Module | None = None,
        input_mode: str = "rgb",
        depth_max_m: float = DEPTH_MAX_M,
        **kwargs: Any,
    ) -> None:
        if input_mode not in INPUT_MODES:
            raise BuildError(f"input_mode must be one of {', '.join(INPUT_MODES)}, got {input_mode!r}.")
        channels = 3 if input_mode == "rgb" else 4
        mean = list(kwargs.pop("image_mean", None) or IMAGENET_MEAN)
        std = list(kwargs.pop("image_std", None) or IMAGENET_STD)
        if channels == 4 and len(mean) == 3:
            mean.append(DEPTH_MEAN)
        if channels == 4 and len(std) == 3:
            std.append(DEPTH_STD)
        if len(mean) != channels or len(std) != channels:
            raise BuildError(
                f"image_mean and image_std need {channels} entries for input_mode {input_mode}, "
                f"got {len(mean)} and {len(std)}."
            )
        super().__init__(backbone, num_classes, image_mean=mean, image_std=std, **kwargs)
        n_cls = self.roi_heads.box_predictor.cls_score.out_features
        if amodal_mask_head is None:
            amodal_mask_head = AmodalMaskHeads(backbone.out_channels, (256, 256, 256, 256), 1)
        if amodal_mask_predictor is None:
            amodal_mask_predictor = AmodalMaskPredictor(256, 256, n_cls)
        if occlusion_predictor is None:
            out = _last_channels(self.roi_heads.mask_head) + _last_channels(amodal_mask_head)
            resolution = self.roi_heads.mask_roi_pool.output_size[0]
            occlusion_predictor = OcclusionPredictor(out, resolution=resolution)
        self.roi_heads = AmodalRoIHeads.from_roi_heads(
            self.roi_heads,
            amodal_mask_head=amodal_mask_head,
            amodal_mask_predictor=amodal_mask_predictor,
            occlusion_predictor=occlusion_predictor,
        )
        t = self.transform
        self.transform = AmodalRCNNTransform(
            t.min_size, t.max_size, t.image_mean, t.image_std, size_divisible=t.size_divisible, fixed_size=t.fixed_size
        )
        self.input_mode = input_mode
        self.in_channels = channels
        self.depth_max_m = float(depth_max_m)
        self.num_classes = n_cls
        #: JSON-able arguments that rebuild this architecture (set by build_amodal_maskrcnn).
        self.builder_kwargs: dict[str, Any] = {}


def _init_mask_logits(predictor: nn.Module) -> None:
    """Start mask logits near 0 (Detectron2's N(0, 0.001)); torchvision's kaiming init of the 1x1
    logits conv gives logits with std ~20 and a first mask loss ~10 that makes early training diverge."""
    conv = predictor.mask_fcn_logits
    nn.init.normal_(conv.weight, std=0.001)
    nn.init.zeros_(conv.bias)


def _last_channels(head: nn.Module) -> int:
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise BuildError("A mask head must contain at least one Conv2d.")
    return convs[-1].out_channels


#: Head sizes per backbone: box-head representation size, FPN channels, mask-head channels.
#: resnet50_fpn keeps torchvision's sizes (so COCO weights load). The light backbones use 128-channel
#: FPN and mask heads and a 512-wide box head: at 640x480 with 30 detections the two 256-channel mask
#: branches alone cost ~28 GMAC (more than the backbone), and the 1024-wide box head is 12.8 M
#: parameters. With these sizes efficientnet_lite0_fpn is ~9 M parameters (~18 MB as fp16).
DEFAULT_HEADS: dict[str, dict[str, int]] = {
    "resnet50_fpn": {"representation_size": 1024, "fpn_channels": 256, "mask_head_channels": 256},
    "resnet18_fpn": {"representation_size": 512, "fpn_channels": 128, "mask_head_channels": 128},
    "mobilenet_v3_large_fpn": {"representation_size": 512, "fpn_channels": 128, "mask_head_channels": 128},
    "efficientnet_lite0_fpn": {"representation_size": 512, "fpn_channels": 128, "mask_head_channels": 128},
}

#: MaskRCNN keyword arguments the builder sets unless given. 300 proposals at test time (torchvision: 1000)
#: is plenty for tabletop scenes and cuts the box head's cost by ~3x.
_BUILDER_MODEL_DEFAULTS: dict[str, Any] = {"rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 300}


def build_amodal_maskrcnn(
    *,
    backbone: str = "resnet18_fpn",
    input_mode: str = "rgb",
    num_classes: int = 2,
    min_size: int = 480,
    max_size: int = 640,
    pretrained_backbone: bool = False,
    box_detections_per_img: int = 100,
    representation_size: int | None = None,
    fpn_channels: int | None = None,
    mask_head_channels: int | None = None,
    frozen_bn: bool | None = None,
    trainable_backbone_layers: int | None = None,
    depth_max_m: float = DEPTH_MAX_M,
    **kwargs: Any,
) -> AmodalMaskRCNN:
    """Build an :class:`AmodalMaskRCNN`.

    Args:
        backbone: ``resnet50_fpn`` (accuracy), ``resnet18_fpn`` / ``mobilenet_v3_large_fpn`` (light),
            ``efficientnet_lite0_fpn`` (light, ImageNet weights available offline).
        input_mode: ``rgb`` or ``rgbd`` (depth as a 4th channel, see :mod:`.inputs`).
        num_classes: including background; 2 = class-agnostic "object" mode.
        min_size, max_size: network input short / long side (the transform never upscales past these;
            the Predictor overrides them per frame for native resolution).
        pretrained_backbone: ImageNet backbone weights (offline only for efficientnet_lite0_fpn).
        box_detections_per_img: at most this many detections per image.
        representation_size, fpn_channels, mask_head_channels: head sizes; ``None`` = :data:`DEFAULT_HEADS`.
        frozen_bn: backbone BatchNorm frozen; ``None`` = ``pretrained_backbone``.
        trainable_backbone_layers: see :func:`.backbones.build_backbone`.
        depth_max_m: depth range of the depth channel (``rgbd``).
        **kwargs: passed to :class:`AmodalMaskRCNN` / :class:`MaskRCNN` (e.g. ``box_score_thresh``,
            ``rpn_post_nms_top_n_test``). Must be JSON-able: they are recorded in ``model.builder_kwargs``.

    Raises:
        BuildError: a bad argument, with what to change.
    """
    if backbone not in BACKBONES:
        raise BuildError(f"Unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")
    if input_mode not in INPUT_MODES:
        raise BuildError(f"input_mode must be one of {', '.join(INPUT_MODES)}, got {input_mode!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise BuildError(f"num_classes counts the background and must be an integer >= 2, got {num_classes!r}.")
    for name, v in (("min_size", min_size), ("max_size", max_size), ("box_detections_per_img", box_detections_per_img)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BuildError(f"{name} must be a positive integer, got {v!r}.")
    if min_size > max_size:
        raise BuildError(f"min_size ({min_size}) must not exceed max_size ({max_size}).")
    if not (isinstance(depth_max_m, (int, float)) and math.isfinite(depth_max_m) and depth_max_m > 0):
        raise BuildError(f"depth_max_m must be a positive number of meters, got {depth_max_m!r}.")
    heads = dict(DEFAULT_HEADS[backbone])
    for name, v in (
        ("representation_size", representation_size),
        ("fpn_channels", fpn_channels),
        ("mask_head_channels", mask_head_channels),
    ):
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 8:
                raise BuildError(f"{name} must be an integer >= 8, got {v!r}.")
            heads[name] = v
    model_kwargs = {**_BUILDER_MODEL_DEFAULTS, **kwargs}
    for k in ("backbone", "num_classes", "box_roi_pool", "box_head", "box_predictor", "mask_head", "mask_predictor"):
        if k in model_kwargs:
            raise BuildError(f"{k} is set by build_amodal_maskrcnn; compose AmodalMaskRCNN directly to pass your own.")

    spec = build_backbone(
        backbone,
        in_channels=3 if input_mode == "rgb" else 4,
        pretrained=pretrained_backbone,
        frozen_bn=frozen_bn,
        trainable_layers=trainable_backbone_layers,
        fpn_channels=heads["fpn_channels"],
    )
    c_fpn, c_mask, rep = heads["fpn_channels"], heads["mask_head_channels"], heads["representation_size"]
    box_roi_pool = MultiScaleRoIAlign(featmap_names=spec.featmap_names, output_size=7, sampling_ratio=2)
    mask_roi_pool = MultiScaleRoIAlign(featmap_names=spec.featmap_names, output_size=14, sampling_ratio=2)
    mask_layers = (c_mask,) * 4
    model = AmodalMaskRCNN(
        spec.backbone,
        None,
        min_size=min_size,
        max_size=max_size,
        image_mean=spec.image_mean,
        image_std=spec.image_std,
        rpn_anchor_generator=spec.anchor_generator,
        box_roi_pool=box_roi_pool,
        box_head=TwoMLPHead(c_fpn * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes),
        box_detections_per_img=box_detections_per_img,
        mask_roi_pool=mask_roi_pool,
        mask_head=MaskRCNNHeads(c_fpn, mask_layers, 1),
        mask_predictor=MaskRCNNPredictor(c_mask, c_mask, num_classes),
        amodal_mask_head=AmodalMaskHeads(c_fpn, mask_layers, 1),
        amodal_mask_predictor=AmodalMaskPredictor(c_mask, c_mask, num_classes),
        occlusion_predictor=OcclusionPredictor(2 * c_mask, resolution=14),
        input_mode=input_mode,
        depth_max_m=depth_max_m,
        **model_kwargs,
    )
    for predictor in (model.roi_heads.mask_predictor, model.roi_heads.amodal_mask_predictor):
        _init_mask_logits(predictor)
    model.backbone_name = backbone
    model.builder_kwargs = {
        "backbone": backbone,
        "input_mode": input_mode,
        "num_classes": num_classes,
        "min_size": min_size,
        "max_size": max_size,
        "box_detections_per_img": box_detections_per_img,
        **heads,
        "frozen_bn": bool(pretrained_backbone if frozen_bn is None else frozen_bn),
        "trainable_backbone_layers": spec.trainable_layers,
        "depth_max_m": float(depth_max_m),
        **model_kwargs,
    }
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts: ``total``, ``trainable`` and per top-level part (backbone, rpn, roi_heads)."""
    out = {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    for name, child in model.named_children():
        out[name] = sum(p.numel() for p in child.parameters())
    return out


def targets_from_masks(
    visible: torch.Tensor,
    amodal: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """A training target from per-object masks.

    Args:
        visible (Tensor[G, H, W]): visible masks (nonzero = inside).
        amodal (Tensor[G, H, W]): amodal masks; ``amodal |= visible`` is applied.
        labels (Tensor[G] int64 | None): classes; ``None`` = all 1 ("object").

    Returns:
        dict with ``boxes`` (Tensor[G, 4] float32, the amodal box, x2/y2 exclusive so a one-pixel
        mask has a positive size), ``labels``, ``masks`` and ``amodal_masks`` (uint8) and ``occlusion``
        (Tensor[G] float32). Objects whose amodal mask is empty are dropped.
    """
    if visible.dim() != 3 or visible.shape != amodal.shape:
        raise ValueError(
            f"visible and amodal masks must be [G, H, W] of one shape, got {tuple(visible.shape)} and "
            f"{tuple(amodal.shape)}."
        )
    vis = visible != 0
    amo = (amodal != 0) | vis
    if labels is None:
        labels = torch.ones(vis.shape[0], dtype=torch.int64, device=vis.device)
    if labels.shape != (vis.shape[0],):
        raise ValueError(f"labels must be [G] with G = {vis.shape[0]}, got {tuple(labels.shape)}.")
    keep = amo.flatten(1).any(1)
    vis, amo, labels = vis[keep], amo[keep], labels[keep].to(torch.int64)
    boxes = torch.from_numpy(mask_bboxes(amo)).to(device=amo.device, dtype=torch.float32)  # (x, y, w, h)
    boxes[:, 2:] += boxes[:, :2]  # (x1, y1, x2, y2), x2 / y2 exclusive
    return {
        "boxes": boxes,
        "labels": labels,
        "masks": vis.to(torch.uint8),
        "amodal_masks": amo.to(torch.uint8),
        "occlusion": occlusion_from_masks(vis, amo),
    }
