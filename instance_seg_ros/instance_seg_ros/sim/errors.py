"""The one error of the simulator: a scene, object, camera or noise description is invalid."""

from __future__ import annotations

__all__ = ["SceneError"]


class SceneError(ValueError):
    """A scene, object or camera description is invalid; the message says what to change."""
