"""What a weights file says about its model: :class:`ModelMeta`, the format constants and the plain-type guard.

Our checkpoints (:mod:`.weights`) and safetensors files (:mod:`.safetensors_io`) carry the same metadata, as the
plain types ``torch.load(weights_only=True)`` and JSON both accept (:func:`to_plain`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .amodal_maskrcnn import AmodalMaskRCNN, build_amodal_maskrcnn
from .backbones import BACKBONES
from .inputs import DEPTH_MAX_M, DEPTH_MEAN, DEPTH_STD, INPUT_MODES

__all__ = ["FORMAT", "VERSION", "ModelMeta", "WeightsError", "check_version", "default_classes", "meta_from_dict",
           "to_plain"]

FORMAT = "instance_seg_ros/amodal_maskrcnn"
VERSION = 1


class WeightsError(ValueError):
    """Weights cannot be saved or loaded; the message names the file and the reason."""


def default_classes(num_classes: int) -> list[str]:
    """``["__background__", "object"]`` for 2 classes, else ``["__background__", "class_1", ...]``."""
    if num_classes == 2:
        return ["__background__", "object"]
    return ["__background__"] + [f"class_{i}" for i in range(1, num_classes)]


@dataclass
class ModelMeta:
    """What a checkpoint says about its model (JSON-serializable; see :meth:`to_dict`).

    Attributes:
        classes (list[str]): class names; index 0 is ``"__background__"``; ``len(classes) == num_classes``.
        input_mode (str): ``rgb`` or ``rgbd``.
        backbone (str): one of :data:`~.backbones.BACKBONES`.
        min_size, max_size (int): the network input size it was trained at.
        infer_min_size, infer_max_size (int): the network input short / long side to run it at; 0 = the
            frame's own size. ``isr train`` sets them to the training size, so a model trained at 240x320 on
            640x480 images sees objects at the same pixel scale in use. :class:`~.predictor.Predictor` takes
            ``model.min_size`` / ``model.max_size`` when nonzero, else these. Missing in older files → 0.
        builder_kwargs (dict): every argument of :func:`build_amodal_maskrcnn` that rebuilds the architecture
            (head sizes, frozen BN, RPN / box settings ...).
        depth_normalization (dict | None): ``{"max_m", "mean", "std"}`` of the depth channel (rgbd).
        training_data (str): a description of the training data.
        metrics (dict[str, float]): evaluation results (e.g. ``{"mask_ap": 0.61}``).
        training (dict): how it was trained (``isr train``: iterations, batch size, lr, hardware, data sets
            with image counts and seeds ...); plain JSON types. Missing in older files → ``{}``.
        created (str): ISO 8601 UTC time.
        torch_version, torchvision_version (str): versions that wrote the file.
        notes (str): anything else.
    """

    classes: list[str]
    input_mode: str = "rgb"
    backbone: str = "resnet18_fpn"
    min_size: int = 480
    max_size: int = 640
    infer_min_size: int = 0
    infer_max_size: int = 0
    builder_kwargs: dict[str, Any] = field(default_factory=dict)
    depth_normalization: dict[str, float] | None = None
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    torch_version: str = ""
    torchvision_version: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.classes, list) or len(self.classes) < 2 or not all(
            isinstance(c, str) for c in self.classes
        ):
            raise WeightsError(f"meta.classes must be a list of at least 2 class names, got {self.classes!r}.")
        if self.classes[0] != "__background__":
            raise WeightsError(f"meta.classes[0] must be '__background__', got {self.classes[0]!r}.")
        if self.input_mode not in INPUT_MODES:
            raise WeightsError(f"meta.input_mode must be one of {', '.join(INPUT_MODES)}, got {self.input_mode!r}.")
        if self.backbone not in BACKBONES:
            raise WeightsError(f"meta.backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}.")
        for name in ("infer_min_size", "infer_max_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise WeightsError(f"meta.{name} must be an integer >= 0 (0 = the frame's own size), got {v!r}.")
        if not isinstance(self.training, dict):
            raise WeightsError(f"meta.training must be a dict, got {type(self.training).__name__}.")
        if self.input_mode == "rgbd" and self.depth_normalization is None:
            self.depth_normalization = {"max_m": DEPTH_MAX_M, "mean": DEPTH_MEAN, "std": DEPTH_STD}
        if not self.created:
            self.created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        if not self.torch_version:
            import torchvision

            self.torch_version = str(torch.__version__)
            self.torchvision_version = str(torchvision.__version__)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def from_model(cls, model: AmodalMaskRCNN, classes: list[str] | None = None, **fields: Any) -> ModelMeta:
        """Meta describing a model made by :func:`build_amodal_maskrcnn` (reads ``model.builder_kwargs``)."""
        bk = dict(getattr(model, "builder_kwargs", {}) or {})
        if not bk:
            raise WeightsError("The model has no builder_kwargs; build it with build_amodal_maskrcnn to save it.")
        classes = list(classes) if classes is not None else default_classes(bk["num_classes"])
        if len(classes) != bk["num_classes"]:
            raise WeightsError(f"{len(classes)} class names given for a model with {bk['num_classes']} classes.")
        depth = None
        if bk["input_mode"] == "rgbd":
            depth = {"max_m": float(model.depth_max_m), "mean": DEPTH_MEAN, "std": DEPTH_STD}
        return cls(
            classes=classes,
            input_mode=bk["input_mode"],
            backbone=bk["backbone"],
            min_size=bk["min_size"],
            max_size=bk["max_size"],
            builder_kwargs=bk,
            depth_normalization=depth,
            **fields,
        )

    def to_dict(self) -> dict[str, Any]:
        return to_plain(dataclasses.asdict(self), "meta")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        """Inverse of :meth:`to_dict`; unknown keys (from newer writers) are ignored."""
        if not isinstance(data, dict):
            raise WeightsError(f"meta must be a dict, got {type(data).__name__}.")
        if "classes" not in data:
            raise WeightsError("meta has no 'classes'.")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise WeightsError(f"meta is malformed: {exc}") from exc

    def build_model(self) -> AmodalMaskRCNN:
        """An untrained model with this meta's architecture."""
        kwargs = dict(self.builder_kwargs)
        kwargs.update(backbone=self.backbone, input_mode=self.input_mode, num_classes=self.num_classes)
        kwargs.setdefault("min_size", self.min_size)
        kwargs.setdefault("max_size", self.max_size)
        if self.depth_normalization:
            kwargs.setdefault("depth_max_m", self.depth_normalization["max_m"])
        kwargs["pretrained_backbone"] = False
        try:
            return build_amodal_maskrcnn(**kwargs)
        except (ValueError, TypeError) as exc:
            raise WeightsError(f"Cannot build the model described by the weights' meta: {exc}") from exc


