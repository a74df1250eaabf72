"""The node's parameters: the core :class:`~instance_seg_ros.core.config.Config` keys plus node-only settings.

Every parameter is declared from a :class:`~instance_seg_ros.core.config.ParamSpec` (name, default, type,
description, choices, range, dynamic), so ``ros2 param describe`` shows the same text as
``config/default.yaml``. Dynamic parameters change while the node runs; the others are fixed while the
node is configured (set them in the params file, or in the unconfigured state of a managed node).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.parameter import Parameter

from ..core.config import Config, ConfigError, ParamSpec, Settings, check_value, param_field, word_for_bool
from ..core.text import one_line

__all__ = [
    "NODE_SPECS",
    "PUBLISH_MODES",
    "NodeSettings",
    "all_specs",
    "coerced",
    "declare_specs",
    "descriptor",
    "is_config_key",
    "merged",
    "refusal",
    "refuse_fixed",
    "split_flat",
    "validate_node_value",
]

PUBLISH_MODES = ("auto", "always", "never")
_PUBLISH_HELP = "auto = only while someone subscribes, always, or never."


@dataclass(frozen=True)
class NodeSettings(Settings):
    """The node-only parameters, validated; each field's parameter name, default and description are declared once,
    here (:data:`NODE_SPECS` is read from them).

    Raises:
        ConfigError: a value of the wrong type, out of range or not one of the choices.
    """

    label = "node"

    managed: bool = param_field(
        False, "Run as a managed lifecycle node (configure loads and warms the model, activate subscribes, deactivate "
        "frees GPU memory). false = configure and activate at start-up.")
    compressed: bool = param_field(
        False, "Subscribe to image/compressed (sensor_msgs/CompressedImage, JPEG or PNG) instead of the raw image.",
        name="input.compressed")
    frame_id_check: bool = param_field(
        True, "Refuse frames whose color, depth and camera_info header.frame_id differ (depth must be registered to "
        "the color camera).", dynamic=True, name="input.frame_id_check")
    input_reliability: str = param_field(
        "best_effort", "Reliability of the image, depth and camera_info subscriptions: best_effort (sensor data; "
        "matches every publisher) or reliable (matches reliable publishers only).",
        choices=("best_effort", "reliable"), name="qos.input_reliability")
    input_depth: int = param_field(5, "History depth (keep last) of each input subscription.", low=1, high=100,
                                   name="qos.input_depth")
    output_reliability: str = param_field(
        "reliable", "Reliability of every output publisher: reliable or best_effort.",
        choices=("best_effort", "reliable"), name="qos.output_reliability")
    output_depth: int = param_field(5, "History depth (keep last) of each output publisher.", low=1, high=100,
                                    name="qos.output_depth")
    publish_labels: str = param_field(
        "auto", "Publish instance_labels (mono16 label image): " + _PUBLISH_HELP,
        choices=PUBLISH_MODES, dynamic=True, name="publish.labels")
    publish_markers: str = param_field(
        "auto", "Publish instance_markers (boxes, centroids, labels for RViz): " + _PUBLISH_HELP,
        choices=PUBLISH_MODES, dynamic=True, name="publish.markers")
    publish_debug_image: str = param_field(
        "auto", "Publish debug_image (rgb8 contour overlay): " + _PUBLISH_HELP,
        choices=PUBLISH_MODES, dynamic=True, name="publish.debug_image")
    diagnostics_period: float = param_field(1.0, "Seconds between /diagnostics messages.", low=0.1, high=60.0,
                                            name="diagnostics.period")
    stale_timeout: float = param_field(
        5.0, "Warn when an input topic that has publishers delivers nothing for this many seconds (the Fast DDS "
        "large-data pitfall), or has no publisher at all; 0 disables.", low=0.0, high=3600.0, dynamic=True,
        name="diagnostics.stale_timeout")
    warn_throttle: float = param_field(
        5.0, "At most one warning per problem (bad frame reason, stale topic ...) every this many seconds.",
        low=0.0, high=3600.0, dynamic=True, name="diagnostics.warn_throttle")


#: the node-only parameters, in declaration order
NODE_SPECS: tuple[ParamSpec, ...] = NodeSettings.specs()
_NODE_BY_NAME = {s.name: s for s in NODE_SPECS}
_CONFIG_KEYS = frozenset(s.name for s in Config.specs())


def all_specs() -> Iterator[ParamSpec]:
    """Every parameter the node declares: the core config's, then the node-only ones."""
    yield from Config.specs()
    yield from NODE_SPECS


def is_config_key(name: str) -> bool:
    return name in _CONFIG_KEYS


