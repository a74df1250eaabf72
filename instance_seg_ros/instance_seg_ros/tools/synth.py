"""``isr synth``: render random tabletop scenes into a COCO-style amodal dataset.

Layout of ``--out DIR``::

    DIR/color/000000.png        RGB, 8 bit
    DIR/depth/000000.png        depth, 16 bit millimetres, 0 = invalid
    DIR/annotations.json        COCO: images (+ intrinsics, camera pose, scene seed), one category
                                "object" (id 1), annotations with visible `segmentation` and
                                `amodal_segmentation` (COCO RLE, counts as str), bbox, amodal_bbox,
                                area, amodal_area, occlusion, pose, extent, centroid, object_name
    DIR/fragments/scene_000000.json   one per finished scene (what makes reruns resumable)
    DIR/synth_params.json       the generation parameters (a rerun must use the same ones)

Scene ``i`` uses seed ``seed * 100003 + i`` and its images are ``i * views .. i * views + views - 1``,
so the output does not depend on ``--workers`` and a rerun only renders the scenes whose fragment
is missing (every file is written to a temporary name and renamed; the fragment comes last).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..sim.randomization import SCENE_SEED_STRIDE as SEED_STRIDE
from ..sim.randomization import scene_seed

__all__ = ["SynthError", "SynthParams", "add_arguments", "render_scene", "run", "scene_seed", "synthesize"]

#: ``plain``: flat-colored objects, D435 intrinsics, the default scene ranges. ``sim2real`` (the training recipe,
#: see MODEL.md): textured objects and surfaces, flat clutter, random lighting and camera effects
#: (:mod:`~instance_seg_ros.sim.appearance`), product-like object sizes and piles (``randomization.SIM2REAL``), a
#: random sensor per view (``randomization.SENSORS``: focal length, aspect ratio, depth noise of its kind).
RECIPES = ("plain", "sim2real")
DEPTH_SCALE = 0.001  # meters per unit of the 16-bit depth PNGs


class SynthError(ValueError):
    """Bad ``isr synth`` arguments or an output directory made with other parameters."""


@dataclass(frozen=True)
class SynthParams:
    """Everything that determines the rendered data (stored in ``synth_params.json``)."""

    seed: int = 0
    width: int = 640
    height: int = 480
    min_objects: int = 3
    max_objects: int = 20
    views_per_scene: int = 1
    noise: bool = False
    supports: tuple[str, ...] = ("table", "tray")
    min_visible_pixels: int = 20
    recipe: str = "plain"

    def __post_init__(self) -> None:
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise SynthError(f"--width/--height must be within 16..4096, got {self.width}x{self.height}.")
        if not 1 <= self.min_objects <= self.max_objects <= 200:
            raise SynthError(f"Need 1 <= --min-objects <= --max-objects <= 200, got {self.min_objects} and "
                             f"{self.max_objects}.")
        if not 1 <= self.views_per_scene <= 1000:
            raise SynthError(f"--views-per-scene must be within 1..1000, got {self.views_per_scene}.")
        if self.seed < 0:
            raise SynthError(f"--seed must be >= 0, got {self.seed}.")
        if self.recipe not in RECIPES:
            raise SynthError(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}.")
        if self.min_visible_pixels < 1:
            raise SynthError(f"min_visible_pixels must be >= 1, got {self.min_visible_pixels}.")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["supports"] = list(self.supports)
        return d


# ---------------------------------------------------------------------------------------- one scene
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    _atomic_write_bytes(path, json.dumps(obj, indent=indent, separators=None if indent else (",", ":")).encode())


def _png(arr) -> bytes:
    import cv2

    img = arr[..., ::-1] if arr.ndim == 3 else arr  # cv2 writes BGR
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError("PNG encoding failed.")
    return buf.tobytes()


def _r(values, nd: int = 6) -> list[float]:
    return [round(float(v), nd) for v in values]


def _fragment_path(out: Path, index: int) -> Path:
    return out / "fragments" / f"scene_{index:06d}.json"


def render_scene(out: str | Path, index: int, params: SynthParams) -> dict[str, Any]:
    """Render scene ``index`` into ``out`` (images + fragment) and return its fragment.

    The fragment holds this scene's COCO ``images`` and ``annotations`` (without annotation ids, which
    are given when the fragments are assembled).
    """
    import numpy as np

    from ..core.coco_eval import encode_masks
    from ..core.images import encode_depth_16uc1
    from ..sim.appearance import Appearance
    from ..sim.camera import d435_intrinsics
    from ..sim.noise import SensorNoise
    from ..sim.randomization import SIM2REAL, SceneConfig, random_sensor
    from ..sim.scene import Scene

    out = Path(out)
    seed = scene_seed(params.seed, index)
    sim2real = params.recipe == "sim2real"
    base = SIM2REAL if sim2real else SceneConfig()
    cfg = dataclasses.replace(base, min_objects=params.min_objects, max_objects=params.max_objects,
                              supports=params.supports)
    k = d435_intrinsics(params.width, params.height)
    noise = SensorNoise() if params.noise else None
    appearance = Appearance(shared_look_probability=0.35) if sim2real else None
    sensor = "d435"
    images, annotations = [], []
    with Scene.random(seed, cfg, min_visible_pixels=params.min_visible_pixels) as scene:
        for view in range(params.views_per_scene):
            number = index * params.views_per_scene + view
            name = f"{number:06d}.png"
            if sim2real:
                sensor, k, sensor_noise = random_sensor(np.random.default_rng([seed, 5, view]), params.width)
                noise = sensor_noise if params.noise else None
            frame = scene.render(scene.random_camera(seed=view, intrinsics=k), noise=noise, seed=view,
                                 appearance=appearance)
            _atomic_write_bytes(out / "color" / name, _png(frame.color))
            _atomic_write_bytes(out / "depth" / name, _png(encode_depth_16uc1(frame.depth, scale=DEPTH_SCALE)))
            image_id = number + 1
            images.append({
                "id": image_id, "file_name": f"color/{name}", "depth_file": f"depth/{name}",
                "width": k.width, "height": k.height, "depth_scale": DEPTH_SCALE,
                "intrinsics": {"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy},
                "camera_pose": [_r(row) for row in frame.world_to_camera],
                "scene_index": index, "scene_seed": seed, "view_index": view, "support": scene.support,
                "sensor": sensor,
            })
            for o in frame.ground_truth:
                annotations.append({
                    "image_id": image_id, "category_id": 1, "iscrowd": 0, "object_name": o.name,
                    "object_id": o.id, "scene_seed": seed,
                    "segmentation": encode_masks(o.visible_mask[None])[0],
                    "amodal_segmentation": encode_masks(o.amodal_mask[None])[0],
                    "bbox": list(o.bbox), "amodal_bbox": list(o.amodal_bbox),
                    "area": o.visible_area, "amodal_area": o.amodal_area,
                    "occlusion": round(float(o.occlusion), 6),
                    "truncation": round(float(np.nan_to_num(o.truncation)), 6),
                    "pose": {"position": _r(o.position), "orientation": _r(o.quat)},
                    "extent": _r(o.extent), "centroid": _r(o.centroid),
                })
    fragment = {"scene_index": index, "scene_seed": seed, "images": images, "annotations": annotations}
    _atomic_write_json(_fragment_path(out, index), fragment)
    return fragment


def _worker(job: tuple[str, int, dict[str, Any]]) -> tuple[int, int, int]:
    out, index, params = job
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass
    p = SynthParams(**{**params, "supports": tuple(params["supports"])})
    frag = render_scene(out, index, p)
    return index, len(frag["images"]), len(frag["annotations"])


# ---------------------------------------------------------------------------------------- dataset
def _scene_done(out: Path, index: int, params: SynthParams) -> bool:
    frag = _fragment_path(out, index)
    if not frag.is_file():
        return False
    for v in range(params.views_per_scene):
        name = f"{index * params.views_per_scene + v:06d}.png"
        if not ((out / "color" / name).is_file() and (out / "depth" / name).is_file()):
            return False
    return True


def _check_params(out: Path, params: SynthParams) -> None:
    path = out / "synth_params.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != params.to_json():
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in params.to_json().items() if old.get(k) != v)
            raise SynthError(
                f"{out} was generated with other parameters ({diff}); use the same parameters to resume, "
                "or a new --out directory."
            )
    else:
        _atomic_write_json(path, params.to_json(), indent=2)


def synthesize(
    out: str | Path,
    scenes: int,
    params: SynthParams | None = None,
    *,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Render ``scenes`` scenes into ``out`` (skipping those already there) and write ``annotations.json``.

    Args:
        out: output directory (created).
        scenes: number of scenes; scene ``i`` always gets the same seed and image numbers.
        params: what to render; must match a previous run into the same directory.
        workers: processes (``spawn`` context); 1 renders in this process.
        progress: show a tqdm bar on stderr.

    Returns:
        A summary: ``{"scenes", "rendered", "skipped", "images", "annotations", "seconds", "path"}``.
    """
    params = params or SynthParams()
    if scenes < 1:
        raise SynthError(f"--scenes must be >= 1, got {scenes}.")
    if workers < 1:
        raise SynthError(f"--workers must be >= 1, got {workers}.")
    out = Path(out)
    for sub in ("color", "depth", "fragments"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _check_params(out, params)
    todo = [i for i in range(scenes) if not _scene_done(out, i, params)]
    t0 = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="isr synth", unit="scene", disable=not progress or not todo, file=sys.stderr)
    jobs = [(str(out), i, params.to_json()) for i in todo]
    try:
        if workers == 1 or len(todo) <= 1:
            for job in jobs:
                _worker(job)
                bar.update(1)
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(min(workers, len(todo))) as pool:
                for _ in pool.imap_unordered(_worker, jobs):
                    bar.update(1)
    finally:
        bar.close()
    coco = assemble(out, scenes, params)
    return {"scenes": scenes, "rendered": len(todo), "skipped": scenes - len(todo), "images": len(coco["images"]),
            "annotations": len(coco["annotations"]), "seconds": time.perf_counter() - t0,
            "path": str(out / "annotations.json")}