# --------------------------------------------------------------------------- plain-type guard and checks
def to_plain(obj: Any, where: str) -> Any:
    """``obj`` as types ``torch.load(weights_only=True)`` accepts (Path → str, Namespace → dict,
    numpy scalars → Python); anything else raises :class:`WeightsError`."""
    if obj is None:
        return None
    for t in (bool, int, float, str):  # exact types: subclasses (e.g. torch's TorchVersion) are not loadable
        if isinstance(obj, t):
            return t(obj)
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, argparse.Namespace):
        return to_plain(vars(obj), where)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise WeightsError(f"{where}: dict keys must be str or int, got {type(k).__name__}.")
            out[k] = to_plain(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # numpy scalar
        return obj.item()
    raise WeightsError(
        f"{where} holds a {type(obj).__name__}, which a weights-only checkpoint cannot store; "
        "convert it to plain types (str, numbers, lists, dicts, tensors)."
    )


def check_version(p: Path, version: int) -> None:
    """Refuse a file written by a newer format version than this code reads."""
    if version > VERSION:
        raise WeightsError(f"{p} is checkpoint version {version}; this code reads up to {VERSION}. Update the package.")


def meta_from_dict(p: Path, data: Any) -> ModelMeta:
    """:meth:`ModelMeta.from_dict` with the file's path in the :class:`WeightsError`."""
    try:
        return ModelMeta.from_dict(data)
    except WeightsError as exc:
        raise WeightsError(f"{p}: {exc}") from exc
