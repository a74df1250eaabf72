"""Node parameters, the config files and the launch files (no node process needed)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
from ros_helpers import PKG_DIR

from instance_seg_ros.core.config import Config, ConfigError, word_for_bool
from instance_seg_ros.ros.params import (
    NODE_SPECS,
    NodeSettings,
    all_specs,
    descriptor,
    is_config_key,
    split_flat,
    validate_node_value,
)

CONFIG_DIR = PKG_DIR / "config"
LAUNCH_DIR = PKG_DIR / "launch"
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


def test_node_specs_match_node_settings():
    assert {s.name: s.default for s in NODE_SPECS} == NodeSettings().to_flat()
    names = [s.name for s in all_specs()]
    assert len(names) == len(set(names)), "a node parameter shadows a config key"
    assert not any(is_config_key(s.name) for s in NODE_SPECS)
    cfg, node = split_flat({"model.weights": "none", "publish.labels": "always", "use_sim_time": True})
    assert cfg == {"model.weights": "none"} and node == {"publish.labels": "always"}


def test_descriptors_carry_ranges_choices_and_mutability():
    from rcl_interfaces.msg import ParameterType

    d = descriptor(Config.spec("model.score_threshold"))
    assert d.type == ParameterType.PARAMETER_DOUBLE and d.description.startswith("Minimum detection score")
    assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == (0.0, 1.0)
    assert "changes at run time" in d.additional_constraints
    d = descriptor(Config.spec("model.max_instances"))
    assert d.type == ParameterType.PARAMETER_INTEGER
    assert (d.integer_range[0].from_value, d.integer_range[0].to_value, d.integer_range[0].step) == (1, 1000, 1)
    d = descriptor(Config.spec("model.device"))
    assert "one of: auto, cpu, cuda (or cuda:N)" in d.additional_constraints and "fixed while configured" in \
        d.additional_constraints
    d = descriptor(next(s for s in NODE_SPECS if s.name == "qos.input_reliability"))
    assert d.type == ParameterType.PARAMETER_STRING and "best_effort, reliable" in d.additional_constraints
    assert not d.read_only


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("publish.labels", "sometimes", "must be one of auto, always, never"),
        ("qos.input_depth", 0, r"within \[1, 100\]"),
        ("qos.input_depth", 2.5, "must be an integer"),
        ("diagnostics.period", float("nan"), "must be finite"),
        ("input.compressed", "yes", "true or false"),
        ("input.nonsense", 1, "Unknown node parameter"),
    ],
)
def test_invalid_node_values_are_refused_with_reason(name, value, match):
    with pytest.raises(ConfigError, match=match):
        validate_node_value(name, value)


def test_node_settings_from_flat():
    s = NodeSettings.from_flat({"diagnostics.period": 2, "publish.debug_image": "always"})
    assert s.diagnostics_period == 2.0 and isinstance(s.diagnostics_period, float)
    assert s.publish_debug_image == "always" and s.publish_labels == "auto"
    with pytest.raises(ConfigError, match="Unknown node parameter"):
        NodeSettings.from_flat({"nope": 1})


@pytest.mark.parametrize("name", CONFIGS)
def test_config_files_are_valid_ros_params_files(name):
    """rclpy parses each file; every key is a declared parameter of the right type; values validate."""
    from rcl_interfaces.msg import ParameterType
    from rclpy.parameter import parameter_dict_from_yaml_file, parameter_value_to_python

    params = parameter_dict_from_yaml_file(str(CONFIG_DIR / name), use_wildcard=True)
    specs = {s.name: s for s in all_specs()}
    types_ = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
              float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
    flat = {}
    for key, p in params.items():
        assert key in specs, f"{name}: unknown parameter {key}"
        value = parameter_value_to_python(p.value)
        if p.value.type == ParameterType.PARAMETER_BOOL and word_for_bool(specs[key], value):
            value = word_for_bool(specs[key], value)  # ROS's YAML reads off / "off" as false: the node takes the word
        else:
            assert p.value.type == types_[specs[key].type], f"{name}: {key} has the wrong type (write 2.0, not 2)"
        flat[key] = value
    cfg, node = split_flat(flat)
    Config.from_flat(cfg)
    NodeSettings.from_flat(node)
    assert Config.from_yaml(CONFIG_DIR / name) == Config.from_flat(cfg)


def test_default_yaml_lists_every_parameter_with_its_default():
    from rclpy.parameter import parameter_dict_from_yaml_file, parameter_value_to_python

    params = parameter_dict_from_yaml_file(str(CONFIG_DIR / "default.yaml"), use_wildcard=True)
    values = {k: parameter_value_to_python(p.value) for k, p in params.items()}
    expected = {s.name: s.default for s in all_specs()}
    assert values == expected
    text = (CONFIG_DIR / "default.yaml").read_text()
    for s in all_specs():  # each parameter is commented with its description
        assert s.description.split()[0] in text


# ---------------------------------------------------------------------------------------- launch files
class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context[self.name]


def _stub_launch(monkeypatch, share: Path) -> None:
    """Minimal stand-ins for launch / launch_ros / ament_index (not installable here) that record the calls."""
    mods = {name: types.ModuleType(name) for name in (
        "launch", "launch.actions", "launch.substitutions", "launch_ros", "launch_ros.actions",
        "ament_index_python", "ament_index_python.packages")}
    mods["launch"].LaunchDescription = _Recorder
    mods["launch.actions"].DeclareLaunchArgument = _Recorder
    mods["launch.actions"].OpaqueFunction = _Recorder
    mods["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration
    mods["launch_ros.actions"].Node = _Recorder
    mods["ament_index_python.packages"].get_package_share_directory = lambda pkg: str(share)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)


def _launch(monkeypatch, file: str, **args: str):
    _stub_launch(monkeypatch, PKG_DIR)
    spec = importlib.util.spec_from_file_location(file.replace(".", "_"), LAUNCH_DIR / file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    (entities,) = ld.args
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities if "default_value" in e.kwargs}
    (opaque,) = [e for e in entities if "function" in e.kwargs]
    context = {**declared, **args}
    return declared, opaque.kwargs["function"](context)


@pytest.mark.parametrize(
    ("camera", "image", "depth", "info", "params"),
    [
        ("realsense", "/camera/camera/color/image_raw", "/camera/camera/aligned_depth_to_color/image_raw",
         "/camera/camera/color/camera_info", "realsense.yaml"),
        ("gazebo", "/camera/image", "/camera/depth_image", "/camera/camera_info", "gazebo.yaml"),
        ("generic", "image", "depth", "camera_info", "default.yaml"),
    ],
)
def test_instance_seg_launch_presets(monkeypatch, camera, image, depth, info, params):
    declared, (node,) = _launch(monkeypatch, "instance_seg.launch.py", camera=camera)
    assert set(declared) >= {"camera", "namespace", "params_file", "use_sim_time", "managed"}
    kw = node.kwargs
    assert kw["executable"] == "instance_seg_node" and kw["package"] == "instance_seg_ros"
    assert dict(kw["remappings"]) == {"image": image, "image/compressed": image + "/compressed", "depth": depth,
                                      "camera_info": info}
    params_file, overrides = kw["parameters"]
    assert Path(params_file) == CONFIG_DIR / params and Path(params_file).exists()
    assert overrides == {"use_sim_time": False, "managed": False}


def test_instance_seg_launch_overrides(monkeypatch):
    _, (node,) = _launch(monkeypatch, "instance_seg.launch.py", camera="generic", image="/left/rgb",
                         params_file="/tmp/p.yaml", use_sim_time="true", managed="True", namespace="left")
    kw = node.kwargs
    assert dict(kw["remappings"])["image/compressed"] == "/left/rgb/compressed"
    assert kw["parameters"] == ["/tmp/p.yaml", {"use_sim_time": True, "managed": True}]
    assert kw["namespace"] == "left"
    with pytest.raises(RuntimeError, match="not a preset"):
        _launch(monkeypatch, "instance_seg.launch.py", camera="kinect")


def test_sim_launch(monkeypatch):
    declared, nodes = _launch(monkeypatch, "sim.launch.py")
    assert declared["use_sim_time"] == "true"
    by_exe = {n.kwargs["executable"]: n.kwargs for n in nodes}
    assert set(by_exe) == {"sim_camera_node", "instance_seg_node"}
    assert by_exe["sim_camera_node"]["namespace"] == by_exe["instance_seg_node"]["namespace"] == "sim"
    params_file, overrides = by_exe["instance_seg_node"]["parameters"]
    assert Path(params_file).exists() and overrides["use_sim_time"] is True


@pytest.mark.parametrize(
    ("env", "reliability", "fragment"),
    [
        ({"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}, "best_effort", ""),
        ({"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}, "best_effort", ""),
        ({"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA", "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}, "best_effort",
         "overrides FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA"),
        ({}, "best_effort", "FASTDDS_BUILTIN_TRANSPORTS is DEFAULT"),
        ({}, "reliable", ""),
        ({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}, "best_effort", ""),
    ],
)
def test_transport_warning(env, reliability, fragment):
    from instance_seg_ros.ros.qos import transport_warning

    text = transport_warning(env, reliability)
    assert (fragment in text) if fragment else text == ""
