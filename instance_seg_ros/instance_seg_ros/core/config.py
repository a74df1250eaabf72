"""One typed, validated configuration for the whole pipeline.

The dotted keys (``model.weights``, ``depth.max`` …) are exactly the ROS parameter names of
``instance_seg_node`` and the keys of ``config/*.yaml``, so the same file configures the node, the
evaluator and the benchmark (the kiss-icp pattern). Nothing here imports ROS.

Example::

    cfg = Config.from_flat({"model.score_threshold": 0.7, "depth.max": 2.0})
    cfg = Config.from_yaml("config/default.yaml")
    cfg.to_flat()["model.device"]  # 'auto'
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

__all__ = [
    "CloudConfig",
    "Config",
    "ConfigError",
    "DepthConfig",
    "FilterConfig",
    "GeometryConfig",
    "InputConfig",
    "ModelConfig",
    "OcclusionConfig",
    "ParamSpec",
    "Settings",
    "SyncConfig",
    "TrackerConfig",
    "check_value",
    "field_specs",
    "param_field",
    "word_for_bool",
]


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which key and what is allowed."""


def param_field(
    default: Any,
    description: str,
    *,
    choices: tuple[Any, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    dynamic: bool = False,
    choices_open: bool = False,
    name: str | None = None,
) -> Any:
    """A dataclass field carrying its parameter descriptor (read back by :func:`field_specs`).

    ``dynamic`` parameters may change while the node runs; the others need a reconfigure.
    ``choices_open`` means ``choices`` are examples (e.g. device ``cuda:1`` is also valid).
    ``name`` is the dotted parameter name when it is not the attribute's (``qos.depth`` for ``qos_depth``).
    """
    meta = {
        "description": description,
        "choices": choices,
        "low": low,
        "high": high,
        "dynamic": dynamic,
        "choices_open": choices_open,
        "name": name,
    }
    return field(default=default, metadata=meta)


_p = param_field


def field_specs(cls: type, prefix: str = "") -> Iterator[ParamSpec]:
    """The :class:`ParamSpec` of each :func:`param_field` of the dataclass ``cls``, in declaration order; the
    parameter name is ``prefix`` + the field's ``name`` (its attribute name unless given)."""
    for f in dataclasses.fields(cls):
        m = f.metadata
        yield ParamSpec(
            name=prefix + (m["name"] or f.name),
            default=f.default,
            type=type(f.default),
            description=m["description"],
            choices=m["choices"],
            low=m["low"],
            high=m["high"],
            dynamic=m["dynamic"],
            choices_open=m["choices_open"],
        )


@dataclass(frozen=True)
class ModelConfig:
    weights: str = _p(
        "bundled",
        "Model weights: 'bundled' (the model shipped in this package), 'none' (untrained, for tests and "
        "benchmarks only), 'coco' (torchvision COCO weights, needs a download), or a path to a .pt "
        "checkpoint written by `isr train` or a .safetensors copy of one (`isr weights convert`; loads without "
        "pickle).",
    )
    backbone: str = _p(
        "resnet18_fpn",
        "Backbone when the weights do not fix it ('none' weights): resnet50_fpn, resnet18_fpn, "
        "mobilenet_v3_large_fpn, efficientnet_lite0_fpn.",
        choices=("resnet50_fpn", "resnet18_fpn", "mobilenet_v3_large_fpn", "efficientnet_lite0_fpn"),
    )
    input_mode: str = _p(
        "rgb", "Network input when the weights do not fix it: rgb, or rgbd (depth as a 4th channel).",
        choices=("rgb", "rgbd"),
    )
    device: str = _p(
        "auto", "Inference device: auto (cuda if available), cpu, cuda, cuda:N.",
        choices=("auto", "cpu", "cuda"), choices_open=True,
    )
    precision: str = _p(
        "fp32", "Inference precision: fp32, fp16 or bf16 (autocast, CUDA only; fp32 on CPU).",
        choices=("fp32", "fp16", "bf16"),
    )
    score_threshold: float = _p(0.5, "Minimum detection score.", low=0.0, high=1.0, dynamic=True)
    mask_threshold: float = _p(
        0.5, "Mask probability above which a pixel belongs to the instance.", low=0.0, high=1.0, dynamic=True
    )
    nms_threshold: float = _p(0.5, "Box IoU above which lower-scored detections are suppressed.", low=0.0, high=1.0)
    mask_nms_threshold: float = _p(
        0.5,
        "A detection whose visible mask lies more than this share inside higher-scored ones (containment) or is "
        "owned by others (ownership; see mask_nms) is dropped: a pixel shows one surface, so it is a duplicate or a "
        "part (label, print, highlight) of another object. 1 = keep every detection.",
        low=0.0, high=1.0, dynamic=True,
    )
    mask_nms: str = _p(
        "ownership",
        "How overlapping visible masks are settled. ownership: each shared pixel goes to the detection with the "
        "highest score x mask probability there, a detection left with no more than 1 - mask_nms_threshold of its "
        "mask is dropped, and the kept masks are disjoint (a mask that spills over a touching object gives the "
        "spill back). containment: a detection lying more than mask_nms_threshold inside a higher-scored one is "
        "dropped, masks are left as they are.",
        choices=("ownership", "containment"), dynamic=True,
    )
    max_instances: int = _p(30, "At most this many instances per frame (highest scores kept).", low=1, high=1000,
                            dynamic=True)
    min_size: int = _p(
        0, "Network input short side in pixels; 0 = the camera's own resolution (no upscaling).", low=0, high=4096
    )
    max_size: int = _p(
        0, "Network input long side cap in pixels; 0 = the camera's own resolution.", low=0, high=8192
    )
    proposals: int = _p(
        0,
        "Region proposals the RPN passes to the box head per frame (after its NMS); 0 = the model's own setting "
        "(300 for the bundled model). Fewer is faster, more can find more objects in clutter.",
        low=0, high=5000, dynamic=True,
    )
    geometric_proposals: str = _p(
        "auto",
        "auto = when the support plane is found (filter.support_plane), clusters of depth above it are added to "
        "the network's region proposals; the network still scores, refines and masks them "
        "(core/geometric_proposals.py). off = the network's own proposals only.",
        choices=("auto", "off"), dynamic=True,
    )
    network_depth: bool = _p(
        True,
        "RGB-D models: the network sees the depth image (true) or color only (false: depth as missing, as in the "
        "modality dropout of training), for depth that misleads it (glass, shiny or out-of-range scenes). Depth "
        "still lifts the instances to 3D either way. RGB models ignore it.",
        dynamic=True,
    )
    warmup: bool = _p(True, "Run one dummy frame when the model loads, so the first real frame is not slow.")
    threads: int = _p(0, "CPU threads for torch; 0 = leave torch's default.", low=0, high=256)


@dataclass(frozen=True)
class DepthConfig:
    min: float = _p(0.1, "Depth below this (meters) is invalid.", low=0.0, high=100.0, dynamic=True)
    max: float = _p(5.0, "Depth above this (meters) is invalid.", low=0.0, high=100.0, dynamic=True)
    scale_16uc1: float = _p(0.001, "Meters per unit of 16UC1 depth (0.001 = millimetres).", low=1e-6, high=1.0)
    flying_pixel_threshold: float = _p(
        0.03,
        "Drop mask pixels whose depth differs from a 4-neighbour by more than this fraction of their own "
        "depth (flying pixels at depth discontinuities); 0 disables.",
        low=0.0, high=1.0, dynamic=True,
    )
    erode_px: int = _p(0, "Erode each visible mask by this many pixels before lifting.", low=0, high=20,
                       dynamic=True)


@dataclass(frozen=True)
class CloudConfig:
    with_rgb: bool = _p(True, "Add an rgb field to each instance's point cloud.", dynamic=True)
    voxel_size: float = _p(0.0, "Voxel downsampling of each cloud, meters; 0 disables.", low=0.0, high=1.0,
                           dynamic=True)
    outlier_removal: bool = _p(False, "Statistical outlier removal on each cloud (Open3D).", dynamic=True)
    outlier_neighbors: int = _p(20, "Neighbours for statistical outlier removal.", low=1, high=1000, dynamic=True)
    outlier_std_ratio: float = _p(2.0, "Std-dev ratio for statistical outlier removal.", low=0.01, high=100.0,
                                  dynamic=True)
    min_points: int = _p(10, "Instances with fewer valid 3D points get no box (zeros) but are still reported.",
                         low=0, high=1_000_000, dynamic=True)


@dataclass(frozen=True)
class GeometryConfig:
    box_mode: str = _p(
        "auto",
        "The 3D box of each instance (box_pose, box_size). support = standing on the support plane (gravity-aligned): "
        "z = the plane's normal (up), x = the longer side of the smallest rectangle around the points projected onto "
        "the plane, y = z cross x; size = (long, short, height from the lowest to the highest point); 0.1-1 ms an "
        "instance (the plane is fitted for this when the frame has none; no plane: free). free = the tightest box in "
        "any orientation (axes by decreasing size; 4-10 ms an instance). auto = support when the frame already has a "
        "support plane (filter.support_plane or model.geometric_proposals found one), else free.",
        choices=("auto", "support", "free"), dynamic=True,
    )


@dataclass(frozen=True)
class FilterConfig:
    support_plane: str = _p(
        "auto",
        "Support-plane check: auto = find the dominant plane in the depth (table, floor; subsampled RANSAC) and drop "
        "instances whose points lie on it or behind it (print, paper, highlights, the floor beyond the table); only "
        "when a plane holds at least filter.plane_min_support of the valid depth, so a shelf or a bin without one "
        "is left alone. off = keep every instance.",
        choices=("auto", "off"), dynamic=True,
    )
    plane_tolerance: float = _p(
        0.01, "Support plane: RANSAC inlier distance in meters at 1 m (grows with depth like the sensor noise).",
        low=0.001, high=0.1, dynamic=True,
    )
    plane_min_support: float = _p(
        0.2, "Support plane: share of the valid depth pixels the plane must hold to be used (0..1).",
        low=0.01, high=1.0, dynamic=True,
    )
    min_height: float = _p(
        0.015,
        "Support plane: an instance whose points rise less than this (meters; 90th percentile of their heights) "
        "above the plane lies on it or behind it and is dropped.",
        low=0.0, high=1.0, dynamic=True,
    )


@dataclass(frozen=True)
class OcclusionConfig:
    threshold: float = _p(0.1, "is_occluded is true when the hidden fraction exceeds this.", low=0.0, high=1.0,
                          dynamic=True)


@dataclass(frozen=True)
class InputConfig:
    max_width: int = _p(4096, "Frames wider than this are rejected as absurd.", low=1, high=65535)
    max_height: int = _p(4096, "Frames taller than this are rejected as absurd.", low=1, high=65535)


@dataclass(frozen=True)
class SyncConfig:
    slop: float = _p(0.02, "Max stamp difference (s) for color, depth and camera_info to form one frame.",
                     low=0.0, high=10.0, dynamic=True)
    queue_size: int = _p(10, "Unmatched messages kept per input stream.", low=1, high=1000)
    max_age: float = _p(1.0, "Unmatched messages older than this (s, behind the newest) are dropped.",
                        low=0.0, high=60.0, dynamic=True)


@dataclass(frozen=True)
class TrackerConfig:
    """``tracking.*``: persistent track ids (:class:`~.tracking.Tracker`); also usable alone, ``TrackerConfig()``.

    Raises:
        ConfigError (a ValueError): a value out of range, ``low_score > high_score``, or no image cue weighted.
    """

    enabled: bool = _p(True, "Give instances persistent track ids (Instance.track_id); false = all ids 0.",
                       dynamic=True)
    high_score: float = _p(
        0.5, "Detections scoring at least this are matched first, to all tracks, and may start new tracks (0..1).",
        low=0.0, high=1.0, dynamic=True,
    )
    low_score: float = _p(
        0.1, "Detections scoring in [low_score, high_score) only extend confirmed tracks (second stage); below "
        "low_score a detection is not tracked (0..1).",
        low=0.0, high=1.0, dynamic=True,
    )
    min_hits: int = _p(3, "A new track is confirmed, and gets an id, after this many consecutive matched frames.",
                       low=1, high=1000, dynamic=True)
    max_age_s: float = _p(
        1.0, "A confirmed track is kept through this many seconds of misses (image stamps), then dropped.",
        low=0.0, high=3600.0, dynamic=True,
    )
    gate_m: float = _p(
        0.15, "3D gate, meters: a detection whose centroid is farther than this from a track's predicted centroid "
        "is never matched to it (applies only when both centroids are known).",
        low=1e-3, high=1000.0, dynamic=True,
    )
    min_similarity: float = _p(
        0.3, "Smallest combined similarity (0..1, see the weights) for a detection to continue a track.",
        low=1e-3, high=1.0, dynamic=True,
    )
    weight_visible: float = _p(0.5, "Weight of the visible-mask IoU in the similarity.", low=0.0, high=100.0,
                               dynamic=True)
    weight_amodal: float = _p(1.0, "Weight of the amodal-mask IoU (stable when the object is partly hidden).",
                              low=0.0, high=100.0, dynamic=True)
    weight_box: float = _p(0.5, "Weight of the visible 2D box IoU.", low=0.0, high=100.0, dynamic=True)
    weight_centroid: float = _p(
        1.0, "Weight of 3D proximity, max(0, 1 - distance / gate_m); left out when a centroid is unknown.",
        low=0.0, high=100.0, dynamic=True,
    )
    motion_horizon_s: float = _p(
        0.2, "Constant-velocity prediction over at most this many seconds past a track's last observation; "
        "0 = a track stays where it was last seen.",
        low=0.0, high=10.0, dynamic=True,
    )

    def __post_init__(self) -> None:
        for f, spec in zip(dataclasses.fields(self), field_specs(type(self), "tracking."), strict=True):
            object.__setattr__(self, f.name, check_value(spec, getattr(self, f.name)))
        if self.low_score > self.high_score:
            raise ConfigError(f"tracking.low_score ({self.low_score}) must not exceed tracking.high_score "
                              f"({self.high_score}).")
        if self.weight_visible + self.weight_amodal + self.weight_box <= 0.0:
            raise ConfigError("At least one of tracking.weight_visible, tracking.weight_amodal and tracking.weight_box "
                              "must be above 0: without depth the image cues are all the tracker has.")


_SECTIONS = {
    "model": ModelConfig,
    "depth": DepthConfig,
    "cloud": CloudConfig,
    "geometry": GeometryConfig,
    "filter": FilterConfig,
    "occlusion": OcclusionConfig,
    "input": InputConfig,
    "sync": SyncConfig,
    "tracking": TrackerConfig,
}


@dataclass(frozen=True)
class ParamSpec:
    """Descriptor of one dotted parameter (what the node declares)."""

    name: str
    default: Any
    type: type
    description: str
    choices: tuple[Any, ...] | None
    low: float | None
    high: float | None
    dynamic: bool
    choices_open: bool = False


class Settings:
    """Base of a frozen dataclass whose fields are :func:`param_field` s: one flat table of parameters (a node's own
    settings beside :class:`Config`), each default and description written once, in the field.

    Construction checks every value against its spec (ints are widened for float fields); subclasses add
    cross-field checks by extending ``__post_init__``. ``error`` is the exception raised (a ``ValueError``) and
    ``label`` names the owner in the unknown-name message.

    Example::

        @dataclass(frozen=True)
        class CameraSettings(Settings):
            label = "camera"
            rate: float = param_field(10.0, "Frames per second.", low=0.01, high=1000.0, dynamic=True)
            qos_depth: int = param_field(5, "History depth.", low=1, high=100, name="qos.depth")
    """

    error: ClassVar[type[Exception]] = ConfigError
    label: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f, spec in zip(dataclasses.fields(self), field_specs(type(self)), strict=True):
            object.__setattr__(self, f.name, check_value(spec, getattr(self, f.name), self.error))

    @classmethod
    def specs(cls) -> tuple[ParamSpec, ...]:
        """Every parameter with its default and descriptor, in declaration order."""
        return tuple(field_specs(cls))

    @classmethod
    def _attrs(cls) -> dict[str, str]:
        """Dotted parameter name -> attribute name."""
        return {s.name: f.name for s, f in zip(field_specs(cls), dataclasses.fields(cls), strict=True)}

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> Self:
        """From dotted parameter names (missing ones keep their defaults).

        Raises:
            error: an unknown name or an invalid value, with the reason.
        """
        attrs = cls._attrs()
        unknown = sorted(set(flat) - set(attrs))
        if unknown:
            raise cls.error(f"Unknown {cls.label + ' ' if cls.label else ''}parameter(s) {', '.join(unknown)}. "
                            f"Known: {', '.join(attrs)}.")
        return cls(**{attrs[k]: v for k, v in flat.items()})

    def to_flat(self) -> dict[str, Any]:
        return {name: getattr(self, attr) for name, attr in self._attrs().items()}


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    cloud: CloudConfig = field(default_factory=CloudConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    occlusion: OcclusionConfig = field(default_factory=OcclusionConfig)
    input: InputConfig = field(default_factory=InputConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    tracking: TrackerConfig = field(default_factory=TrackerConfig)

    def __post_init__(self) -> None:
        for spec in self.specs():
            check_value(spec, self.get(spec.name))
        if self.depth.min >= self.depth.max:
            raise ConfigError(
                f"depth.min ({self.depth.min}) must be below depth.max ({self.depth.max})."
            )
        if self.model.min_size and self.model.max_size and self.model.min_size > self.model.max_size:
            raise ConfigError(
                f"model.min_size ({self.model.min_size}) must not exceed model.max_size ({self.model.max_size})."
            )

    # ----------------------------------------------------------------- descriptors
    @staticmethod
    def specs() -> Iterator[ParamSpec]:
        """Every dotted parameter with its default and descriptor, in declaration order."""
        for section, cls in _SECTIONS.items():
            yield from field_specs(cls, f"{section}.")

    @staticmethod
    def spec(name: str) -> ParamSpec:
        for s in Config.specs():
            if s.name == name:
                return s
        raise ConfigError(f"Unknown parameter '{name}'. Known: {', '.join(s.name for s in Config.specs())}.")

    # ----------------------------------------------------------------- access
    def get(self, name: str) -> Any:
        section, _, key = name.partition(".")
        if section not in _SECTIONS or not key:
            raise ConfigError(f"Unknown parameter '{name}'.")
        return getattr(getattr(self, section), key)

    def to_flat(self) -> dict[str, Any]:
        return {s.name: self.get(s.name) for s in self.specs()}

    def replace(self, **flat: Any) -> Config:
        """A validated copy with some dotted keys changed: ``cfg.replace(**{"depth.max": 2.0})``."""
        return Config.from_flat({**self.to_flat(), **flat})

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> Config:
        """Build from dotted keys; unknown keys and wrongly typed values raise ConfigError."""
        sections: dict[str, dict[str, Any]] = {sec: {} for sec in _SECTIONS}
        for name, value in flat.items():
            spec = cls.spec(name)
            section, _, key = name.partition(".")
            sections[section][key] = _coerce(spec, value)
        return cls(**{sec: _SECTIONS[sec](**vals) for sec, vals in sections.items()})

    @classmethod
    def from_nested(cls, nested: dict[str, Any]) -> Config:
        return cls.from_flat(_flatten(nested))

    @classmethod
    def from_yaml(cls, path: str | Path, node_name: str | None = None) -> Config:
        """Read a plain nested YAML or a ROS 2 params file (``node: {ros__parameters: {...}}``)."""
        import yaml

        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"Cannot read config file {p}: {exc}") from exc
        return cls.from_nested(_ros_params_section(data, node_name))


def _ros_params_section(data: dict[str, Any], node_name: str | None) -> dict[str, Any]:
    """Strip the ROS params-file wrapper (``/**`` or a node name, then ``ros__parameters``)."""
    if not isinstance(data, dict):
        raise ConfigError("A config file must hold a mapping of parameters.")
    wrapped = {k: v for k, v in data.items() if isinstance(v, dict) and "ros__parameters" in v}
    if not wrapped:
        return data
    merged: dict[str, Any] = {}
    for key in ("/**", "**"):
        if key in wrapped:
            merged.update(_flatten(wrapped[key]["ros__parameters"]))
    names = [k for k in wrapped if k not in ("/**", "**")]
    if node_name is not None:
        names = [k for k in names if k.lstrip("/").split("/")[-1] == node_name]
    for key in names:
        merged.update(_flatten(wrapped[key]["ros__parameters"]))
    # keys for other tools in the same file (e.g. topic names) are not ours
    known = {s.name for s in Config.specs()}
    return {k: v for k, v in merged.items() if k in known}


def _flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in nested.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _coerce(spec: ParamSpec, value: Any, error: type[Exception] = ConfigError) -> Any:
    """``value`` as ``spec``'s type: an integral number for an int, any real number (numpy's too) for a float."""
    t = spec.type
    if t is bool:
        if isinstance(value, bool):
            return value
        raise error(f"{spec.name} must be true or false, got {value!r}.")
    if t is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise error(f"{spec.name} must be an integer, got {value!r}.")
    if t is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise error(f"{spec.name} must be a number, got {value!r}.")
        return float(value)
    if t is str:
        word = word_for_bool(spec, value)
        if word is not None:
            return word
        if not isinstance(value, str):
            raise error(f"{spec.name} must be a string, got {value!r}.")
        return value
    return value


def word_for_bool(spec: ParamSpec, value: Any) -> str | None:
    """``"off"`` / ``"on"`` for a boolean given to a string parameter that has that choice, else None.

    YAML 1.1 (PyYAML, ROS params files) reads a bare ``off`` / ``on`` as a boolean: ``filter.support_plane: off``
    means the word.
    """
    if isinstance(value, bool) and spec.type is str and spec.choices:
        word = "on" if value else "off"
        if word in spec.choices:
            return word
    return None


def check_value(spec: ParamSpec, value: Any, error: type[Exception] = ConfigError) -> Any:
    """``value`` checked against ``spec`` (type, finite, range, choices) and returned as the spec's type.

    Raises:
        error (ConfigError unless given): naming the parameter and what is allowed.
    """
    value = _coerce(spec, value, error)
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{spec.name} must be finite, got {value!r}.")
    if spec.low is not None and value < spec.low or spec.high is not None and value > spec.high:
        raise error(f"{spec.name} must be within [{spec.low}, {spec.high}], got {value!r}.")
    if spec.choices is not None:
        ok = value in spec.choices
        if not ok and spec.choices_open and spec.name == "model.device":
            ok = _valid_cuda_device(value)
        if not ok:
            raise error(f"{spec.name} must be one of {', '.join(map(str, spec.choices))}, got {value!r}.")
    return value


def _valid_cuda_device(value: str) -> bool:
    head, _, idx = value.partition(":")
    return head == "cuda" and idx.isdigit()