def assemble(out: str | Path, scenes: int, params: SynthParams) -> dict[str, Any]:
    """Build ``annotations.json`` from the fragments of scenes ``0..scenes-1`` (annotation ids 1..N in order)."""
    out = Path(out)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(scenes):
        path = _fragment_path(out, i)
        if not path.is_file():
            raise SynthError(f"Scene {i} has no fragment ({path}); rerun `isr synth` to render it.")
        frag = json.loads(path.read_text())
        images.extend(frag["images"])
        for ann in frag["annotations"]:
            annotations.append({"id": len(annotations) + 1, **ann})
    coco = {
        "info": {"description": "isr synth: simulated tabletop RGB-D scenes with amodal ground truth",
                 "version": "1.0", "depth_scale": DEPTH_SCALE, "params": params.to_json(), "scenes": scenes,
                 "seed_rule": f"scene i uses seed {params.seed} * {SEED_STRIDE} + i"},
        "licenses": [],
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
        "images": images,
        "annotations": annotations,
    }
    _atomic_write_json(out / "annotations.json", coco)
    return coco


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SynthParams()
    parser.add_argument("--out", required=True, help="output directory (created; reruns resume)")
    parser.add_argument("--scenes", type=int, required=True, help="number of scenes")
    parser.add_argument("--seed", type=int, default=d.seed, help="dataset seed; scene i uses seed*100003+i")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--width", type=int, default=d.width, help="image width (default 640)")
    parser.add_argument("--height", type=int, default=d.height, help="image height (default 480)")
    parser.add_argument("--min-objects", type=int, default=d.min_objects, help="objects per scene, at least")
    parser.add_argument("--max-objects", type=int, default=d.max_objects, help="objects per scene, at most")
    parser.add_argument("--views-per-scene", type=int, default=d.views_per_scene, help="camera views per scene")
    parser.add_argument("--noise", action="store_true", help="D435-like depth noise (and slight color noise)")
    parser.add_argument("--supports", default=",".join(d.supports),
                        help="comma-separated supports to draw from: table, tray, none (default table,tray)")
    parser.add_argument("--recipe", choices=RECIPES, default=d.recipe,
                        help="plain: flat colors, D435 (default); sim2real: the training recipe (textures, clutter, "
                             "lighting, random sensors; see MODEL.md)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        params = SynthParams(
            seed=args.seed, width=args.width, height=args.height, min_objects=args.min_objects,
            max_objects=args.max_objects, views_per_scene=args.views_per_scene, noise=bool(args.noise),
            supports=tuple(s.strip() for s in args.supports.split(",") if s.strip()), recipe=args.recipe,
        )
        from ..sim.randomization import SceneConfig

        SceneConfig(supports=params.supports)  # validates the names
        summary = synthesize(args.out, args.scenes, params, workers=args.workers, progress=not args.quiet)
    except ValueError as exc:
        print(f"isr synth: error: {exc}", file=sys.stderr)
        return 2
    print(f"isr synth: {summary['images']} images, {summary['annotations']} annotations "
          f"({summary['rendered']} scenes rendered, {summary['skipped']} already there) in "
          f"{summary['seconds']:.1f} s -> {summary['path']}")
    return 0
