"""Model weights: our checkpoint format, its metadata, and loading a model from a spec.

A checkpoint is one ``torch.save`` of a plain dict::

    {"format": "instance_seg_ros/amodal_maskrcnn", "version": 1,
     "meta": {...ModelMeta as plain types...},
     "model": state_dict,
     # training checkpoints only (torchvision references/detection style):
     "optimizer": ..., "lr_scheduler": ..., "args": {...}, "epoch": int}

It is read **only** with ``torch.load(path, map_location="cpu", weights_only=True)``: tensors and
plain containers, never arbitrary pickled objects, and there is no fallback. Anything else (a pickle
of an object, random bytes, a truncated file, a dict without our format key, a directory) is refused
with :class:`WeightsError` naming the path and the reason.

The shipped model (``save_weights(..., half=True)``) stores floating tensors as fp16 (normalization
statistics and anything outside the fp16 range stay fp32); loading converts back to fp32.

``load_model(spec)`` specs: ``none`` (untrained), ``bundled`` (``instance_seg_ros/weights/
amodal_maskrcnn.pt`` inside the package), ``coco`` (torchvision's COCO Mask R-CNN, needs a
download) or a path to a checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .amodal_maskrcnn import AmodalMaskRCNN, build_amodal_maskrcnn
from .backbones import BACKBONES
from .inputs import DEPTH_MAX_M, DEPTH_MEAN, DEPTH_STD, INPUT_MODES

__all__ = [
    "BUNDLED_WEIGHTS",
    "FORMAT",
    "VERSION",
    "ModelMeta",
    "WeightsError",
    "coco_to_amodal_state_dict",
    "default_classes",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "save_weights",
]

FORMAT = "instance_seg_ros/amodal_maskrcnn"
VERSION = 1
#: The model shipped inside the package (``package_data`` in setup.py installs ``weights/*.pt``).
BUNDLED_WEIGHTS = Path(__file__).resolve().parent.parent.parent / "weights" / "amodal_maskrcnn.pt"
#: weights="none" builds the untrained model from this torch seed, so that it is the same in every run
UNTRAINED_SEED = 0
_FP16_MAX = 65504.0
_KEEP_FP32_SUFFIXES = ("running_mean", "running_var")

log_ = logging.getLogger(__name__)


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
        return _plain(dataclasses.asdict(self), "meta")

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


# --------------------------------------------------------------------------- plain-type guard
def _plain(obj: Any, where: str) -> Any:
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
        return _plain(vars(obj), where)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise WeightsError(f"{where}: dict keys must be str or int, got {type(k).__name__}.")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # numpy scalar
        return obj.item()
    raise WeightsError(
        f"{where} holds a {type(obj).__name__}, which a weights-only checkpoint cannot store; "
        "convert it to plain types (str, numbers, lists, dicts, tensors)."
    )


# --------------------------------------------------------------------------- save
def _atomic_save(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        raise WeightsError(f"Cannot save weights to {p}: it is a directory; pass a file path ending in .pt.")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: ModelMeta, **extra: Any) -> Path:
    """Write a full-precision checkpoint (training: pass ``optimizer=opt.state_dict()``,
    ``lr_scheduler=...``, ``args=...``, ``epoch=...``). Written atomically; returns the path."""
    if not isinstance(meta, ModelMeta):
        raise WeightsError(f"meta must be a ModelMeta, got {type(meta).__name__}.")
    reserved = {"format", "version", "meta", "model"} & set(extra)
    if reserved:
        raise WeightsError(f"{', '.join(sorted(reserved))} are reserved checkpoint keys; pick other names.")
    obj = {"format": FORMAT, "version": VERSION, "meta": meta.to_dict(), "model": model.state_dict()}
    for k, v in extra.items():
        obj[k] = _plain(v, k)
    return _atomic_save(obj, path)


def _half_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if (
            v.is_floating_point()
            and v.dtype != torch.float16
            and not k.endswith(_KEEP_FP32_SUFFIXES)
            and (v.numel() == 0 or float(v.abs().max()) <= _FP16_MAX)
        ):
            v = v.half()
        out[k] = v.contiguous()
    return out


def save_weights(path: str | os.PathLike, model: nn.Module, meta: ModelMeta, half: bool = True) -> Path:
    """Write a shipping file (no optimizer state): fp16 floating tensors when ``half``."""
    if not isinstance(meta, ModelMeta):
        raise WeightsError(f"meta must be a ModelMeta, got {type(meta).__name__}.")
    state = model.state_dict()
    state = _half_state_dict(state) if half else {k: v.detach().cpu() for k, v in state.items()}
    return _atomic_save({"format": FORMAT, "version": VERSION, "meta": meta.to_dict(), "model": state}, path)


# --------------------------------------------------------------------------- load
def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelMeta, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` / :func:`save_weights`.

    Returns:
        (state_dict, meta, extra): ``extra`` holds the other top-level keys (optimizer, epoch ...).

    Raises:
        WeightsError: the path is not a regular file, or the file is not one of our checkpoints.
    """
    given = Path(path).expanduser()
    if not given.exists():
        raise WeightsError(f"Weights file {given} does not exist; pass the path of a .pt file written by `isr train`.")
    try:
        p = given.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise WeightsError(f"Cannot resolve weights path {path}: {exc}") from exc
    if not p.is_file():
        shown = str(given) if p == given else f"{given} (-> {p})"
        raise WeightsError(f"Weights path {shown} is not a regular file (a directory?); pass the .pt file itself.")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError ...: all mean "not ours"
        reason = _reason(exc)
        raise WeightsError(
            f"{p} is not a loadable weights file ({type(exc).__name__}: {reason[:300]}). Only checkpoints of "
            "tensors and plain types are read (torch.load weights_only=True); re-export it with save_weights."
        ) from exc
    if not isinstance(obj, dict):
        raise WeightsError(f"{p} holds a {type(obj).__name__}, not an instance_seg_ros checkpoint dict.")
    if obj.get("format") != FORMAT:
        hint = " It looks like a bare state dict;" if "format" not in obj and obj else ""
        raise WeightsError(
            f"{p} is not an instance_seg_ros checkpoint: its 'format' key is {obj.get('format')!r}, expected "
            f"{FORMAT!r}.{hint} Wrap it with save_weights(path, model, meta)."
        )
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise WeightsError(f"{p}: checkpoint 'version' must be a positive integer, got {version!r}.")
    if version > VERSION:
        raise WeightsError(f"{p} is checkpoint version {version}; this code reads up to {VERSION}. Update the package.")
    state = obj.get("model")
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(f"{p}: 'model' must be a non-empty state dict of tensors.")
    try:
        meta = ModelMeta.from_dict(obj.get("meta"))
    except WeightsError as exc:
        raise WeightsError(f"{p}: {exc}") from exc
    extra = {k: v for k, v in obj.items() if k not in ("format", "version", "meta", "model")}
    return state, meta, extra


