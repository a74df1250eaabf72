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

The same content can live in a **safetensors** file (``save_weights`` to a path ending in
``.safetensors``, or ``isr weights convert``), which holds no pickle at all: the state dict's tensors,
and the header's string metadata ``{"format": FORMAT, "version": "1", "meta": json.dumps(meta)}``.
Training checkpoints (optimizer state ...) stay ``.pt``. :func:`load_checkpoint` decides by content
(:func:`weights_file_kind`: a safetensors file starts with an 8-byte little-endian header length and a
JSON header ``{...``, a torch zip with ``PK``), so a safetensors file named ``.pt`` still loads without
pickle, while a file named ``.safetensors`` that is not one is refused, never handed to ``torch.load``.
A safetensors header over :data:`MAX_SAFETENSORS_HEADER` bytes is refused before it is parsed.

The shipped model (``save_weights(..., half=True)``) stores floating tensors as fp16 (normalization
statistics and anything outside the fp16 range stay fp32); loading keeps the stored dtypes and
building the model (:func:`model_from_state`, used by :func:`load_model` for both containers) converts
them back to the model's fp32.

``load_model(spec)`` specs: ``none`` (untrained), ``bundled`` (``instance_seg_ros/weights/
amodal_maskrcnn.pt`` inside the package), ``coco`` (torchvision's COCO Mask R-CNN, needs a
download) or a path to a checkpoint (``.pt`` or ``.safetensors``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from .amodal_maskrcnn import AmodalMaskRCNN, build_amodal_maskrcnn
from .backbones import BACKBONES
from .inputs import DEPTH_MAX_M, DEPTH_MEAN, DEPTH_STD, INPUT_MODES

__all__ = [
    "BUNDLED_WEIGHTS",
    "FORMAT",
    "MAX_SAFETENSORS_HEADER",
    "SAFETENSORS_SUFFIX",
    "VERSION",
    "ModelMeta",
    "WeightsError",
    "coco_to_amodal_state_dict",
    "default_classes",
    "load_checkpoint",
    "load_model",
    "model_from_state",
    "save_checkpoint",
    "save_state_dict",
    "save_weights",
    "weights_file_kind",
]

FORMAT = "instance_seg_ros/amodal_maskrcnn"
VERSION = 1
#: The model shipped inside the package (``package_data`` in setup.py installs ``weights/*.pt``).
BUNDLED_WEIGHTS = Path(__file__).resolve().parent.parent.parent / "weights" / "amodal_maskrcnn.pt"
#: weights="none" builds the untrained model from this torch seed, so that it is the same in every run
UNTRAINED_SEED = 0
#: a path with this suffix is written as safetensors and must hold safetensors when read
SAFETENSORS_SUFFIX = ".safetensors"
#: safetensors headers longer than this are refused before parsing (the safetensors library caps at the same size)
MAX_SAFETENSORS_HEADER = 100_000_000
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
def _is_safetensors_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == SAFETENSORS_SUFFIX


def _atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """``write(tmp)`` to a temporary file next to ``path``, then ``os.replace`` it onto ``path``."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise WeightsError(
            f"Cannot save weights to {p}: it is a directory; pass a file path ending in .pt or {SAFETENSORS_SUFFIX}."
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _atomic_save(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    return _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _safetensors_metadata(meta: ModelMeta) -> dict[str, str]:
    """The header metadata of our safetensors files (str -> str, as safetensors requires)."""
    try:
        meta_json = json.dumps(meta.to_dict())
    except (TypeError, ValueError) as exc:
        raise WeightsError(
            f"meta cannot be stored in a safetensors file, whose metadata is JSON text ({exc}); keep meta to "
            "str, numbers, lists and dicts, or save to a .pt path."
        ) from exc
    return {"format": FORMAT, "version": str(VERSION), "meta": meta_json}


def _safetensors_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors of which no two share storage (safetensors refuses shared tensors: tied
    weights or views of one buffer are written as separate copies)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr and v.numel():
            if ptr in seen:
                v = v.clone()
                ptr = v.untyped_storage().data_ptr()
            seen.add(ptr)
        out[k] = v
    return out


def save_state_dict(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: ModelMeta) -> Path:
    """Write ``state`` (str -> tensor; dtypes kept as they are) with ``meta`` as a weights file, written
    atomically (temporary file in the same directory + ``os.replace``); returns the path.

    A path ending in ``.safetensors`` gives a safetensors file (no pickle; metadata ``format``, ``version``,
    ``meta`` = JSON of :meth:`ModelMeta.to_dict`), any other path our ``torch.save`` dict (no extras).
    """
    if not isinstance(meta, ModelMeta):
        raise WeightsError(f"meta must be a ModelMeta, got {type(meta).__name__}.")
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"state must be a non-empty dict of tensors, got {type(state).__name__} {state!r:.80}.")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise WeightsError(f"state entry {k!r} is a {type(v).__name__}; a state dict maps str to tensors.")
    if _is_safetensors_path(path):
        tensors = _safetensors_tensors(state)
        metadata = _safetensors_metadata(meta)
        return _atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=metadata))
    state = {k: v.detach().cpu() for k, v in state.items()}
    return _atomic_save({"format": FORMAT, "version": VERSION, "meta": meta.to_dict(), "model": state}, path)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: ModelMeta, **extra: Any) -> Path:
    """Write a full-precision checkpoint (training: pass ``optimizer=opt.state_dict()``,
    ``lr_scheduler=...``, ``args=...``, ``epoch=...``). Written atomically; returns the path.
    Always our ``torch.save`` format: a ``.safetensors`` path is refused (use :func:`save_weights`)."""
    if _is_safetensors_path(path):
        raise WeightsError(
            f"Cannot write a training checkpoint to {path}: safetensors holds tensors only, not optimizer state "
            "or arguments. Save training checkpoints as .pt, and weights for shipping with "
            "save_weights(path.safetensors, model, meta) (or `isr weights convert`)."
        )
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
    """Write a shipping file (no optimizer state): fp16 floating tensors when ``half``. A path ending in
    ``.safetensors`` gives a safetensors file, any other our ``torch.save`` format (see :func:`save_state_dict`,
    which also checks ``meta``)."""
    state = model.state_dict()
    state = _half_state_dict(state) if half else {k: v.detach().cpu() for k, v in state.items()}
    return save_state_dict(path, state, meta)


# --------------------------------------------------------------------------- load
def weights_file_kind(path: str | os.PathLike) -> str:
    """What a file holds, by its first bytes: ``"safetensors"`` (8-byte little-endian header length, then
    a JSON header starting with ``{``), ``"torch-zip"`` (``torch.save``'s zip: ``PK``) or ``"other"``
    (legacy torch files, pickles, anything else). Raises :class:`WeightsError` if it cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise WeightsError(f"Cannot read weights file {path}: {exc}") from exc
    if head[:2] == b"PK":
        return "torch-zip"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return "other"


def _checked_path(path: str | os.PathLike) -> Path:
    """The resolved path of an existing regular file, else :class:`WeightsError`."""
    given = Path(path).expanduser()
    if not given.exists():
        raise WeightsError(
            f"Weights file {given} does not exist; pass the path of a .pt or {SAFETENSORS_SUFFIX} file written by "
            "`isr train` / `isr weights convert`."
        )
    try:
        p = given.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise WeightsError(f"Cannot resolve weights path {path}: {exc}") from exc
    if not p.is_file():
        shown = str(given) if p == given else f"{given} (-> {p})"
        raise WeightsError(f"Weights path {shown} is not a regular file (a directory?); pass the weights file itself.")
    return p


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelMeta, dict[str, Any]]:
    """Read a file written by :func:`save_checkpoint` / :func:`save_weights` / :func:`save_state_dict`.

    The container is decided by content (:func:`weights_file_kind`): a safetensors file is read with
    ``safetensors`` (no pickle, ``torch.load`` is never called), anything else with
    ``torch.load(weights_only=True)``, except that a path ending in ``.safetensors`` must hold safetensors.

    Returns:
        (state_dict, meta, extra): tensors in their stored dtypes (fp16 in shipping files) on the CPU;
        ``extra`` holds the other top-level keys of a training checkpoint (optimizer, epoch ...), ``{}`` for
        safetensors.

    Raises:
        WeightsError: the path is not a regular file, or the file is not one of our weights files.
    """
    p = _checked_path(path)
    kind = weights_file_kind(p)
    if kind == "safetensors":
        return _load_safetensors(p)
    if _is_safetensors_path(path) or _is_safetensors_path(p):  # the given name or a symlink's target
        what = "a torch zip (the pickle-based .pt format)" if kind == "torch-zip" else "no safetensors header"
        raise WeightsError(
            f"{p} is named {SAFETENSORS_SUFFIX} but holds {what}; a {SAFETENSORS_SUFFIX} file is never unpickled. "
            f"Rename a checkpoint of ours to .pt, or convert it: `isr weights convert IN.pt OUT{SAFETENSORS_SUFFIX}`."
        )
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
    _check_version(p, version)
    state = obj.get("model")
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(f"{p}: 'model' must be a non-empty state dict of tensors.")
    meta = _meta_of(p, obj.get("meta"))
    extra = {k: v for k, v in obj.items() if k not in ("format", "version", "meta", "model")}
    return state, meta, extra


def _check_version(p: Path, version: int) -> None:
    if version > VERSION:
        raise WeightsError(f"{p} is checkpoint version {version}; this code reads up to {VERSION}. Update the package.")


def _meta_of(p: Path, data: Any) -> ModelMeta:
    try:
        return ModelMeta.from_dict(data)
    except WeightsError as exc:
        raise WeightsError(f"{p}: {exc}") from exc


def _load_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], ModelMeta, dict[str, Any]]:
    """Our safetensors file: header size checked before parsing, metadata validated before any tensor is read."""
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
    except OSError as exc:
        raise WeightsError(f"Cannot read weights file {p}: {exc}") from exc
    if n > MAX_SAFETENSORS_HEADER:
        raise WeightsError(
            f"{p}: its safetensors header declares {n} bytes, more than the {MAX_SAFETENSORS_HEADER} this loader "
            "parses; the file is corrupt or not a weights file."
        )
    if 8 + n > size:
        raise WeightsError(
            f"{p} is truncated: its safetensors header declares {n} bytes but only {max(size - 8, 0)} follow the "
            "length field. Copy the file again."
        )
    try:
        with safetensors.safe_open(str(p), framework="pt", device="cpu") as f:
            meta = _safetensors_meta(p, f.metadata(), len(f.keys()))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except WeightsError:
        raise
    except Exception as exc:  # SafetensorError (bad header, truncated data), OSError ...
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = lines[0] if lines else type(exc).__name__
        raise WeightsError(
            f"{p} is not a loadable safetensors file ({type(exc).__name__}: {reason[:300]}); it is corrupt or "
            "truncated. Write it again with save_weights or `isr weights convert`."
        ) from exc
    if not state:
        raise WeightsError(f"{p}: the safetensors file holds no tensors; a weights file needs the model's state dict.")
    return state, meta, {}


def _safetensors_meta(p: Path, md: dict[str, str] | None, n_tensors: int) -> ModelMeta:
    md = md or {}
    fmt = md.get("format")
    if fmt != FORMAT:
        raise WeightsError(
            f"{p} is a safetensors file ({n_tensors} tensors) but not an instance_seg_ros weights file: its "
            f"metadata 'format' is {fmt!r}, expected {FORMAT!r}. Load its tensors into a model from "
            "build_amodal_maskrcnn and write it with save_weights(path, model, meta); a .pt checkpoint of ours "
            f"converts with `isr weights convert IN.pt OUT{SAFETENSORS_SUFFIX}`."
        )
    raw_version = md.get("version")
    if not isinstance(raw_version, str) or not re.fullmatch(r"[1-9][0-9]{0,8}", raw_version):
        raise WeightsError(f"{p}: safetensors metadata 'version' must be a positive integer, got {raw_version!r}.")
    _check_version(p, int(raw_version))
    raw_meta = md.get("meta")
    if raw_meta is None:
        raise WeightsError(f"{p}: safetensors metadata has no 'meta' (the model's description); write it with "
                           "save_weights.")
    try:
        data = json.loads(raw_meta)
    except (ValueError, RecursionError) as exc:
        raise WeightsError(f"{p}: safetensors metadata 'meta' is not valid JSON ({exc}).") from exc
    return _meta_of(p, data)


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
    """Load ``state`` into ``model`` (strict); floating tensors are cast to the model's dtypes first, which
    turns a shipping file's fp16 back into fp32 whichever container it came from."""
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
            head) or a path to one of our weights files, ``.pt`` or ``.safetensors`` (backbone /
            input_mode come from its meta; see :func:`load_checkpoint`).
        log: a callable taking one message (e.g. a ROS logger's ``warning``); ``logging`` otherwise.

    Raises:
        WeightsError: with the reason and what to pass instead.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise WeightsError(
            "model.weights must be 'bundled', 'none', 'coco' or a path to a .pt or .safetensors weights file."
        )
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


def model_from_state(state: dict[str, torch.Tensor], meta: ModelMeta, source: str = "state dict") -> AmodalMaskRCNN:
    """The model ``meta`` describes with ``state`` loaded (strict; fp16 tensors become the model's fp32);
    train mode, CPU. ``source`` names the origin in the :class:`WeightsError` raised when they do not fit."""
    model = meta.build_model()
    _load_state_strict(model, state, source)
    return model


def _from_file(path: Path) -> tuple[AmodalMaskRCNN, ModelMeta]:
    state, meta, _ = load_checkpoint(path)
    return model_from_state(state, meta, str(path)), meta


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
