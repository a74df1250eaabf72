"""Folders of real RGB-D frames with ground-truth instance masks, for ``isr eval --frames DIR``.

(Over 500 lines on purpose: the three layouts share one set of file checks and error messages, and each layout's
conventions are documented next to its reader.)

:func:`find_frames` walks ``DIR`` recursively and recognises three layouts, each sub-tree on its own, so one
root may hold several (``layout="auto"``); :func:`load_frame` reads one :class:`FrameRef` into a :class:`Frame`:
color ``[H, W, 3] uint8`` RGB, depth ``[H, W] float32`` metres (NaN where the sensor had no reading), the
intrinsics, and the ground truth as ``[G, H, W] bool`` visible (and amodal) masks with the label value of each.
Every depth image of the three layouts is ``uint16`` millimetres, 0 = no reading (``depth_scale`` = 0.001).

1. **folder** (ours; ``/work/shared/realdata/README.md``): one folder per frame, anywhere under ``DIR``; a folder
   holding ``rgb.png`` and ``depth.png`` is a frame::

       <frame>/rgb.png             8-bit RGB (RGBA: alpha dropped)
       <frame>/depth.png           uint16 millimetres, registered to the color image, 0 = no reading
       <frame>/K.json              {"fx", "fy", "cx", "cy", "width", "height"} of the color camera (pixels);
                                   required unless ``find_frames(..., intrinsics=K)`` supplies one
       <frame>/label.png           optional: uint8 / uint16 (or palette) ids of the visible masks, 0 = background
       <frame>/amodal/inst_XX.png  optional: 0/255 amodal silhouette of instance XX (the id in label.png, 2+ digits)

   Name: the frame folder relative to ``DIR`` (``ycbv/0000_000001``).

2. **osd** (Object Segmentation Database, Richtsfeld et al. 2012, ``OSD-0.2-depth``): a folder holding
   ``image_color/`` and ``disparity/``::

       <root>/image_color/<stem>.png                   8-bit color
       <root>/disparity/<stem>.png                     uint16 -- despite the name, depth in millimetres
       <root>/annotation/<stem>.png                    optional: instance labels, 0 = background
       <root>/amodal_annotation/<stem>_<id>.png        optional (UOAIS's OSD-Amodal): amodal silhouette of label <id>

   Name: ``<root relative to DIR>/<stem>`` (``osd/learn0``; just ``learn0`` when ``DIR`` is the OSD root).
   ``occlusion_annotation/`` (UOAIS) is not read: occlusion is ``amodal & ~visible``.

3. **ocid** (Object Clutter Indoor Dataset, Suchi et al. 2019): a *sequence* folder holding ``rgb/`` and
   ``depth/``, at any depth (``OCID-dataset/ARID20/table/top/seq05``)::

       <seq>/rgb/<stem>.png        8-bit color
       <seq>/depth/<stem>.png      uint16 millimetres
       <seq>/label/<stem>.png      optional: labels; 0 = background, 1 = floor, and in ``table`` sequences 2 = table

   Labels 0 and 1 are background, and 2 as well when a folder of the sequence's path is named ``table``; every
   other value is one object. Name: ``<seq relative to DIR>/<stem>``.

Conventions followed (read in the published loaders; no code copied):

- OSD file pairing ``image_color`` -> ``disparity`` / ``annotation`` by file name, the disparity PNG read as
  millimetres, and the ``amodal_annotation/<stem>_<id>.png`` naming: UOAIS (Back et al. 2022),
  ``gist-ailab/uoais`` ``eval/eval_utils.py`` (``eval_visible_on_OSD``, ``eval_amodal_occ_on_OSD``: depth PNG
  -> ``normalize_depth`` with a 250..1500 mm range) and ``tools/run_on_OSD.py``; the same reading in
  ``YoungSean/UnseenObjectsWithMeanShift`` ``lib/datasets/load_OSD_UOAIS.py``. Only 0 is background in OSD
  (UCN ``NVlabs/UnseenObjectClustering`` ``lib/datasets/osd_object.py`` removes nothing else).
- OCID sequences (``**/*seq*`` with ``rgb/*.png``, label = the rgb path with ``rgb`` -> ``label``), labels 1 and,
  for ``table`` paths, 2 set to background: UCN ``lib/datasets/ocid_object.py`` (``OCIDObject.__getitem__``);
  UOAIS ``eval_visible_on_OCID`` does the same with ``BG_LABELS = {"floor": [0, 1], "table": [0, 1, 2]}``
  keyed by the ``floor``/``table`` folder. UCN tests ``'table' in <label path>`` (a substring, which a root
  folder such as ``tabletop/`` would also trigger); here a path *component* must equal ``table``
  (case-insensitive), as in UOAIS. Label values are kept as they are (not renumbered 1..K).
- Intrinsics: the published loaders take no intrinsics (UCN reads OCID's/OSD's organised ``pcd/*.pcd`` point
  clouds, UOAIS feeds normalised depth images), and neither dataset ships a calibration file. Both are 640x480
  registered RGB-D from PrimeSense-class sensors (UCN reshapes their clouds to 480x640), so the default here is
  the nominal OpenNI color model ``fx = fy = 525.0, cx = 319.5, cy = 239.5``, as TUM RGB-D documents for
  OpenNI-registered Kinect data (https://vision.in.tum.de/data/datasets/rgbd-dataset/intrinsic_calibration):
  an approximation, not a per-sensor calibration. Override it with
  ``find_frames(..., intrinsics=K)``; an image that is not 640x480 needs an override.

Ground truth: ``visible[g] = label == gt_ids[g]`` over the label values other than the layout's background
(sorted; ids need not be contiguous); an all-background label gives ``visible`` of shape ``[0, H, W]``, no label
file gives ``None``. ``amodal[g]`` is the amodal file of ``gt_ids[g]`` united with ``visible[g]`` (rendered
silhouettes can miss edge pixels of the labels); an instance without an amodal file uses its visible mask, and
an amodal file for an id that is not in the label image is ignored; both are reported in ``Frame.notes``.

Every malformed input raises :class:`FramesError` (a ``ValueError``) naming the file, what is wrong and what to
change.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..core.types import Intrinsics

__all__ = [
    "DEFAULT_INTRINSICS",
    "LAYOUTS",
    "Frame",
    "FrameRef",
    "FramesError",
    "find_frames",
    "load_frame",
]

LAYOUTS = ("folder", "osd", "ocid")

# OpenNI's nominal PrimeSense/Kinect color camera at 640x480 (see the module docstring).
_OPENNI_640x480 = Intrinsics(525.0, 525.0, 319.5, 239.5, 640, 480)
DEFAULT_INTRINSICS: dict[str, Intrinsics] = {"osd": _OPENNI_640x480, "ocid": _OPENNI_640x480}

_K_KEYS = ("fx", "fy", "cx", "cy", "width", "height")
_LAYOUT_HELP = (
    "expected one of three layouts anywhere under it: "
    "(1) folder: one folder per frame with rgb.png, depth.png (uint16 mm) and K.json [label.png, amodal/inst_XX.png]; "
    "(2) OSD: a folder with image_color/*.png and disparity/*.png [annotation/*.png, amodal_annotation/]; "
    "(3) OCID: sequence folders with rgb/*.png and depth/*.png [label/*.png]"
)
_INST_RE = re.compile(r"^inst_(\d+)\.png$")
_OSD_AMODAL_RE = re.compile(r"^(.+)_(\d+)\.png$")


class FramesError(ValueError):
    """A frames folder or one of its files cannot be used; the message names the path and what to change."""


@dataclass(frozen=True)
class FrameRef:
    """Where one frame's files are (no pixel is read until :func:`load_frame`).

    Attributes:
        name (str): unique, stable, human-readable (``ycbv/0000_000001``, ``osd/learn0``), relative to ``DIR``,
            ``/``-separated.
        layout (str): ``"folder"``, ``"osd"`` or ``"ocid"``.
        color (Path): 8-bit color PNG.
        depth (Path): uint16 millimetre depth PNG.
        label (Path | None): instance-label PNG; ``None``: the frame has no ground truth.
        intrinsics_file (Path | None): ``K.json`` (folder layout); when ``None``, ``intrinsics`` is used.
        intrinsics (Intrinsics | None): the camera model of frames without ``K.json`` (a layout default or the
            ``find_frames`` override).
        amodal (tuple[Path, ...]): candidate amodal-mask PNGs (folder: ``amodal/*.png``; OSD:
            ``amodal_annotation/<stem>_<id>.png``).
        background_ids (tuple[int, ...]): label values that are not objects (``(0,)``; OCID ``(0, 1)`` or
            ``(0, 1, 2)``).
    """

    name: str
    layout: str
    color: Path
    depth: Path
    label: Path | None = None
    intrinsics_file: Path | None = None
    intrinsics: Intrinsics | None = None
    amodal: tuple[Path, ...] = ()
    background_ids: tuple[int, ...] = (0,)


@dataclass
class Frame:
    """One loaded frame.

    Attributes:
        name, layout: as in its :class:`FrameRef`.
        color (np.ndarray[H, W, 3] uint8): RGB.
        depth (np.ndarray[H, W] float32): metres, NaN where there is no reading.
        K (Intrinsics): of the color camera, ``K.width == W``, ``K.height == H``.
        visible (np.ndarray[G, H, W] bool | None): ground-truth visible masks; ``[0, H, W]`` when the label image
            is all background; ``None`` when the frame has no label image.
        amodal (np.ndarray[G, H, W] bool | None): amodal masks in the same order, each ``⊇`` its visible mask;
            ``None`` when no amodal file was given.
        gt_ids (list[int]): the label value of each of the G masks (sorted ascending).
        notes (list[str]): what was ignored or substituted while reading (amodal files without an instance,
            instances without an amodal file).
    """

    name: str
    layout: str
    color: np.ndarray
    depth: np.ndarray
    K: Intrinsics
    visible: np.ndarray | None
    amodal: np.ndarray | None
    gt_ids: list[int]
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ discovery
def find_frames(root: str | os.PathLike[str], *, layout: str = "auto",
                intrinsics: Intrinsics | None = None) -> list[FrameRef]:
    """Every frame under ``root``, sorted by name.

    Args:
        root: a folder; searched recursively (symbolic links followed, hidden folders skipped). The layout is
            recognised per sub-tree (see the module docstring), so one root may mix layouts.
        layout: ``"auto"`` (every layout) or one of :data:`LAYOUTS` (only that one).
        intrinsics: camera model for frames that carry none: OSD and OCID (instead of
            :data:`DEFAULT_INTRINSICS`) and folder frames without ``K.json``. A frame's own ``K.json`` always wins.

    Raises:
        FramesError: ``root`` is missing or not a folder, no frame was found, ``layout`` is unknown,
            ``intrinsics`` is unusable, or two frames would get the same name.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise FramesError(f"unknown frames layout {layout!r}; use 'auto' or one of {', '.join(LAYOUTS)}.")
    if intrinsics is not None:
        _check_intrinsics(intrinsics, "the intrinsics passed to find_frames")
    root = Path(root)
    if not root.exists():
        raise FramesError(f"{root}: no such folder; point --frames at a folder of RGB-D frames ({_LAYOUT_HELP}).")
    if not root.is_dir():
        raise FramesError(f"{root}: not a folder; point --frames at a folder of RGB-D frames ({_LAYOUT_HELP}).")

    refs: list[FrameRef] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(here)
        if real in seen:  # a symbolic link back into the tree
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        kind = _classify(set(filenames), set(dirnames))
        if kind is None:
            continue
        dirnames[:] = []  # a frame folder, OSD root or OCID sequence: its sub-folders are its own data
        if layout not in ("auto", kind):
            continue
        rel = here.relative_to(root).as_posix()
        prefix = "" if rel == "." else rel
        if kind == "folder":
            refs.append(_folder_ref(here, prefix or here.resolve().name, intrinsics))
        elif kind == "osd":
            refs.extend(_osd_refs(here, prefix, intrinsics))
        else:
            refs.extend(_ocid_refs(here, prefix, intrinsics))

    if not refs:
        which = _LAYOUT_HELP if layout == "auto" else f"layout {layout!r} was requested; {_LAYOUT_HELP}"
        raise FramesError(f"{root}: no RGB-D frames found; {which}.")
    dup = sorted(n for n, c in Counter(r.name for r in refs).items() if c > 1)
    if dup:
        raise FramesError(
            f"{root}: several frames would be named {', '.join(dup[:5])}; rename one of the folders or pass "
            f"layout= to read one layout only."
        )
    return sorted(refs, key=lambda r: r.name)


def _classify(files: set[str], dirs: set[str]) -> str | None:
    if "rgb.png" in files and "depth.png" in files:
        return "folder"
    if "image_color" in dirs and "disparity" in dirs:
        return "osd"
    if "rgb" in dirs and "depth" in dirs:
        return "ocid"
    return None


def _join(prefix: str, stem: str) -> str:
    return f"{prefix}/{stem}" if prefix else stem


def _pngs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())


def _folder_ref(d: Path, name: str, intrinsics: Intrinsics | None) -> FrameRef:
    label = d / "label.png"
    k_file = d / "K.json"
    return FrameRef(
        name=name, layout="folder", color=d / "rgb.png", depth=d / "depth.png",
        label=label if label.exists() else None,
        intrinsics_file=k_file if k_file.exists() else None,
        intrinsics=intrinsics,
        amodal=tuple(_pngs(d / "amodal")),
    )


def _osd_refs(d: Path, prefix: str, intrinsics: Intrinsics | None) -> list[FrameRef]:
    has_labels = (d / "annotation").is_dir()
    amodal: dict[str, list[Path]] = {}
    for p in _pngs(d / "amodal_annotation"):
        m = _OSD_AMODAL_RE.match(p.name)
        if m:
            amodal.setdefault(m.group(1), []).append(p)
    return [
        FrameRef(
            name=_join(prefix, c.stem), layout="osd", color=c, depth=d / "disparity" / c.name,
            label=d / "annotation" / c.name if has_labels else None,
            intrinsics=intrinsics or DEFAULT_INTRINSICS["osd"],
            amodal=tuple(amodal.get(c.stem, ())),
        )
        for c in _pngs(d / "image_color")
    ]


def _is_table_sequence(seq: Path) -> bool:
    parts = {p.lower() for p in seq.parts} | {p.lower() for p in seq.resolve().parts}
    return "table" in parts


def _ocid_refs(d: Path, prefix: str, intrinsics: Intrinsics | None) -> list[FrameRef]:
    has_labels = (d / "label").is_dir()
    background = (0, 1, 2) if _is_table_sequence(d) else (0, 1)
    return [
        FrameRef(
            name=_join(prefix, c.stem), layout="ocid", color=c, depth=d / "depth" / c.name,
            label=d / "label" / c.name if has_labels else None,
            intrinsics=intrinsics or DEFAULT_INTRINSICS["ocid"],
            background_ids=background,
        )
        for c in _pngs(d / "rgb")
    ]


# ------------------------------------------------------------------------------------------------ loading
def load_frame(ref: FrameRef, *, depth_scale: float = 0.001) -> Frame:
    """Read one frame (see :class:`Frame` for shapes and units).

    Args:
        ref: from :func:`find_frames`.
        depth_scale: metres per depth-PNG unit (0.001: millimetres).

    Raises:
        FramesError: naming the file and the problem: missing, unreadable or corrupt PNG; wrong dtype or number
            of channels; color, depth, label or amodal sizes disagreeing; ``K.json`` unreadable, missing keys,
            non-finite values, a non-positive focal length or a size other than the image's; no intrinsics.
    """
    if not (isinstance(depth_scale, (int, float)) and math.isfinite(depth_scale) and depth_scale > 0):
        raise FramesError(f"depth_scale = {depth_scale!r} must be a finite positive number (metres per unit).")
    notes: list[str] = []
    color = _read_color(ref.color)
    h, w = color.shape[:2]
    raw = _read_depth(ref.depth)
    _check_size(ref.depth, raw.shape, ref.color, (h, w), "depth")
    depth = raw.astype(np.float32) * np.float32(depth_scale)
    depth[raw == 0] = np.nan
    K = _frame_intrinsics(ref, w, h)

    visible: np.ndarray | None = None
    amodal: np.ndarray | None = None
    gt_ids: list[int] = []
    if ref.label is not None:
        label = _read_label(ref.label)
        _check_size(ref.label, label.shape, ref.color, (h, w), "label")
        ids = np.unique(label)
        ids = ids[~np.isin(ids, np.asarray(ref.background_ids, dtype=np.int64))]
        gt_ids = [int(i) for i in ids]
        visible = label[None, :, :] == ids[:, None, None]
        amodal = _load_amodal(ref, gt_ids, visible, (h, w), notes)
    elif ref.amodal:
        notes.append(f"{ref.name}: amodal masks ignored: the frame has no label image to pair them with.")
    return Frame(name=ref.name, layout=ref.layout, color=color, depth=depth, K=K, visible=visible,
                 amodal=amodal, gt_ids=gt_ids, notes=notes)


def _amodal_id(ref: FrameRef, p: Path) -> int | None:
    if ref.layout == "osd":
        m = _OSD_AMODAL_RE.match(p.name)
        return int(m.group(2)) if m and m.group(1) == ref.color.stem else None
    m = _INST_RE.match(p.name)
    return int(m.group(1)) if m else None


def _load_amodal(ref: FrameRef, gt_ids: list[int], visible: np.ndarray, hw: tuple[int, int],
                 notes: list[str]) -> np.ndarray | None:
    files: dict[int, Path] = {}
    for p in ref.amodal:
        i = _amodal_id(ref, p)
        if i is None:
            notes.append(f"{p}: ignored: an amodal mask must be named "
                         f"{'<stem>_<id>.png' if ref.layout == 'osd' else 'inst_<id>.png'}.")
            continue
        if i in files:
            raise FramesError(f"{p}: a second amodal mask for instance {i} (also {files[i].name}); keep one.")
        files[i] = p
    if not files:
        return None
    index = {g: k for k, g in enumerate(gt_ids)}
    amodal = visible.copy()
    used: set[int] = set()
    for i, p in sorted(files.items()):
        if i not in index:
            notes.append(f"{p}: ignored: the label image {ref.label.name if ref.label else ''} has no instance {i} "
                         f"(ids: {', '.join(map(str, gt_ids)) or 'none'}).")
            continue
        mask = _read_mask(p)
        _check_size(p, mask.shape, ref.color, hw, "amodal mask")
        amodal[index[i]] |= mask
        used.add(i)
    if not used:
        return None
    for g in gt_ids:
        if g not in used:
            notes.append(f"{ref.name}: no amodal mask for instance {g}; its visible mask stands in.")
    return amodal


# ------------------------------------------------------------------------------------------------ PNG readers
def _imread(path: Path) -> np.ndarray:
    """cv2.IMREAD_UNCHANGED (16-bit stays 16-bit; color is BGR[A])."""
    if not path.is_file():
        raise FramesError(f"{path}: file is missing; every frame needs it (or remove the frame).")
    try:
        buf = np.fromfile(path, dtype=np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    except (OSError, cv2.error) as e:
        raise FramesError(f"{path}: cannot be read ({e}); check the file's permissions or re-export it.") from e
    if img is None:
        raise FramesError(f"{path}: not a readable image (empty, truncated or corrupt PNG); re-export or remove it.")
    return img


def _read_color(path: Path) -> np.ndarray:
    img = _imread(path)
    if img.dtype != np.uint8:
        raise FramesError(f"{path}: color image is {img.dtype}; it must be 8-bit RGB (uint8). Convert it to 8 bits.")
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels not in (3, 4):
        raise FramesError(f"{path}: color image has {channels} channel(s); it must be 3-channel RGB.")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB if channels == 3 else cv2.COLOR_BGRA2RGB)


def _read_depth(path: Path) -> np.ndarray:
    img = _imread(path)
    if img.ndim != 2:
        raise FramesError(f"{path}: depth image has {img.shape[2]} channels; it must be single-channel uint16 "
                          f"millimetres.")
    if img.dtype != np.uint16:
        raise FramesError(f"{path}: depth image is {img.dtype}; it must be 16-bit (uint16) millimetres, 0 = no "
                          f"reading. Save the raw depth as a 16-bit PNG.")
    return img


def _read_label(path: Path) -> np.ndarray:
    """[H, W] int64 instance ids; PIL keeps palette PNGs as their indices (cv2 would expand them to colors)."""
    from PIL import Image

    if not path.is_file():
        raise FramesError(f"{path}: label file is missing; add it or remove the frame.")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.array(im)
    except Exception as e:  # PIL raises many types for damaged files
        raise FramesError(f"{path}: not a readable label image ({e}); re-export or remove it.") from e
    if mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L") or arr.ndim != 2:
        raise FramesError(f"{path}: label image has mode {mode} (shape {arr.shape}); it must be a single-channel "
                          f"uint8 or uint16 (or palette) PNG of instance ids, 0 = background.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise FramesError(f"{path}: label image is {arr.dtype}; instance ids must be integers (uint8 or uint16).")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise FramesError(f"{path}: label image holds negative values; instance ids must be >= 0.")
    return arr


def _read_mask(path: Path) -> np.ndarray:
    img = _imread(path)
    if img.ndim == 3:
        img = img[..., :3].max(axis=2)
    return img > 0


def _check_size(path: Path, shape: tuple[int, ...], color: Path, hw: tuple[int, int], what: str) -> None:
    if tuple(shape[:2]) != hw:
        raise FramesError(f"{path}: {what} is {shape[1]}x{shape[0]} but the color image {color.name} is "
                          f"{hw[1]}x{hw[0]} (width x height); they must be registered at the same size.")


# ------------------------------------------------------------------------------------------------ intrinsics
def _check_intrinsics(K: Intrinsics, where: str) -> None:
    if not isinstance(K, Intrinsics):
        raise FramesError(f"{where} must be an Intrinsics, got {type(K).__name__}.")
    for k in ("fx", "fy"):
        v = getattr(K, k)
        if not (math.isfinite(v) and v > 0):
            raise FramesError(f"{where}: {k} = {v!r} must be a finite positive focal length in pixels.")
    for k in ("cx", "cy"):
        if not math.isfinite(getattr(K, k)):
            raise FramesError(f"{where}: {k} = {getattr(K, k)!r} must be finite.")
    if K.width <= 0 or K.height <= 0:
        raise FramesError(f"{where}: size {K.width}x{K.height} must be positive.")


def _frame_intrinsics(ref: FrameRef, w: int, h: int) -> Intrinsics:
    if ref.intrinsics_file is not None:
        return _read_k_json(ref.intrinsics_file, w, h, ref.color.name)
    K = ref.intrinsics
    if K is None:
        raise FramesError(f"{ref.color.parent / 'K.json'}: file is missing; write the color camera's fx, fy, cx, cy, "
                          f"width, height there, or pass intrinsics to find_frames.")
    if (K.width, K.height) != (w, h):
        source = "the intrinsics passed to find_frames" if K is not DEFAULT_INTRINSICS.get(ref.layout) else \
            f"the default {ref.layout.upper()} intrinsics"
        raise FramesError(f"{ref.color}: image is {w}x{h} but {source} are for {K.width}x{K.height}; pass "
                          f"intrinsics for this camera and image size to find_frames.")
    return K


def _read_k_json(path: Path, w: int, h: int, color_name: str) -> Intrinsics:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise FramesError(f"{path}: cannot be read ({e}).") from e
    except json.JSONDecodeError as e:
        raise FramesError(f"{path}: not valid JSON ({e}); it must be an object with keys "
                          f"{', '.join(_K_KEYS)}.") from e
    if not isinstance(data, dict):
        raise FramesError(f"{path}: must hold a JSON object with keys {', '.join(_K_KEYS)}, "
                          f"not a {type(data).__name__}.")
    missing = [k for k in _K_KEYS if k not in data]
    if missing:
        raise FramesError(f"{path}: missing key(s) {', '.join(missing)}; K.json needs fx, fy, cx, cy (pixels) and "
                          f"width, height of the color image.")
    vals: dict[str, float] = {}
    for k in _K_KEYS:
        v = data[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise FramesError(f"{path}: {k} = {v!r} is not a number.")
        if not math.isfinite(v):
            raise FramesError(f"{path}: {k} = {v!r} is not finite; write the calibrated value.")
        vals[k] = float(v)
    for k in ("fx", "fy"):
        if vals[k] <= 0:
            raise FramesError(f"{path}: {k} = {vals[k]:g} must be a positive focal length in pixels.")
    for k in ("width", "height"):
        if vals[k] <= 0 or not vals[k].is_integer():
            raise FramesError(f"{path}: {k} = {data[k]!r} must be a positive whole number of pixels.")
    kw, kh = int(vals["width"]), int(vals["height"])
    if (kw, kh) != (w, h):
        raise FramesError(f"{path}: describes a {kw}x{kh} image but {color_name} is {w}x{h}; K.json must belong to "
                          f"this image (scale fx, fy, cx, cy with the image if it was resized).")
    if not (0.0 <= vals["cx"] <= w and 0.0 <= vals["cy"] <= h):
        raise FramesError(f"{path}: principal point (cx, cy) = ({vals['cx']:g}, {vals['cy']:g}) lies outside the "
                          f"{w}x{h} image; check that K.json belongs to this camera.")
    return Intrinsics(vals["fx"], vals["fy"], vals["cx"], vals["cy"], kw, kh)
