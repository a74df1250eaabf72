"""Node parameters, the config files and the launch files (no node process needed)."""

from __future__ import annotations

import importlib.util
import re
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
# launch / launch_ros have no wheels (test_launch.py runs the launch files with the real ones where they are
# installed); here each name the launch files import is a stand-in that records its constructor arguments, and
# the tests run generate_launch_description and the OpaqueFunctions (and follow sim.launch.py's include) on a
# plain dict of argument values. lifecycle_msgs is the real package.
class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __repr__(self):
        return f"{type(self).__name__}(*{self.args!r}, **{self.kwargs!r})"


def _recorder(name: str) -> type[_Recorder]:
    """A _Recorder class named ``name``, so that a test can tell a LifecycleNode from a Node."""
    return type(name, (_Recorder,), {})


class _LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context[self.name]


class _ThisLaunchFileDir:
    def perform(self, context):
        return str(LAUNCH_DIR)


STUBS = {  # module -> names in it
    "launch": ["LaunchDescription"],
    "launch.actions": ["DeclareLaunchArgument", "OpaqueFunction", "EmitEvent", "RegisterEventHandler",
                       "IncludeLaunchDescription"],
    "launch.events": ["matches_action"],
    "launch.launch_description_sources": ["PythonLaunchDescriptionSource"],
    "launch.substitutions": [],
    "launch_ros": [],
    "launch_ros.actions": ["Node", "LifecycleNode"],
    "launch_ros.event_handlers": ["OnStateTransition"],
    "launch_ros.events": [],
    "launch_ros.events.lifecycle": ["ChangeState"],
    "ament_index_python": [],
    "ament_index_python.packages": [],
}


def _stub_launch(monkeypatch, share: Path) -> None:
    """Minimal stand-ins for launch / launch_ros / ament_index (not installable here) that record the calls."""
    mods = {name: types.ModuleType(name) for name in STUBS}
    for module, names in STUBS.items():
        for name in names:
            setattr(mods[module], name, _recorder(name))
    mods["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration
    mods["launch.substitutions"].ThisLaunchFileDir = _ThisLaunchFileDir
    mods["ament_index_python.packages"].get_package_share_directory = lambda pkg: str(share)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)


def _performed(value, context) -> str:
    return value.perform(context) if hasattr(value, "perform") else value


def _declared(ld) -> dict:
    (entities,) = ld.args
    return {e.args[0]: e for e in entities if type(e).__name__ == "DeclareLaunchArgument"}


