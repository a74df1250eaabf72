"""``isr weights``: inspect a weights file, and convert it between ``.pt`` and ``.safetensors``.

``isr weights info PATH [--json]`` prints what the file holds: container (torch zip or safetensors), format and
version, backbone, input mode, classes, training and inference size, training data, training run and metrics
from its meta, parameter count (the model is built from the meta and the state loaded into it, so ``info`` also
checks that they fit) and a dtype histogram of the state dict.

``isr weights convert IN OUT [--force]`` writes IN's state dict and meta to OUT, whose suffix picks the container
(``.safetensors``: no pickle; ``.pt``: our ``torch.save`` dict); tensors keep their dtypes. A training
checkpoint's optimizer state and other extras are not carried over. OUT is never overwritten without
``--force``; it is written atomically, then loaded back and every tensor compared bit for bit, and the meta too.

Exit codes: 0 done; 1 the written file did not read back identically (it is removed); 2 a usage error or a file
that is not one of our weights files (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..core.text import one_line

__all__ = ["add_arguments", "main", "run", "state_differences"]

SUFFIXES = (".pt", ".safetensors")
_KIND_NAMES = {
    "torch-zip": "torch zip (.pt, read with torch.load weights_only=True)",
    "safetensors": "safetensors (no pickle)",
    "other": "legacy torch file (read with torch.load weights_only=True)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    info = sub.add_parser("info", help="print what a weights file holds", description="print what a weights file holds")
    info.add_argument("path", metavar="PATH", help="a .pt or .safetensors weights file (or a training checkpoint)")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    conv = sub.add_parser(
        "convert",
        help="copy a weights file into the other container (.pt <-> .safetensors), verified bit for bit",
        description="copy a weights file into the container OUT's suffix names (.pt or .safetensors), verified "
        "bit for bit",
    )
    conv.add_argument("src", metavar="IN", help="the weights file to read")
    conv.add_argument("dst", metavar="OUT", help="the file to write: ends in .safetensors or .pt")
    conv.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from ..core.model.weights import WeightsError

    if getattr(args, "action", None) is None:
        print("isr weights: name an action: `info PATH` or `convert IN OUT` (see isr weights -h).", file=sys.stderr)
        return 2
    try:
        if args.action == "info":
            return _info(Path(args.path), as_json=args.json)
        return _convert(Path(args.src), Path(args.dst), force=args.force)
    except (WeightsError, OSError) as exc:
        print(f"isr weights {args.action}: {one_line(exc)}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """``isr weights`` on its own: parse ``argv`` and run; returns the exit code (argparse errors give 2)."""
    parser = argparse.ArgumentParser(prog="isr weights", description=__doc__.splitlines()[0].strip("`"))
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # -h (0) or a usage error (2, argparse printed the one-line reason)
        return exc.code if isinstance(exc.code, int) else 2
    return run(args)


# ---------------------------------------------------------------------------------------- info
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dtype_histogram(state: dict[str, Any]) -> dict[str, dict[str, int]]:
    hist: dict[str, dict[str, int]] = {}
    for v in state.values():
        d = hist.setdefault(str(v.dtype).removeprefix("torch."), {"tensors": 0, "elements": 0, "bytes": 0})
        d["tensors"] += 1
        d["elements"] += v.numel()
        d["bytes"] += v.numel() * v.element_size()
    return dict(sorted(hist.items()))


def describe(path: Path) -> dict[str, Any]:
    """Everything ``isr weights info`` prints, as plain JSON types. Raises WeightsError for a file that is not
    one of ours or whose state does not fit its meta."""
    from ..core.model.amodal_maskrcnn import count_parameters
    from ..core.model.weights import FORMAT, VERSION, load_checkpoint, model_from_state, weights_file_kind

    t0 = time.perf_counter()
    state, meta, extra = load_checkpoint(path)
    load_s = time.perf_counter() - t0
    resolved = path.expanduser().resolve()
    model = model_from_state(state, meta, str(path))
    counts = count_parameters(model)
    return {
        "path": str(resolved),
        "bytes": resolved.stat().st_size,
        "sha256": _sha256(resolved),
        "container": weights_file_kind(resolved),
        "format": FORMAT,
        "version": VERSION,
        "load_seconds": round(load_s, 4),
        "parameters": counts["total"],
        "trainable_parameters": counts["trainable"],
        "state_tensors": len(state),
        "state_elements": sum(v.numel() for v in state.values()),
        "dtypes": _dtype_histogram(state),
        "extra_keys": sorted(extra),
        "meta": meta.to_dict(),
    }


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _size(v: int) -> str:
    return f"{v / 1e6:.1f} MB" if v >= 1e5 else f"{v} B"


def _info(path: Path, as_json: bool) -> int:
    d = describe(path)
    if as_json:
        print(json.dumps(d, indent=1))
        return 0
    m = d["meta"]
    training = m.get("training") or {}
    scalars = {k: v for k, v in training.items() if not isinstance(v, (list, dict))}
    data_sets = [x for key in ("data", "val_data") for x in training.get(key) or [] if isinstance(x, dict)]
    rows = [
        ("file", f"{d['path']} ({_size(d['bytes'])}, sha256 {d['sha256'][:16]}…)"),
        ("container", _KIND_NAMES[d["container"]]),
        ("format", f"{d['format']}, version {d['version']}"),
        ("backbone", m["backbone"]),
        ("input mode", m["input_mode"] + (f", depth normalization {m['depth_normalization']}"
                                          if m.get("depth_normalization") else "")),
        ("classes", f"{len(m['classes'])}: {', '.join(m['classes'])}"),
        ("trained at", f"min_size {m['min_size']}, max_size {m['max_size']} (short / long side)"),
        ("inference size", f"{m['infer_min_size']} / {m['infer_max_size']} (short / long side; 0 = the frame's own)"),
        ("training data", m.get("training_data") or "(not recorded)"),
    ]
    if scalars:
        rows.append(("training", ", ".join(f"{k} {_fmt_value(v)}" for k, v in scalars.items())))
    for ds in data_sets:
        rows.append(("  data set", ", ".join(f"{k} {_fmt_value(v)}" for k, v in ds.items() if k != "description")))
    rows.append(("metrics", ", ".join(f"{k} {_fmt_value(v)}" for k, v in m["metrics"].items()) or "(none)"))
    rows.append(("parameters", f"{d['parameters']:,} ({d['trainable_parameters']:,} trainable); state dict "
                               f"{d['state_tensors']} tensors, {d['state_elements']:,} elements"))
    for dtype, h in d["dtypes"].items():
        rows.append((f"  {dtype}", f"{h['tensors']} tensors, {h['elements']:,} elements, {_size(h['bytes'])}"))
    rows.append(("written", f"{m.get('created') or '?'} by torch {m.get('torch_version') or '?'}, torchvision "
                            f"{m.get('torchvision_version') or '?'}"))
    if d["extra_keys"]:
        rows.append(("training state", ", ".join(d["extra_keys"]) + " (a training checkpoint)"))
    if m.get("notes"):
        rows.append(("notes", m["notes"]))
    rows.append(("load time", f"{d['load_seconds'] * 1000:.0f} ms (read and validate, no model build)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


# ---------------------------------------------------------------------------------------- convert
def state_differences(a: dict[str, Any], b: dict[str, Any], limit: int = 5) -> list[str]:
    """Where two state dicts are not bit-identical (keys, dtypes, shapes, bytes; NaN payloads and -0.0
    included); empty when they are."""
    import torch

    out = [f"missing key {k}" for k in sorted(set(a) - set(b))] + [f"extra key {k}" for k in sorted(set(b) - set(a))]
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            out.append(f"{k}: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}")
        elif not torch.equal(_bytes(x), _bytes(y)):
            out.append(f"{k}: values differ")
        if len(out) >= limit:
            break
    return out


def _bytes(t: Any) -> Any:
    """A tensor's raw bytes as a flat uint8 tensor (``torch.equal`` on values treats NaN != NaN, -0.0 == 0.0)."""
    import torch

    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _convert(src: Path, dst: Path, force: bool) -> int:
    from ..core.model.weights import load_checkpoint, save_state_dict, weights_file_kind

    src, dst = src.expanduser(), dst.expanduser()
    if dst.suffix.lower() not in SUFFIXES:
        print(f"isr weights convert: OUT must end in .safetensors or .pt (it picks the container), got {dst}.",
              file=sys.stderr)
        return 2
    state, meta, extra = load_checkpoint(src)
    if dst.is_dir():
        print(f"isr weights convert: OUT {dst} is a directory; pass a file path.", file=sys.stderr)
        return 2
    if dst.exists():
        if dst.resolve() == src.resolve():
            print(f"isr weights convert: IN and OUT are the same file ({dst}); write to another path.",
                  file=sys.stderr)
            return 2
        if not force:
            print(f"isr weights convert: {dst} exists; pass --force to overwrite it.", file=sys.stderr)
            return 2
    if extra:
        print(f"isr weights convert: note: {', '.join(sorted(extra))} of the training checkpoint are not carried "
              "over (a weights file holds the model only).", file=sys.stderr)
    t0 = time.perf_counter()
    out = save_state_dict(dst, state, meta)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    back, back_meta, _ = load_checkpoint(out)
    read_s = time.perf_counter() - t0
    problems = state_differences(state, back)
    if json.dumps(back_meta.to_dict(), sort_keys=True) != json.dumps(meta.to_dict(), sort_keys=True):
        problems.append("meta differs")
    if problems:
        out.unlink(missing_ok=True)
        print(f"isr weights convert: {out} did not read back identically ({'; '.join(problems)}); removed it.",
              file=sys.stderr)
        return 1
    print(f"wrote {out}: {_KIND_NAMES[weights_file_kind(out)]}, {_size(out.stat().st_size)} "
          f"(from {_KIND_NAMES[weights_file_kind(src)]}, {_size(src.stat().st_size)}); "
          f"verified: {len(state)} tensors bit-identical and the meta identical "
          f"(write {write_s * 1000:.0f} ms, read back {read_s * 1000:.0f} ms)")
    return 0
