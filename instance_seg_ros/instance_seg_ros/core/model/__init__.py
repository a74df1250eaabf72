"""Amodal Mask R-CNN: model composition, weights and single-frame prediction (no ROS).

- :mod:`.backbones`: FPN backbones (resnet50/resnet18/mobilenet_v3_large/efficientnet_lite0).
- :mod:`.heads`: the amodal mask branch, the occlusion predictor, ``AmodalRoIHeads`` and their
  losses / inference functions.
- :mod:`.amodal_maskrcnn`: ``AmodalMaskRCNN`` and ``build_amodal_maskrcnn``.
- :mod:`.inputs`: frame → network input (RGB, optional depth channel).
- :mod:`.meta`: ``ModelMeta`` (what a weights file says about its model), ``FORMAT``, ``VERSION``.
- :mod:`.safetensors_io`: the safetensors container of our weights.
- :mod:`.weights`: saving and reading weights files, ``load_model``.
- :mod:`.predictor`: ``Predictor`` → ``Detections``.
"""

from .amodal_maskrcnn import (
    DEFAULT_HEADS,
    AmodalMaskRCNN,
    AmodalRCNNTransform,
    BuildError,
    build_amodal_maskrcnn,
    count_parameters,
    targets_from_masks,
)
from .backbones import BACKBONES, BackboneError, build_backbone
from .heads import (
    AmodalMaskHeads,
    AmodalMaskPredictor,
    AmodalRoIHeads,
    OcclusionPredictor,
    amodal_mask_inference,
    amodal_mask_loss,
    occlusion_from_masks,
    occlusion_loss,
)
from .inputs import DEPTH_MAX_M, DEPTH_MEAN, DEPTH_STD, INPUT_MODES, InputError, depth_to_channel, frame_to_input
from .meta import FORMAT, ModelMeta, WeightsError
from .predictor import Detections, Predictor, PredictorError, resolve_device
from .weights import (
    BUNDLED_WEIGHTS,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_weights,
)

__all__ = [
    "BACKBONES",
    "BUNDLED_WEIGHTS",
    "DEFAULT_HEADS",
    "DEPTH_MAX_M",
    "DEPTH_MEAN",
    "DEPTH_STD",
    "FORMAT",
    "INPUT_MODES",
    "AmodalMaskHeads",
    "AmodalMaskPredictor",
    "AmodalMaskRCNN",
    "AmodalRCNNTransform",
    "AmodalRoIHeads",
    "BackboneError",
    "BuildError",
    "Detections",
    "InputError",
    "ModelMeta",
    "OcclusionPredictor",
    "Predictor",
    "PredictorError",
    "WeightsError",
    "amodal_mask_inference",
    "amodal_mask_loss",
    "build_amodal_maskrcnn",
    "build_backbone",
    "count_parameters",
    "depth_to_channel",
    "frame_to_input",
    "load_checkpoint",
    "load_model",
    "occlusion_from_masks",
    "occlusion_loss",
    "resolve_device",
    "save_checkpoint",
    "save_weights",
    "targets_from_masks",
]
