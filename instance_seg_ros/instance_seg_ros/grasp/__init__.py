"""Grasps for our instances: Contact-GraspNet (an optional extra, ``make setup-grasp``) behind a pure adapter.

No ROS here. Importing this package needs only torch and numpy; the network's packages (cgn-pytorch,
torch-geometric) are imported when a :class:`ContactGraspNet` is built, and their absence raises
:class:`GraspExtraMissing` (an ImportError) that names ``make setup-grasp``. :mod:`.point_ops` supplies the three
torch-cluster operations the network uses, so the compiled torch-cluster package is not needed.
"""

from .planner import GRIPPER_DEPTH, MAX_WIDTH, ContactGraspNet, Grasp, GraspError, GraspExtraMissing

__all__ = ["GRIPPER_DEPTH", "MAX_WIDTH", "ContactGraspNet", "Grasp", "GraspError", "GraspExtraMissing"]
