from glob import glob

from setuptools import find_packages, setup

package_name = "instance_seg_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={package_name: ["weights/*.pt", "weights/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="instance_seg_ros maintainers",
    maintainer_email="maintainers@instance-seg-ros.dev",
    description="Amodal instance segmentation of RGB-D frames for robotic manipulation (ROS 2).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "instance_seg_node = instance_seg_ros.ros.node:main",
            "sim_camera_node = instance_seg_ros.sim.camera_node:main",
            "grasp_node = instance_seg_ros.ros.grasp_node:main",
            "isr = instance_seg_ros.tools.cli:main",
        ],
    },
)
