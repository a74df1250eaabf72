"""QoS profiles of the node's inputs and outputs, chosen by parameters.

Inputs default to sensor-data QoS (best effort, keep last, shallow): a best-effort subscriber matches
both best-effort and reliable camera publishers, and never makes a driver block or buffer for us.
Outputs default to reliable so planners and recorders get every result.

Also the advice the node gives when messages do not flow: :func:`transport_warning` (DDS settings that lose
large best-effort images), :data:`LARGE_DATA_HINT` (a topic with publishers that delivers nothing) and
:func:`incompatible_qos_hint`.
"""

from __future__ import annotations

from collections.abc import Mapping

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_policy_name_from_kind

__all__ = [
    "LARGE_DATA_HINT",
    "RELIABILITY",
    "describe",
    "incompatible_qos_hint",
    "incompatible_qos_warning",
    "input_qos",
    "output_qos",
    "policy_name",
    "transport_warning",
]

RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


def _profile(reliability: str, depth: int) -> QoSProfile:
    if reliability not in RELIABILITY:
        raise ValueError(f"QoS reliability must be one of {', '.join(RELIABILITY)}, got {reliability!r}.")
    if int(depth) < 1:
        raise ValueError(f"QoS depth must be at least 1, got {depth}.")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(depth),
        reliability=RELIABILITY[reliability],
        durability=DurabilityPolicy.VOLATILE,
    )


def input_qos(reliability: str = "best_effort", depth: int = 5) -> QoSProfile:
    """Subscription QoS of ``image``, ``depth`` and ``camera_info`` (sensor data by default)."""
    return _profile(reliability, depth)


def output_qos(reliability: str = "reliable", depth: int = 5) -> QoSProfile:
    """Publisher QoS of ``instances``, ``instance_labels``, ``instance_markers`` and ``debug_image``."""
    return _profile(reliability, depth)


def describe(profile: QoSProfile) -> str:
    """``"best_effort, keep_last(5), volatile"``"""
    return (f"{profile.reliability.name.lower()}, {profile.history.name.lower()}({profile.depth}), "
            f"{profile.durability.name.lower()}")


def policy_name(kind) -> str:
    """Human name of a QoS policy kind reported by an incompatible-QoS event."""
    try:
        return qos_policy_name_from_kind(kind)
    except Exception:  # unknown kinds are reported by number
        return str(kind)


def incompatible_qos_hint(policy: str, other: str) -> str:
    """What to change when a ``other`` (``publisher`` / ``subscriber``) has QoS incompatible with ours in ``policy``."""
    if "RELIABILITY" in policy.upper():
        return ("Set qos.input_reliability:=best_effort (matches every publisher)." if other == "publisher" else
                "Set qos.output_reliability to what the subscriber requests.")
    if "DURABILITY" in policy.upper() and other == "subscriber":
        return "Our outputs are volatile; subscribe with volatile durability."
    return f"Make the {other}'s {policy} policy compatible with ours."


def incompatible_qos_warning(topic: str, other: str, policy: str) -> str:
    """The warning when a ``other`` (``publisher`` / ``subscriber``) on ``topic`` has QoS incompatible with ours."""
    return (f"A {other} on '{topic}' has incompatible QoS (policy {policy}); no messages flow between us. "
            f"{incompatible_qos_hint(policy, other)}")


LARGE_DATA_HINT = (
    "If the publisher runs in another process and sends large messages (e.g. 640x480 images), export "
    "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA in every process (the camera driver and this node) before starting "
    "them: without it Fast DDS silently drops large samples for best-effort subscribers (or set "
    "qos.input_reliability:=reliable for a reliable publisher). LARGE_DATA has no effect while "
    "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (use SUBNET or SYSTEM_DEFAULT). Also check that the publisher's QoS is "
    "compatible."
)


def transport_warning(env: Mapping[str, str], input_reliability: str) -> str:
    """A warning when this process's DDS settings will lose large best-effort images from other processes ('' if
    none). Measured with Fast DDS here: 640x480 rgb8 at best effort across processes arrives 0/20 times with the
    default transports, and also with LARGE_DATA when ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (which replaces the
    builtin transports); 20/20 with LARGE_DATA and SUBNET or SYSTEM_DEFAULT, or with reliable QoS."""
    if input_reliability != "best_effort" or env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return ""
    transports = env.get("FASTDDS_BUILTIN_TRANSPORTS", "DEFAULT").upper()
    if not transports.startswith("LARGE_DATA"):
        return (f"FASTDDS_BUILTIN_TRANSPORTS is {transports}: large images (e.g. 640x480) from other processes will be "
                "lost by the best-effort image subscriptions. Export FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA in every "
                "process, or set qos.input_reliability:=reliable.")
    if env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").upper() == "LOCALHOST":
        return ("ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST overrides FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA: large images "
                "(e.g. 640x480) from other processes will be lost by the best-effort image subscriptions. Use "
                "ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET (or SYSTEM_DEFAULT), or set qos.input_reliability:=reliable.")
    return ""