def split_flat(flat: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config_keys, node_keys)``; names that are neither are left out."""
    cfg = {k: v for k, v in flat.items() if k in _CONFIG_KEYS}
    node = {k: v for k, v in flat.items() if k in _NODE_BY_NAME}
    return cfg, node


def validate_node_value(name: str, value: Any) -> Any:
    """Check one node-only parameter value; returns it (ints widened to float for float parameters).

    Raises:
        ConfigError: unknown name, wrong type, out of range or not one of the choices.
    """
    spec = _NODE_BY_NAME.get(name)
    if spec is None:
        raise ConfigError(f"Unknown node parameter '{name}'. Known: {', '.join(_NODE_BY_NAME)}.")
    return check_value(spec, value)


def merged(cfg: Config, settings: NodeSettings, params: Iterable[Parameter]) -> tuple[Config, NodeSettings]:
    """``cfg`` and ``settings`` with the new values of ``params`` (names that are neither are ignored).

    Raises:
        ConfigError: an invalid value, with the reason.
    """
    cfg_flat, node_flat = cfg.to_flat(), settings.to_flat()
    for p in params:
        if p.name in _CONFIG_KEYS:
            cfg_flat[p.name] = p.value
        elif p.name in _NODE_BY_NAME:
            node_flat[p.name] = p.value
    return Config.from_flat(cfg_flat), NodeSettings.from_flat(node_flat)


def refusal(cfg: Config, settings: NodeSettings, params: Iterable[Parameter], state: str) -> str:
    """Why the node refuses ``params`` in lifecycle ``state`` ('' when it takes them): an invalid value, or a fixed
    parameter changed while configured (:func:`refuse_fixed`)."""
    params = list(params)
    try:
        merged(cfg, settings, params)
    except ConfigError as exc:
        return str(exc)
    return refuse_fixed({**cfg.to_flat(), **settings.to_flat()}, params, state)


def refuse_fixed(current: Mapping[str, Any], params: Iterable[Parameter], state: str) -> str:
    """Why ``params`` cannot be set in lifecycle ``state`` ('' when they can): a parameter that is not dynamic
    keeps its ``current`` value while the node is configured."""
    if state == "unconfigured":
        return ""
    specs = {s.name: s for s in all_specs()}
    for p in params:
        spec = specs.get(p.name)
        if spec is None or spec.dynamic or p.value == current.get(p.name):
            continue
        dynamic = ", ".join(s.name for s in specs.values() if s.dynamic)
        return (f"{p.name} cannot change while the node is {state}; set it in the params file (or deactivate and "
                f"clean up the managed node first). Run-time parameters: {dynamic}.")
    return ""


def coerced(spec: ParamSpec | None, param: Parameter) -> Parameter:
    """``param`` as ``spec`` takes it: an integer for a float parameter (``-p rate:=5``, ``depth.max: 2`` in YAML,
    ``ros2 param set ... depth.max 2``) becomes a double, and a boolean for a string parameter with an ``off`` /
    ``on`` choice (YAML's bare ``off``) the word; anything else is returned unchanged."""
    if spec is not None and spec.type is float and param.type_ == Parameter.Type.INTEGER:
        return Parameter(param.name, Parameter.Type.DOUBLE, float(param.value))
    if spec is not None and param.type_ == Parameter.Type.BOOL and word_for_bool(spec, param.value):
        return Parameter(param.name, Parameter.Type.STRING, word_for_bool(spec, param.value))
    return param


FIXED_WHILE_CONFIGURED = "fixed while configured (params file, or a managed node's unconfigured state)"


def descriptor(spec: ParamSpec, *, fixed_note: str | None = FIXED_WHILE_CONFIGURED,
               read_only: bool = False) -> ParameterDescriptor:
    """A ParameterDescriptor with the spec's description, type, choices and numeric range.

    Args:
        fixed_note: what ``additional_constraints`` says of a parameter that is not dynamic (None: nothing).
        read_only: mark non-dynamic parameters read-only (rclpy then refuses every change).
    """
    types = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
    d = ParameterDescriptor(name=spec.name, type=types.get(spec.type, ParameterType.PARAMETER_NOT_SET),
                            description=spec.description, read_only=read_only and not spec.dynamic)
    notes = []
    if spec.choices is not None:
        more = " (or cuda:N)" if spec.choices_open and spec.name == "model.device" else ""
        notes.append(f"one of: {', '.join(map(str, spec.choices))}{more}")
    if fixed_note is not None:
        notes.append("changes at run time" if spec.dynamic else fixed_note)
    d.additional_constraints = "; ".join(notes)
    if spec.low is not None and spec.high is not None:
        if spec.type is float:
            d.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high),
                                                         step=0.0)]
        elif spec.type is int:
            d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    return d


def declare_specs(node: Any, specs: Iterable[ParamSpec], *, error: type[Exception] = ConfigError,
                  known_hint: str = "", **descriptor_kw: Any) -> dict[str, Any]:
    """Declare every spec on ``node`` (with :func:`descriptor`) and return ``{name: value}``.

    An integer given for a float parameter (``-p rate:=5``, ``depth.max: 2`` in YAML) is taken as a double;
    a wrongly typed or out-of-range override raises ``error`` naming the parameter; overrides that match no
    spec get one warning each (a typo?), followed by ``known_hint``.
    """
    overrides: dict[str, Parameter] = getattr(node, "_parameter_overrides", {})
    values: dict[str, Any] = {}
    for spec in specs:
        given = overrides.get(spec.name)
        if given is not None:
            overrides[spec.name] = coerced(spec, given)
        try:
            values[spec.name] = node.declare_parameter(spec.name, spec.default,
                                                       descriptor(spec, **descriptor_kw)).value
        except InvalidParameterTypeException:
            raise error(
                f"Parameter {spec.name} must be of type {spec.type.__name__} (default {spec.default!r}), got "
                f"{given.value if given is not None else None!r}; fix it in the params file or on the command line."
            ) from None
        except InvalidParameterValueException as exc:
            raise error(f"Parameter {spec.name}: {one_line(exc)}") from None
    unknown = sorted(n for n in overrides if not node.has_parameter(n) and not n.startswith("qos_overrides."))
    for name in unknown:
        node.get_logger().warning(f"Ignoring unknown parameter '{name}' (a typo?). {known_hint}".rstrip())
    return values