def _reason(exc: BaseException) -> str:
    """The informative line of a torch.load error (the weights-only unpickler puts it mid-message)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "WeightsUnpickler error" in ln or "Unsupported global" in ln:
            return ln
    return lines[0] if lines else type(exc).__name__


def _emit(log: Callable[[str], Any] | None, msg: str, level: int = logging.INFO) -> None:
    if log is not None:
        log(msg)
    else:
        log_.log(level, msg)


def _load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    params = dict(model.state_dict())
    state = {
        k: (v.to(params[k].dtype) if k in params and v.is_floating_point() else v) for k, v in state.items()
    }
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        msg = str(exc)
        raise WeightsError(
            f"{source} does not fit the model its meta describes: {msg[:600]}{'…' if len(msg) > 600 else ''}"
        ) from exc


def load_model(
    spec: str,
    *,
    backbone: str = "resnet18_fpn",
    input_mode: str = "rgb",
    num_classes: int = 2,
    device: str | torch.device = "cpu",
    log: Callable[[str], Any] | None = None,
) -> tuple[AmodalMaskRCNN, ModelMeta]:
    """A ready model (eval mode, on ``device``) and its meta.

    Args:
        spec: ``none`` (untrained: ``backbone`` / ``input_mode`` / ``num_classes`` apply; logs a loud
            warning), ``bundled`` (the package's ``weights/amodal_maskrcnn.pt``), ``coco`` (torchvision's
            COCO Mask R-CNN ResNet-50 weights, downloaded; amodal head initialised from the visible
            head) or a path to one of our checkpoints (backbone / input_mode come from its meta).
        log: a callable taking one message (e.g. a ROS logger's ``warning``); ``logging`` otherwise.

    Raises:
        WeightsError: with the reason and what to pass instead.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise WeightsError("model.weights must be 'bundled', 'none', 'coco' or a path to a .pt checkpoint.")
    key = spec.strip()
    if key.lower() == "none":
        meta = ModelMeta(
            classes=default_classes(num_classes),
            input_mode=input_mode,
            backbone=backbone,
            training_data="none (untrained)",
            notes="untrained model from load_model('none')",
        )
        # seeded: an untrained model's detections are meaningless but must be the same in every run (a test
        # that needs a detection at score 0 must not depend on the luck of a random initialisation)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(UNTRAINED_SEED)
            model = meta.build_model()
        meta.builder_kwargs = dict(model.builder_kwargs)
        _emit(
            log,
            f"!!! model.weights is 'none': the {backbone} model is UNTRAINED and its detections are MEANINGLESS. "
            "Use it for tests and benchmarks only; set model.weights to 'bundled' or a checkpoint path. !!!",
            logging.WARNING,
        )
    elif key.lower() == "bundled":
        if not BUNDLED_WEIGHTS.is_file():
            raise WeightsError(
                f"No bundled model is shipped yet ({BUNDLED_WEIGHTS} is missing). Pass model.weights as a path to "
                "a checkpoint written by `isr train`, or 'none' for an untrained model (tests / benchmarks)."
            )
        model, meta = _from_file(BUNDLED_WEIGHTS)
    elif key.lower() == "coco":
        model, meta = _from_coco(log)
    else:
        model, meta = _from_file(Path(key))
        if meta.backbone != backbone or meta.input_mode != input_mode:
            _emit(log, f"Weights {key} fix backbone={meta.backbone}, input_mode={meta.input_mode} "
                       f"(the configured {backbone}/{input_mode} are ignored).")
    model.to(device).eval()
    return model, meta


def _from_file(path: Path) -> tuple[AmodalMaskRCNN, ModelMeta]:
    state, meta, _ = load_checkpoint(path)
    model = meta.build_model()
    _load_state_strict(model, state, str(path))
    return model, meta


# --------------------------------------------------------------------------- COCO
def coco_to_amodal_state_dict(coco_state: dict[str, torch.Tensor], model: AmodalMaskRCNN) -> dict[str, torch.Tensor]:
    """A state dict for ``model`` (resnet50_fpn, 91 classes, torchvision head sizes) from torchvision's
    ``maskrcnn_resnet50_fpn`` COCO state dict: everything torchvision has is copied; the amodal head
    and predictor start as copies of the visible ones; the occlusion predictor keeps its init."""
    target = model.state_dict()
    out = dict(target)
    for k, v in coco_state.items():
        if k in target:
            out[k] = v
        elif k.endswith("num_batches_tracked"):
            continue
        else:
            raise WeightsError(f"COCO weights key {k!r} has no place in the amodal model.")
    pairs = (("roi_heads.mask_head.", "roi_heads.amodal_mask_head."),
             ("roi_heads.mask_predictor.", "roi_heads.amodal_mask_predictor."))
    for src, dst in pairs:
        for k, v in coco_state.items():
            if k.startswith(src):
                out[dst + k[len(src):]] = v.clone()
    return out


def _from_coco(log) -> tuple[AmodalMaskRCNN, ModelMeta]:
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    weights = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    try:
        coco_state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # no network, proxy, bad cache ...
        raise WeightsError(
            f"Cannot get torchvision's COCO Mask R-CNN weights ({type(exc).__name__}: {exc}). They are downloaded "
            "from download.pytorch.org; on an offline machine use 'bundled', a checkpoint path, or 'none'."
        ) from exc
    classes = list(weights.meta["categories"])
    model = build_amodal_maskrcnn(
        backbone="resnet50_fpn", num_classes=len(classes), frozen_bn=True, min_size=800, max_size=1333
    )
    _load_state_strict(model, coco_to_amodal_state_dict(coco_state, model), "torchvision COCO weights")
    meta = ModelMeta.from_model(
        model,
        classes=classes,
        training_data="COCO train2017 (torchvision MaskRCNN_ResNet50_FPN_Weights.COCO_V1); amodal head = visible head",
        metrics={k: v for k, v in weights.meta.get("_metrics", {}).get("COCO-val2017", {}).items()},
        notes="Amodal masks are copies of the visible ones and occlusion is untrained until fine-tuned.",
    )
    _emit(log, "COCO weights: the amodal head is a copy of the visible one and occlusion is untrained; "
               "fine-tune with `isr train` for real amodal masks.", logging.WARNING)
    return model, meta
