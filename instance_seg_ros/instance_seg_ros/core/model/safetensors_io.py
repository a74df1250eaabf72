"""Our weights in safetensors files: no pickle at all, the state dict's tensors and the header's string metadata
``{"format": FORMAT, "version": "1", "meta": json.dumps(meta)}``.

:func:`load_safetensors` checks the header's size (over :data:`MAX_SAFETENSORS_HEADER` bytes is refused before it
is parsed) and validates the metadata before any tensor is read. :mod:`.weights` decides which container a file is
and writes it atomically.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import safetensors
import torch

from .meta import FORMAT, VERSION, ModelMeta, WeightsError, check_version, meta_from_dict

__all__ = ["MAX_SAFETENSORS_HEADER", "SAFETENSORS_SUFFIX", "is_safetensors_path", "load_safetensors",
           "safetensors_metadata", "safetensors_tensors"]

#: a path with this suffix is written as safetensors and must hold safetensors when read
SAFETENSORS_SUFFIX = ".safetensors"
#: safetensors headers longer than this are refused before parsing (the safetensors library caps at the same size)
MAX_SAFETENSORS_HEADER = 100_000_000


def is_safetensors_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == SAFETENSORS_SUFFIX


def safetensors_metadata(meta: ModelMeta) -> dict[str, str]:
    """The header metadata of our safetensors files (str -> str, as safetensors requires)."""
    try:
        meta_json = json.dumps(meta.to_dict())
    except (TypeError, ValueError) as exc:
        raise WeightsError(
            f"meta cannot be stored in a safetensors file, whose metadata is JSON text ({exc}); keep meta to "
            "str, numbers, lists and dicts, or save to a .pt path."
        ) from exc
    return {"format": FORMAT, "version": str(VERSION), "meta": meta_json}


def safetensors_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def load_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], ModelMeta, dict[str, Any]]:
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
    check_version(p, int(raw_version))
    raw_meta = md.get("meta")
    if raw_meta is None:
        raise WeightsError(f"{p}: safetensors metadata has no 'meta' (the model's description); write it with "
                           "save_weights.")
    try:
        data = json.loads(raw_meta)
    except (ValueError, RecursionError) as exc:
        raise WeightsError(f"{p}: safetensors metadata 'meta' is not valid JSON ({exc}).") from exc
    return meta_from_dict(p, data)
