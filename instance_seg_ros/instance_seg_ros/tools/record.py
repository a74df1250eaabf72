"""``isr record``: write a rosbag2 of simulated RGB-D frames with ground truth (no ROS needed).

Topics (one message each per frame, all with the frame's stamp and frame_id ``camera_color_optical_frame``):

- ``/camera/color/image_raw`` (sensor_msgs/Image rgb8), or with ``--compressed``
  ``/camera/color/image_raw/compressed`` (sensor_msgs/CompressedImage, jpeg)
- ``/camera/aligned_depth_to_color/image_raw`` (sensor_msgs/Image 16UC1 millimetres or 32FC1 meters, NaN invalid)
- ``/camera/color/camera_info`` (sensor_msgs/CameraInfo)
- ``/ground_truth`` (instance_seg_msgs/InstanceArray: the scene's ground truth, see ``Frame.to_frame_result``), each
  object's ``track_id`` = :func:`~instance_seg_ros.sim.randomization.scene_track_id`: the same for an object in
  every frame of its scene, never taken by an object of another scene (the identities ``isr eval`` scores tracking
  against)

The frames are spread over ``--scenes`` random scenes (the scene changes every ``frames / scenes``
frames); within a scene the camera orbits the pile slowly (1.5 degrees per frame, with a slight
bob), so consecutive frames differ a little, as from a moving robot. Same arguments -> same bag content.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.types import Intrinsics
from ..sim.randomization import scene_track_id

__all__ = ["COLOR_TOPIC", "COMPRESSED_TOPIC", "DEPTH_TOPIC", "GT_TOPIC", "INFO_TOPIC", "RecordError",
           "add_arguments", "record", "run"]

COLOR_TOPIC = "/camera/color/image_raw"
COMPRESSED_TOPIC = "/camera/color/image_raw/compressed"
DEPTH_TOPIC = "/camera/aligned_depth_to_color/image_raw"
INFO_TOPIC = "/camera/color/camera_info"
GT_TOPIC = "/ground_truth"
DEFAULT_START = 1_700_000_000.0  # seconds since the epoch of the first frame (fixed: reproducible bags)


class RecordError(ValueError):
    """Bad ``isr record`` arguments; the message says what to change."""


def record(
    out: str | Path,
    frames: int,
    *,
    storage: str = "mcap",
    compressed: bool = False,
    depth_encoding: str = "16UC1",
    rate: float = 10.0,
    seed: int = 0,
    scenes: int = 1,
    width: int = 640,
    height: int = 480,
    min_objects: int = 3,
    max_objects: int = 12,
    noise: bool = False,
    start_time: float = DEFAULT_START,
    bag_version: int = 9,
    progress: bool = False,
) -> dict[str, Any]:
    """Render ``frames`` frames and write them to a new rosbag2 directory ``out``.

    Returns:
        ``{"path", "frames", "scenes", "topics": {topic: count}, "seconds"}``.

    Raises:
        RecordError: bad arguments, or ``out`` already exists.
    """
    _check_arguments(frames, scenes, storage, depth_encoding, rate, bag_version, width, height)
    out = Path(out)
    if out.exists():
        raise RecordError(f"{out} already exists; remove it or choose another --out.")

    from rosbags.rosbag2 import StoragePlugin, Writer
    from tqdm import tqdm

    from ..sim.camera import d435_intrinsics
    from ..sim.randomization import SceneConfig
    from . import bagio

    ts = bagio.typestore()
    k = d435_intrinsics(width, height)
    color_topic = COMPRESSED_TOPIC if compressed else COLOR_TOPIC
    color_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    counts = {color_topic: 0, DEPTH_TOPIC: 0, INFO_TOPIC: 0, GT_TOPIC: 0}
    t0 = time.perf_counter()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(out, version=bag_version, storage_plugin=plugin)
    writer.set_custom_data("isr.generator", "isr record")
    writer.set_custom_data("isr.seed", str(seed))
    bar = tqdm(total=frames, desc="isr record", unit="frame", disable=not progress, file=sys.stderr)
    cfg = SceneConfig(min_objects=min_objects, max_objects=max_objects)
    i = 0
    with writer:
        conns = {
            color_topic: writer.add_connection(color_topic, color_type, typestore=ts),
            DEPTH_TOPIC: writer.add_connection(DEPTH_TOPIC, "sensor_msgs/msg/Image", typestore=ts),
            INFO_TOPIC: writer.add_connection(INFO_TOPIC, "sensor_msgs/msg/CameraInfo", typestore=ts),
            GT_TOPIC: writer.add_connection(GT_TOPIC, bagio.INSTANCE_ARRAY, typestore=ts),
        }
        for scene_index, frame in _render(frames, scenes, seed, cfg, k, noise):
            stamp = int(round(start_time * 1e9)) + int(round(i * 1e9 / rate))
            for topic, msg in _messages(frame, scene_index, k, stamp, color_topic, depth_encoding):
                writer.write(conns[topic], stamp, ts.serialize_cdr(msg, msg.__msgtype__))
                counts[topic] += 1
            i += 1
            bar.update(1)
    bar.close()
    return {"path": str(out), "frames": i, "scenes": scenes, "topics": counts, "seconds": time.perf_counter() - t0}


def _check_arguments(frames: int, scenes: int, storage: str, depth_encoding: str, rate: float, bag_version: int,
                     width: int, height: int) -> None:
    if frames < 1:
        raise RecordError(f"--frames must be >= 1, got {frames}.")
    if not 1 <= scenes <= frames:
        raise RecordError(f"--scenes must be within 1..frames ({frames}), got {scenes}.")
    if storage not in ("mcap", "sqlite3"):
        raise RecordError(f"--storage must be mcap or sqlite3, got {storage!r}.")
    if depth_encoding not in ("16UC1", "32FC1"):
        raise RecordError(f"--depth-encoding must be 16UC1 or 32FC1, got {depth_encoding!r}.")
    if not (math.isfinite(rate) and rate > 0):
        raise RecordError(f"--rate must be a positive number of Hz, got {rate!r}.")
    if bag_version not in (8, 9):
        raise RecordError(f"--bag-version must be 8 or 9, got {bag_version}.")
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise RecordError(f"--width/--height must be within 16..4096, got {width}x{height}.")


def _render(frames: int, scenes: int, seed: int, cfg: Any, k: Intrinsics, noise: bool) -> Iterator[tuple[int, Any]]:
    """``(scene index, frame)`` of the ``frames`` frames, spread over ``scenes`` random scenes (scene ``s`` from seed
    ``seed * 100003 + s``); within a scene the camera (intrinsics ``k``) orbits the pile 1.5 degrees per frame, with
    a slight bob."""
    import numpy as np

    from ..sim.camera import Camera
    from ..sim.noise import SensorNoise
    from ..sim.scene import Scene

    sensor = SensorNoise() if noise else None
    per_scene = math.ceil(frames / scenes)
    for s in range(scenes):
        n_here = min(per_scene, frames - s * per_scene)
        if n_here <= 0:
            break
        sseed = int(seed) * 100003 + s
        with Scene.random(sseed, cfg) as scene:
            rng = np.random.default_rng([sseed, 11])
            target = scene.objects_center()
            dist = float(rng.uniform(*cfg.camera_distance))
            elev = float(rng.uniform(*cfg.camera_elevation_deg))
            azim = float(rng.uniform(0, 360))
            for j in range(n_here):
                cam = Camera.orbit(target, distance=dist + 0.02 * math.sin(0.3 * j),
                                   elevation_deg=elev + 2.0 * math.sin(0.2 * j), azimuth_deg=azim + 1.5 * j,
                                   intrinsics=k, near=cfg.near, far=cfg.far)
                yield s, scene.render(cam, noise=sensor, seed=j)


def _messages(frame: Any, scene_index: int, k: Intrinsics, stamp: int, color_topic: str,
              depth_encoding: str) -> list[tuple[str, Any]]:
    """``(topic, message)`` of one frame of scene ``scene_index``: color (Image rgb8 or CompressedImage jpeg), depth,
    camera_info, ground truth (track ids by :func:`~instance_seg_ros.sim.randomization.scene_track_id`)."""
    from ..core.images import encode_depth_16uc1
    from . import bagio

    if color_topic == COMPRESSED_TOPIC:
        cmsg = bagio.compressed_image_msg(frame.color, "jpeg", stamp_ns=stamp)
    else:
        cmsg = bagio.image_msg(frame.color, "rgb8", stamp_ns=stamp)
    if depth_encoding == "16UC1":
        dmsg = bagio.image_msg(encode_depth_16uc1(frame.depth), "16UC1", stamp_ns=stamp)
    else:
        dmsg = bagio.image_msg(frame.depth, "32FC1", stamp_ns=stamp)
    gt = frame.to_frame_result()
    for inst in gt.instances:
        inst.track_id = scene_track_id(scene_index, inst.track_id)
    return [(color_topic, cmsg), (DEPTH_TOPIC, dmsg), (INFO_TOPIC, bagio.camera_info_msg(k, stamp_ns=stamp)),
            (GT_TOPIC, bagio.instance_array_msg(gt, stamp_ns=stamp))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="bag directory to create (must not exist)")
    parser.add_argument("--frames", type=int, required=True, help="number of frames")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="storage plugin (mcap)")
    parser.add_argument("--compressed", action="store_true", help="color as CompressedImage (jpeg)")
    parser.add_argument("--depth-encoding", choices=("16UC1", "32FC1"), default="16UC1",
                        help="16UC1 millimetres (0 invalid, like the RealSense driver) or 32FC1 meters (NaN invalid)")
    parser.add_argument("--rate", type=float, default=10.0, help="frame rate of the stamps, Hz (10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (scene s uses seed*100003+s)")
    parser.add_argument("--scenes", type=int, default=1, help="scenes the frames are spread over (1)")
    parser.add_argument("--width", type=int, default=640, help="image width (640)")
    parser.add_argument("--height", type=int, default=480, help="image height (480)")
    parser.add_argument("--min-objects", type=int, default=3, help="objects per scene, at least (3)")
    parser.add_argument("--max-objects", type=int, default=12, help="objects per scene, at most (12)")
    parser.add_argument("--noise", action="store_true", help="D435-like depth noise")
    parser.add_argument("--start-time", type=float, default=DEFAULT_START,
                        help=f"stamp of the first frame, seconds since the epoch ({DEFAULT_START:.0f})")
    parser.add_argument("--bag-version", type=int, choices=(8, 9), default=9, help="rosbag2 metadata version (9)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        summary = record(
            args.out, args.frames, storage=args.storage, compressed=args.compressed,
            depth_encoding=args.depth_encoding, rate=args.rate, seed=args.seed, scenes=args.scenes,
            width=args.width, height=args.height, min_objects=args.min_objects, max_objects=args.max_objects,
            noise=args.noise, start_time=args.start_time, bag_version=args.bag_version, progress=not args.quiet,
        )
    except ValueError as exc:  # RecordError, SceneError
        print(f"isr record: error: {exc}", file=sys.stderr)
        return 2
    topics = ", ".join(f"{t} x{n}" for t, n in summary["topics"].items())
    print(f"isr record: {summary['frames']} frames from {summary['scenes']} scene(s) in {summary['seconds']:.1f} s "
          f"-> {summary['path']} ({topics})")
    return 0
