"""The node's result topics and what each processed frame sends them.

``instances`` (instance_seg_msgs/InstanceArray) always; ``instance_labels`` (mono16), ``instance_markers``
(visualization_msgs/MarkerArray) and ``debug_image`` (rgb8 overlay) as their ``publish.*`` mode says: ``always``,
``auto`` (only while someone subscribes: the conversion is not paid for nobody) or ``never``. All with the output QoS
(:func:`~.qos.output_qos`); the header of every message is the color image's.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from rclpy.event_handler import PublisherEventCallbacks
from sensor_msgs.msg import Image
from visualization_msgs.msg import MarkerArray

from instance_seg_msgs.msg import InstanceArray

from ..core.types import FrameResult
from ..core.visualize import draw_overlay
from .conversions import image_msg, instance_array_msg, label_image_msg
from .markers import markers_msg
from .params import NodeSettings
from .qos import output_qos

__all__ = ["OUTPUTS", "create_publishers", "publish_result", "wanted"]

#: (key, message type, topic) of each output
OUTPUTS = (("instances", InstanceArray, "instances"), ("labels", Image, "instance_labels"),
           ("markers", MarkerArray, "instance_markers"), ("debug_image", Image, "debug_image"))


def create_publishers(node: Any, settings: NodeSettings, on_incompatible_qos: Callable[[str, str, Any], None]
                      ) -> dict[str, Any]:
    """One publisher per :data:`OUTPUTS` entry on ``node``; ``on_incompatible_qos(topic, "subscriber", event)``
    hears of subscribers whose QoS does not match."""
    qos = output_qos(settings.output_reliability, settings.output_depth)
    pubs = {}
    for key, mtype, topic in OUTPUTS:
        events = PublisherEventCallbacks(incompatible_qos=partial(on_incompatible_qos, topic, "subscriber"))
        pubs[key] = node.create_publisher(mtype, topic, qos, event_callbacks=events)
    return pubs


def wanted(mode: str, pub: Any) -> bool:
    """Whether an optional output is built: ``always``, or ``auto`` while it has subscribers."""
    return mode == "always" or (mode == "auto" and pub.get_subscription_count() > 0)


def publish_result(pubs: dict[str, Any], settings: NodeSettings, result: FrameResult, color: np.ndarray,
                   hdr: Any) -> None:
    """Send one frame's result to the outputs (nothing when there are no publishers)."""
    if not pubs:
        return
    pubs["instances"].publish(instance_array_msg(result, hdr))
    if wanted(settings.publish_labels, pubs["labels"]):
        pubs["labels"].publish(label_image_msg(result.label_image, hdr))
    if wanted(settings.publish_markers, pubs["markers"]):
        pubs["markers"].publish(markers_msg(result, hdr))
    if wanted(settings.publish_debug_image, pubs["debug_image"]):
        pubs["debug_image"].publish(image_msg(draw_overlay(color, result), "rgb8", hdr))