def _run(path: Path, args: dict[str, str]) -> tuple[dict, list]:
    """generate_launch_description of the file at ``path``; its declared arguments and what it launches with
    ``args``: OpaqueFunctions' entities in place of the functions, an IncludeLaunchDescription followed."""
    spec = importlib.util.spec_from_file_location(path.name.replace(".", "_"), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    declared = _declared(ld)
    context = {name: e.kwargs["default_value"] for name, e in declared.items()} | args
    entities = []
    for e in ld.args[0]:
        if type(e).__name__ == "OpaqueFunction":
            entities += e.kwargs["function"](context)
        elif type(e).__name__ == "IncludeLaunchDescription":
            (source,) = e.args
            (parts,) = source.args
            included = Path("".join(_performed(p, context) for p in parts))
            entities += _run(included, {k: _performed(v, context) for k, v in e.kwargs["launch_arguments"]})[1]
        elif type(e).__name__ != "DeclareLaunchArgument":
            entities.append(e)
    return declared, entities


def _launch(monkeypatch, file: str, **args: str) -> tuple[dict, list]:
    _stub_launch(monkeypatch, PKG_DIR)
    return _run(LAUNCH_DIR / file, args)


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
    assert set(declared) >= {"camera", "namespace", "params_file", "use_sim_time", "managed", "autostart",
                             "input_reliability", "image", "depth", "camera_info"}
    assert type(node).__name__ == "Node"
    kw = node.kwargs
    assert kw["executable"] == "instance_seg_node" and kw["package"] == "instance_seg_ros"
    assert kw["name"] == "instance_seg_node" and kw["namespace"] == ""
    assert dict(kw["remappings"]) == {"image": image, "image/compressed": image + "/compressed", "depth": depth,
                                      "camera_info": info}
    params_file, overrides = kw["parameters"]
    assert Path(params_file) == CONFIG_DIR / params and Path(params_file).exists()
    assert overrides == {"use_sim_time": False, "managed": False}  # no input_reliability: the file decides


def test_instance_seg_launch_declares_choices(monkeypatch):
    """launch refuses a value outside an argument's choices (camera:=kinect) before any OpaqueFunction runs."""
    declared, _ = _launch(monkeypatch, "instance_seg.launch.py")
    assert declared["camera"].kwargs["choices"] == ["realsense", "gazebo", "generic"]
    assert declared["camera"].kwargs["default_value"] == "realsense"
    assert declared["input_reliability"].kwargs["choices"] == ["", "best_effort", "reliable"]


def test_instance_seg_launch_overrides(monkeypatch, tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("/**:\n  ros__parameters: {}\n")
    _, (node,) = _launch(monkeypatch, "instance_seg.launch.py", camera="generic", image="/left/rgb",
                         depth="/left/depth", camera_info="/left/rgb/camera_info", params_file=f" {params} ",
                         use_sim_time="true", namespace="left", input_reliability="reliable")
    kw = node.kwargs
    assert dict(kw["remappings"]) == {"image": "/left/rgb", "image/compressed": "/left/rgb/compressed",
                                      "depth": "/left/depth", "camera_info": "/left/rgb/camera_info"}
    assert kw["parameters"] == [str(params), {"use_sim_time": True, "managed": False,
                                              "qos.input_reliability": "reliable"}]
    assert kw["namespace"] == "left"
    _, (node,) = _launch(monkeypatch, "instance_seg.launch.py", camera="realsense", image="/cam/rgb")
    remap = dict(node.kwargs["remappings"])  # an override replaces one topic, the preset keeps the others
    assert remap["image"] == "/cam/rgb" and remap["depth"] == "/camera/camera/aligned_depth_to_color/image_raw"


@pytest.mark.parametrize("name", ["missing.yaml", "config"])  # no such file; a directory
def test_instance_seg_launch_refuses_missing_params_file(monkeypatch, tmp_path, name):
    """launch_ros itself would only log a missing parameters file and start the node on its defaults."""
    (tmp_path / "config").mkdir()
    path = str(tmp_path / name)
    with pytest.raises(ValueError, match=re.escape(f"params_file:={path} does not exist (or is not a file)")):
        _launch(monkeypatch, "instance_seg.launch.py", camera="gazebo", params_file=path)


@pytest.mark.parametrize("managed", ["true", "True", "1"])
def test_instance_seg_launch_managed(monkeypatch, managed):
    _, (node,) = _launch(monkeypatch, "instance_seg.launch.py", managed=managed)
    assert type(node).__name__ == "LifecycleNode"  # waits in unconfigured: no transition is emitted
    kw = node.kwargs
    assert kw["executable"] == "instance_seg_node" and kw["name"] == "instance_seg_node"
    assert kw["parameters"][1] == {"use_sim_time": False, "managed": True}
    _, (node,) = _launch(monkeypatch, "instance_seg.launch.py", autostart="true")  # autostart needs managed
    assert type(node).__name__ == "Node" and node.kwargs["parameters"][1]["managed"] is False


def test_instance_seg_launch_managed_autostart(monkeypatch):
    from lifecycle_msgs.msg import Transition

    _, entities = _launch(monkeypatch, "instance_seg.launch.py", managed="true", autostart="true")
    assert [type(e).__name__ for e in entities] == ["RegisterEventHandler", "LifecycleNode", "EmitEvent"]
    handler, node, configure = entities

    def change_state(emit):
        event = emit.kwargs["event"]
        assert type(event).__name__ == "ChangeState"
        matcher = event.kwargs["lifecycle_node_matcher"]
        assert type(matcher).__name__ == "matches_action" and matcher.args == (node,)
        return event.kwargs["transition_id"]

    assert change_state(configure) == Transition.TRANSITION_CONFIGURE  # as soon as the node is up
    (on_transition,) = handler.args
    assert type(on_transition).__name__ == "OnStateTransition"
    assert on_transition.kwargs["target_lifecycle_node"] is node and on_transition.kwargs["goal_state"] == "inactive"
    (activate,) = on_transition.kwargs["entities"]  # then activate, once configured
    assert type(activate).__name__ == "EmitEvent" and change_state(activate) == Transition.TRANSITION_ACTIVATE


@pytest.mark.parametrize("grasps", ["true", "True", "1"])
def test_instance_seg_launch_grasps(monkeypatch, grasps):
    """grasps:=true adds grasp_node in the node's namespace, reading its instances and instance_labels there (no
    remapping) and the camera's depth and camera_info (the preset's, or the overrides)."""
    declared, entities = _launch(monkeypatch, "instance_seg.launch.py", camera="realsense", grasps=grasps,
                                 namespace="left", use_sim_time="true", depth="/cam/depth")
    assert declared["grasps"].kwargs["default_value"] == "false"
    assert [type(e).__name__ for e in entities] == ["Node", "Node"]
    seg, grasp = (e.kwargs for e in entities)
    assert seg["executable"] == "instance_seg_node"
    assert grasp["package"] == "instance_seg_ros" and grasp["executable"] == "grasp_node"
    assert grasp["name"] == "grasp_node" and grasp["namespace"] == seg["namespace"] == "left"
    remap = dict(grasp["remappings"])
    assert remap == {"depth": "/cam/depth", "camera_info": "/camera/camera/color/camera_info"}
    assert remap.items() <= dict(seg["remappings"]).items()  # the topics instance_seg_node gets
    assert grasp["parameters"] == [{"use_sim_time": True}]
    # the grasp node's own topic names are the ones instance_seg_node publishes (ros/outputs.py)
    from instance_seg_ros.ros.grasp_node import TOPICS
    from instance_seg_ros.ros.outputs import OUTPUTS

    published = {topic for _key, _type, topic in OUTPUTS}
    assert {TOPICS["instances"][1], TOPICS["labels"][1]} <= published
    assert {TOPICS["depth"][1], TOPICS["camera_info"][1]} == {"depth", "camera_info"}  # the launch remaps these


def test_instance_seg_launch_grasps_follows_other_arguments(monkeypatch):
    _, entities = _launch(monkeypatch, "instance_seg.launch.py", grasps="true", managed="true", autostart="true",
                          input_reliability="reliable")
    assert [type(e).__name__ for e in entities] == ["RegisterEventHandler", "LifecycleNode", "EmitEvent", "Node"]
    grasp = entities[-1].kwargs
    assert grasp["executable"] == "grasp_node"
    assert grasp["parameters"] == [{"use_sim_time": False, "qos.input_reliability": "reliable"}]
    for value in ("false", "0", ""):
        _, entities = _launch(monkeypatch, "instance_seg.launch.py", grasps=value)
        assert [e.kwargs["executable"] for e in entities] == ["instance_seg_node"]


def test_sim_launch(monkeypatch):
    declared, nodes = _launch(monkeypatch, "sim.launch.py")
    assert declared["use_sim_time"].kwargs["default_value"] == "true"
    assert declared["namespace"].kwargs["default_value"] == "sim"
    assert [type(n).__name__ for n in nodes] == ["Node", "Node"]
    by_exe = {n.kwargs["executable"]: n.kwargs for n in nodes}
    assert set(by_exe) == {"sim_camera_node", "instance_seg_node"}
    camera, seg = by_exe["sim_camera_node"], by_exe["instance_seg_node"]
    assert camera["namespace"] == seg["namespace"] == "sim"
    assert camera["parameters"] == [{"use_sim_time": True, "qos.reliability": "reliable"}]
    params_file, overrides = seg["parameters"]  # camera:=generic: default.yaml, the camera's own topic names
    assert Path(params_file) == CONFIG_DIR / "default.yaml"
    assert overrides == {"use_sim_time": True, "managed": False, "qos.input_reliability": "reliable"}
    assert dict(seg["remappings"]) == {"image": "image", "image/compressed": "image/compressed", "depth": "depth",
                                       "camera_info": "camera_info"}


def test_sim_launch_passes_arguments_on(monkeypatch, tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("/**:\n  ros__parameters: {}\n")
    _, entities = _launch(monkeypatch, "sim.launch.py", namespace="sim2", params_file=str(params),
                          use_sim_time="false", managed="true", autostart="true")
    assert [type(e).__name__ for e in entities] == ["Node", "RegisterEventHandler", "LifecycleNode", "EmitEvent"]
    camera, _, seg, _ = entities
    assert camera.kwargs["namespace"] == seg.kwargs["namespace"] == "sim2"
    assert camera.kwargs["parameters"][0]["use_sim_time"] is False
    assert seg.kwargs["parameters"] == [str(params), {"use_sim_time": False, "managed": True,
                                                      "qos.input_reliability": "reliable"}]
    with pytest.raises(ValueError, match="does not exist"):
        _launch(monkeypatch, "sim.launch.py", params_file=str(tmp_path / "missing.yaml"))


def test_sim_launch_grasps(monkeypatch):
    declared, entities = _launch(monkeypatch, "sim.launch.py", grasps="true")
    assert declared["grasps"].kwargs["default_value"] == "false"
    by_exe = {e.kwargs["executable"]: e.kwargs for e in entities}
    assert set(by_exe) == {"sim_camera_node", "instance_seg_node", "grasp_node"}
    grasp = by_exe["grasp_node"]
    assert grasp["namespace"] == by_exe["instance_seg_node"]["namespace"] == "sim"
    assert grasp["parameters"] == [{"use_sim_time": True, "qos.input_reliability": "reliable"}]


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
