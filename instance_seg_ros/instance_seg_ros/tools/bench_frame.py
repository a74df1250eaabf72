"""The fixed input of ``isr bench``: a simulated tabletop frame (:func:`make_frame`) and the messages a camera
driver sends for it (:func:`frame_messages`: ``rgb8`` color, ``16UC1`` depth in millimetres, CameraInfo)."""

from __future__ import annotations

from typing import Any

__all__ = ["FRAME_ID", "frame_messages", "make_frame"]

FRAME_ID = "camera_color_optical_frame"


def make_frame(width: int, height: int, instances: int, seed: int = 0):
    """The fixed synthetic frame: a random pile of ``instances`` objects (at most 40; some may be hidden or fall
    off) seen from a random viewpoint, rendered without noise, with ground truth (amodal masks included).
    Returns a ``sim.frame.Frame``."""
    from ..sim.camera import d435_intrinsics
    from ..sim.randomization import SceneConfig
    from ..sim.scene import Scene

    n = max(1, min(int(instances), 40))
    cfg = SceneConfig(min_objects=n, max_objects=n, supports=("table",))
    with Scene.random(seed, cfg) as scene:
        cam = scene.random_camera(seed=0, intrinsics=d435_intrinsics(width, height))
        return scene.render(cam, amodal=True)


def frame_messages(frame: Any, stamp_ns: int = 1_700_000_000_000_000_000) -> tuple[Any, Any, Any, Any]:
    """``(image rgb8, depth 16UC1 mm, camera_info, header)`` messages of a frame, as a driver publishes them."""
    from ..core.images import encode_depth_16uc1
    from ..ros.conversions import camera_info_msg, header, image_msg

    hdr = header(FRAME_ID, stamp_ns)
    return (image_msg(frame.color, "rgb8", hdr), image_msg(encode_depth_16uc1(frame.depth), "16UC1", hdr),
            camera_info_msg(frame.intrinsics, hdr), hdr)
