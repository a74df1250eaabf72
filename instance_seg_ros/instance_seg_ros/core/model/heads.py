"""The amodal branch of the Mask R-CNN: heads, predictors, losses and inference.

Composition follows torchvision's Mask R-CNN: the RoI features pooled for the visible mask branch
(``mask_roi_pool``, 14x14) feed a second, identically shaped branch that predicts the *amodal* mask
(the object's full shape, hidden parts included) in the same 14 → 28 layout, and a small
:class:`OcclusionPredictor` that reads both branches' features and predicts the hidden fraction of
the object, ``1 - |visible| / |amodal|`` in [0, 1].

RoI box choice: the amodal branch uses the same proposal / detected box as the visible branch, and
amodal ground-truth masks are projected onto it with ``project_masks_on_boxes`` exactly like the
visible ones. We recommend the **amodal box** (the box around the amodal mask) as the ground-truth
``boxes`` target (see :func:`~instance_seg_ros.core.model.amodal_maskrcnn.targets_from_masks`): since
amodal ⊇ visible it contains both masks, so neither is cropped by the RoI; with visible boxes the
hidden part that sticks out of the box could never be predicted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_inference,
    maskrcnn_loss,
)

__all__ = [
    "AmodalMaskHeads",
    "AmodalMaskPredictor",
    "AmodalRoIHeads",
    "OcclusionPredictor",
    "amodal_mask_inference",
    "amodal_mask_loss",
    "occlusion_from_masks",
    "occlusion_inference",
    "occlusion_loss",
]


class AmodalMaskHeads(MaskRCNNHeads):
    """The amodal mask branch's FCN: ``Tensor[K, C, 14, 14] -> Tensor[K, layers[-1], 14, 14]``.

    Same layout as torchvision's :class:`MaskRCNNHeads` (a stack of 3x3 conv + ReLU), kept as its
    own class so the two branches are distinct modules with their own weights.
    """


class AmodalMaskPredictor(MaskRCNNPredictor):
    """``Tensor[K, C, 14, 14] -> Tensor[K, num_classes, 28, 28]`` amodal mask logits (2x deconv + 1x1).

    Unlike torchvision's predictor, the logits conv starts at N(0, 0.001) (as in Detectron2), so the
    initial logits are ~0 instead of having a standard deviation of ~20.
    """

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__(in_channels, dim_reduced, num_classes)
        nn.init.normal_(self.mask_fcn_logits.weight, std=0.001)
        nn.init.zeros_(self.mask_fcn_logits.bias)


class OcclusionPredictor(nn.Module):
    """Per-RoI hidden fraction from both mask branches' features.

    Args:
        in_channels (int): channels of the visible + amodal head outputs together (``2 * C``).
        conv_channels (int): channels after the stride-2 3x3 conv.
        representation_size (int): width of the hidden fully connected layer.
        resolution (int): spatial size of the head features (14 for Mask R-CNN).

    ``forward(visible_features Tensor[K, C, R, R], amodal_features Tensor[K, C, R, R]) -> Tensor[K]``
    returns logits; ``sigmoid`` gives the predicted hidden fraction in [0, 1].
    """

    def __init__(
        self, in_channels: int, conv_channels: int = 64, representation_size: int = 128, resolution: int = 14
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, conv_channels, kernel_size=3, stride=2, padding=1)
        out_res = (resolution + 1) // 2
        self.fc = nn.Linear(conv_channels * out_res * out_res, representation_size)
        self.occlusion_logit = nn.Linear(representation_size, 1)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, visible_features: torch.Tensor, amodal_features: torch.Tensor) -> torch.Tensor:
        x = torch.cat([visible_features, amodal_features], dim=1)
        x = F.relu(self.conv(x))
        x = F.relu(self.fc(x.flatten(start_dim=1)))
        return self.occlusion_logit(x)[:, 0]


# --------------------------------------------------------------------------- free functions
def amodal_mask_loss(
    amodal_logits: torch.Tensor,
    proposals: list[torch.Tensor],
    gt_amodal_masks: list[torch.Tensor],
    gt_labels: list[torch.Tensor],
    matched_idxs: list[torch.Tensor],
) -> torch.Tensor:
    """Binary cross-entropy of the amodal mask logits of the positive RoIs.

    Args:
        amodal_logits (Tensor[K, num_classes, M, M]): logits of the K positive proposals.
        proposals (list[Tensor[K_i, 4]]): positive proposals per image (x1, y1, x2, y2).
        gt_amodal_masks (list[Tensor[G_i, H, W]]): amodal ground-truth masks (uint8 / bool / float).
        gt_labels (list[Tensor[G_i]] int64), matched_idxs (list[Tensor[K_i]] int64): the matched GT.

    The amodal masks are projected on the proposal boxes like the visible ones (RoIAlign), so this
    is torchvision's :func:`maskrcnn_loss` applied to the amodal targets. Returns a scalar.
    """
    return maskrcnn_loss(amodal_logits, proposals, gt_amodal_masks, gt_labels, matched_idxs)


def occlusion_loss(
    occlusion_logits: torch.Tensor, gt_occlusion: list[torch.Tensor], matched_idxs: list[torch.Tensor]
) -> torch.Tensor:
    """Binary cross-entropy between predicted and true hidden fractions (soft targets in [0, 1]).

    Args:
        occlusion_logits (Tensor[K]): logits of the K positive proposals (all images concatenated).
        gt_occlusion (list[Tensor[G_i]] float): hidden fraction of each ground-truth object.
        matched_idxs (list[Tensor[K_i]] int64): matched GT index of each positive proposal.
    """
    targets = [occ[idx] for occ, idx in zip(gt_occlusion, matched_idxs, strict=True)]
    target = torch.cat(targets).to(occlusion_logits) if targets else occlusion_logits.new_zeros(0)
    if target.numel() == 0:
        return occlusion_logits.sum() * 0
    return F.binary_cross_entropy_with_logits(occlusion_logits, target.clamp(0.0, 1.0))


def amodal_mask_inference(
    amodal_logits: torch.Tensor, labels: list[torch.Tensor], visible_probs: list[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """Amodal mask probabilities of each detection's predicted class.

    Args:
        amodal_logits (Tensor[K, num_classes, M, M]): logits of all detections of the batch.
        labels (list[Tensor[K_i]] int64): predicted class of each detection, per image.
        visible_probs (list[Tensor[K_i, 1, M, M]] | None): the visible probabilities; when given, the
            amodal probability is raised to at least the visible one (``max``), so that for any
            threshold the amodal mask contains the visible mask (pasting is a convex interpolation,
            so this survives :func:`paste_masks_in_image`).

    Returns:
        list[Tensor[K_i, 1, M, M]] probabilities in [0, 1].
    """
    probs = maskrcnn_inference(amodal_logits, labels)
    if visible_probs is None:
        return list(probs)
    return [torch.maximum(a, v) for a, v in zip(probs, visible_probs, strict=True)]


def occlusion_inference(occlusion_logits: torch.Tensor, boxes_per_image: list[int]) -> list[torch.Tensor]:
    """``Tensor[K]`` logits → per-image ``Tensor[K_i]`` hidden fractions in [0, 1]."""
    return list(occlusion_logits.sigmoid().split(boxes_per_image, dim=0))


def occlusion_from_masks(visible: torch.Tensor, amodal: torch.Tensor) -> torch.Tensor:
    """Hidden fraction ``1 - |visible ∩ amodal| / |amodal|`` of each object.

    Args:
        visible, amodal (Tensor[N, H, W]): masks (any dtype; nonzero = inside).

    Returns:
        Tensor[N] float32 in [0, 1]; 0 for an empty amodal mask.
    """
    if visible.shape != amodal.shape or visible.dim() != 3:
        raise ValueError(
            f"visible and amodal masks must both be [N, H, W] of the same shape, got {tuple(visible.shape)} "
            f"and {tuple(amodal.shape)}."
        )
    a = amodal != 0
    v = (visible != 0) & a
    area = a.flatten(1).sum(1).float()
    vis = v.flatten(1).sum(1).float()
    return torch.where(area > 0, 1.0 - vis / area.clamp(min=1.0), torch.zeros_like(area))


# --------------------------------------------------------------------------- RoI heads
class AmodalRoIHeads(RoIHeads):
    """torchvision :class:`RoIHeads` plus the amodal mask branch and the occlusion predictor.

    Training targets per image (beyond ``boxes``, ``labels``, ``masks``):
    ``amodal_masks`` (Tensor[G, H, W] uint8) and ``occlusion`` (Tensor[G] float; computed from the
    masks with :func:`occlusion_from_masks` when absent).

    Losses (training): ``loss_classifier``, ``loss_box_reg``, ``loss_mask``, ``loss_amodal_mask``,
    ``loss_occlusion``. Detections (eval), per image: ``boxes`` (Tensor[K, 4]), ``labels``
    (Tensor[K] int64), ``scores`` (Tensor[K]), ``masks`` and ``amodal_masks`` (Tensor[K, 1, 28, 28]
    probabilities, pasted into the image by the transform), ``occlusion`` (Tensor[K] in [0, 1]).

    The visible and amodal branches share one RoIAlign of the mask features.
    """

    def __init__(
        self,
        *args,
        amodal_mask_head: nn.Module | None = None,
        amodal_mask_predictor: nn.Module | None = None,
        occlusion_predictor: nn.Module | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.amodal_mask_head = amodal_mask_head
        self.amodal_mask_predictor = amodal_mask_predictor
        self.occlusion_predictor = occlusion_predictor

    @classmethod
    def from_roi_heads(
        cls,
        heads: RoIHeads,
        *,
        amodal_mask_head: nn.Module,
        amodal_mask_predictor: nn.Module,
        occlusion_predictor: nn.Module | None,
    ) -> AmodalRoIHeads:
        """The same box and mask parts and settings as ``heads`` (e.g. built by ``MaskRCNN``), plus the
        amodal branch."""
        return cls(
            heads.box_roi_pool,
            heads.box_head,
            heads.box_predictor,
            heads.proposal_matcher.high_threshold,
            heads.proposal_matcher.low_threshold,
            heads.fg_bg_sampler.batch_size_per_image,
            heads.fg_bg_sampler.positive_fraction,
            heads.box_coder.weights,
            heads.score_thresh,
            heads.nms_thresh,
            heads.detections_per_img,
            mask_roi_pool=heads.mask_roi_pool,
            mask_head=heads.mask_head,
            mask_predictor=heads.mask_predictor,
            amodal_mask_head=amodal_mask_head,
            amodal_mask_predictor=amodal_mask_predictor,
            occlusion_predictor=occlusion_predictor,
        )

    def has_amodal_mask(self) -> bool:
        return self.has_mask() and self.amodal_mask_head is not None and self.amodal_mask_predictor is not None

    def has_occlusion(self) -> bool:
        return self.has_amodal_mask() and self.occlusion_predictor is not None

    def check_targets(self, targets):
        super().check_targets(targets)
        if self.has_amodal_mask():
            for i, t in enumerate(targets):
                if "amodal_masks" not in t:
                    raise ValueError(
                        f"Training target {i} has no 'amodal_masks'; every target needs amodal_masks [N, H, W] "
                        "(uint8) next to the visible 'masks'."
                    )
                if t["amodal_masks"].shape != t["masks"].shape:
                    raise ValueError(
                        f"Training target {i}: amodal_masks {tuple(t['amodal_masks'].shape)} must have the shape of "
                        f"masks {tuple(t['masks'].shape)}."
                    )

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Args: features (dict[str, Tensor[B, C, h, w]]), proposals (list[Tensor[P_i, 4]]),
        image_shapes (list[(H, W)]), targets (list[dict], training only). Returns (detections, losses)."""
        if targets is not None:
            for t in targets:
                if t["boxes"].dtype not in (torch.float, torch.double, torch.half):
                    raise TypeError(f"target boxes must be of float type, got {t['boxes'].dtype}.")
                if t["labels"].dtype != torch.int64:
                    raise TypeError(f"target labels must be of int64 type, got {t['labels'].dtype}.")

        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        else:
            labels = None
            regression_targets = None
            matched_idxs = None

        box_features = self.box_roi_pool(features, proposals, image_shapes)
        box_features = self.box_head(box_features)
        class_logits, box_regression = self.box_predictor(box_features)

        result: list[dict[str, torch.Tensor]] = []
        losses: dict[str, torch.Tensor] = {}
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        else:
            boxes, scores, det_labels = self.postprocess_detections(
                class_logits, box_regression, proposals, image_shapes
            )
            result = [
                {"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, det_labels, strict=True)
            ]

        if not self.has_mask():
            return result, losses

        if self.training:
            mask_proposals, pos_matched_idxs = [], []
            for img_id in range(len(proposals)):
                pos = torch.where(labels[img_id] > 0)[0]
                mask_proposals.append(proposals[img_id][pos])
                pos_matched_idxs.append(matched_idxs[img_id][pos])
        else:
            mask_proposals = [r["boxes"] for r in result]
            pos_matched_idxs = []

        roi_features = self.mask_roi_pool(features, mask_proposals, image_shapes)
        visible_features = self.mask_head(roi_features)
        mask_logits = self.mask_predictor(visible_features)
        amodal_logits = occlusion_logits = None
        if self.has_amodal_mask():
            amodal_features = self.amodal_mask_head(roi_features)
            amodal_logits = self.amodal_mask_predictor(amodal_features)
            if self.has_occlusion():
                occlusion_logits = self.occlusion_predictor(visible_features, amodal_features)

        if self.training:
            gt_labels = [t["labels"] for t in targets]
            losses["loss_mask"] = maskrcnn_loss(
                mask_logits, mask_proposals, [t["masks"] for t in targets], gt_labels, pos_matched_idxs
            )
            if amodal_logits is not None:
                gt_amodal = [t["amodal_masks"] for t in targets]
                losses["loss_amodal_mask"] = amodal_mask_loss(
                    amodal_logits, mask_proposals, gt_amodal, gt_labels, pos_matched_idxs
                )
            if occlusion_logits is not None:
                gt_occ = [
                    t["occlusion"] if "occlusion" in t else occlusion_from_masks(t["masks"], t["amodal_masks"])
                    for t in targets
                ]
                losses["loss_occlusion"] = occlusion_loss(occlusion_logits, gt_occ, pos_matched_idxs)
        else:
            det_labels = [r["labels"] for r in result]
            visible_probs = maskrcnn_inference(mask_logits, det_labels)
            for prob, r in zip(visible_probs, result, strict=True):
                r["masks"] = prob
            if amodal_logits is not None:
                amodal_probs = amodal_mask_inference(amodal_logits, det_labels, visible_probs)
                for prob, r in zip(amodal_probs, result, strict=True):
                    r["amodal_masks"] = prob
            if occlusion_logits is not None:
                per_image = occlusion_inference(occlusion_logits, [len(lab) for lab in det_labels])
                for occ, r in zip(per_image, result, strict=True):
                    r["occlusion"] = occ
        return result, losses
