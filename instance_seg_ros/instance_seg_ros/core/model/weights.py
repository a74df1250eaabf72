"""Model weights: saving and reading our weights files, and loading a model from a spec.

The metadata (:class:`~.meta.ModelMeta`, ``FORMAT``, ``VERSION``) lives in :mod:`.meta`, the safetensors container
in :mod:`.safetensors_io`; their public names are importable from here and from :mod:`instance_seg_ros.core.model`.

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

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .amodal_maskrcnn import AmodalMaskRCNN, build_amodal_maskrcnn
from .meta import FORMAT, VERSION, ModelMeta, WeightsError, check_version, default_classes, meta_from_dict, to_plain
from .safetensors_io import (
    MAX_SAFETENSORS_HEADER,
    SAFETENSORS_SUFFIX,
    is_safetensors_path,
    load_safetensors,
    safetensors_metadata,
    safetensors_tensors,
)

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

#: The model shipped inside the package (``package_data`` in setup.py installs ``weights/*.pt``).
BUNDLED_WEIGHTS = Path(__file__).resolve().parent.parent.parent / "weights" / "amodal_maskrcnn.pt"
#: weights="none" builds the untrained model from this torch seed, so that it is the same in every run
UNTRAINED_SEED = 0
_FP16_MAX = 65504.0
_KEEP_FP32_SUFFIXES = ("running_mean", "running_var")

log_ = logging.getLogger(__name__)


# --------------------------------------------------------------------------- save
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
    if is_safetensors_path(path):
        tensors = safetensors_tensors(state)
        metadata = safetensors_metadata(meta)
        return _atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=metadata))
    state = {k: v.detach().cpu() for k, v in state.items()}
    return _atomic_save({"format": FORMAT, "version": VERSION, "meta": meta.to_dict(), "model": state}, path)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: ModelMeta, **extra: Any) -> Path:
    """Write a full-precision checkpoint (training: pass ``optimizer=opt.state_dict()``,
    ``lr_scheduler=...``, ``args=...``, ``epoch=...``). Written atomically; returns the path.
    Always our ``torch.save`` format: a ``.safetensors`` path is refused (use :func:`save_weights`)."""
    if is_safetensors_path(path):
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
        obj[k] = to_plain(v, k)
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
        return load_safetensors(p)
    if is_safetensors_path(path) or is_safetensors_path(p):  # the given name or a symlink's target
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
    check_version(p, version)
    state = obj.get("model")
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(f"{p}: 'model' must be a non-empty state dict of tensors.")
    meta = meta_from_dict(p, obj.get("meta"))
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
