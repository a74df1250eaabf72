"""instance_seg_ros: amodal instance segmentation of RGB-D frames for robotic manipulation.

``core`` is pure Python (numpy/torch, no ROS); ``ros`` is the thin ROS 2 adapter; ``sim`` holds the
PyBullet scenes and simulated camera; ``tools`` the ``isr`` command line.
"""

__version__ = "0.1.0"
