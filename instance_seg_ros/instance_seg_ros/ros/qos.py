"""QoS profiles of the node's inputs and outputs, chosen by parameters.

Inputs default to sensor-data QoS (best effort, keep last, shallow): a best-effort subscriber matches
both best-effort and reliable camera publishers, and never makes a driver block or buffer for us.
Outputs default to reliable so planners and recorders get every result.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_policy_name_from_kind

__all__ = ["RELIABILITY", "describe", "input_qos", "output_qos", "policy_name"]

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
