#!/usr/bin/env python3
"""How well do the 3D boxes of ``geometry.box_mode`` ``support`` and ``free`` fit, and what do they cost?

Synthetic boxes (sizes 3-30 cm, random yaw) stand on a table; a pinhole camera (640x480, fx = fy = 615 px, a D435's
color camera) 0.5-1.2 m away at 30-90 degrees elevation and a random azimuth looks at each. Each box is ray-cast
pixel by pixel (only what the camera sees: two to three faces, foreshortened as on a real sensor) and each depth
gets Gaussian noise of ``--noise`` at 1 m, growing with the square of the depth (structured light). The points then
go through :func:`~instance_seg_ros.core.geometry.support_boxes` (the true table plane, and that plane tilted by
``--plane-error`` degrees about a random horizontal axis, as a RANSAC fit may be) and
:func:`~instance_seg_ros.core.geometry.oriented_box` (free).

Errors against the true box: **yaw** = the angle between the footprint rectangles about the table normal, modulo 90
degrees (a rectangle's symmetry: which side is called long is in the size error); **tilt** = the angle between the
box's axis nearest the table normal and that normal; **size** = the largest error of (long, short, height) with
the fitted footprint sides sorted; **center**. Cost: support fits ``--batch`` boxes per call (a frame's instances),
free one box per call; microseconds per box. ``--sim-frames N`` adds the boxes of N simulated scenes (piles from
``instance_seg_ros.sim``: true visible masks, simulated sensor noise, the plane fitted to the depth). Prints markdown
tables. Usage::

    python scripts/box_fit_check.py --boxes 200 --seed 0 --sim-frames 40
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

from instance_seg_ros.core.geometry import oriented_box, quaternion_to_matrix, support_boxes
from instance_seg_ros.core.support_plane import SupportPlane

FX = FY = 615.0
CX, CY = 319.5, 239.5
WIDTH, HEIGHT = 640, 480


@dataclass
class Sample:
    """One box seen by one camera, everything in the camera's optical frame (meters)."""

    points: np.ndarray  # [N, 3] float32
    plane: SupportPlane  # the table
    center: np.ndarray  # [3]
    axes: np.ndarray  # [3, 3] columns: long side, short side, up
    size: np.ndarray  # [3] long, short, height


def _look_at(eye: np.ndarray, target: np.ndarray, azimuth: float) -> np.ndarray:
    """Columns = the camera's x (right), y (down), z (forward) in the world (z up); the right vector is horizontal."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.array([-math.sin(azimuth), math.cos(azimuth), 0.0])
    return np.stack([x, np.cross(z, x), z], axis=1)


def _ray_cast(size: np.ndarray, box_to_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of the box and their ray parameters: ``(rays [N, 3] with z = 1, depth [N])`` of the nearest hit."""
    R, t = box_to_cam[:3, :3], box_to_cam[:3, 3]
    corners = (np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)]) - 0.5) * size @ R.T + t
    u = FX * corners[:, 0] / corners[:, 2] + CX
    v = FY * corners[:, 1] / corners[:, 2] + CY
    u0, u1 = max(0, int(u.min())), min(WIDTH - 1, int(u.max()) + 1)
    v0, v1 = max(0, int(v.min())), min(HEIGHT - 1, int(v.max()) + 1)
    uu, vv = np.meshgrid(np.arange(u0, u1 + 1), np.arange(v0, v1 + 1))
    rays = np.stack([(uu.ravel() - CX) / FX, (vv.ravel() - CY) / FY, np.ones(uu.size)], axis=1)
    # slab test in the box frame: origin o = R^T (0 - t), direction d = R^T ray
    o = -R.T @ t
    d = rays @ R
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-size / 2 - o) / d
        t2 = (size / 2 - o) / d
    near = np.nanmax(np.minimum(t1, t2), axis=1)
    far = np.nanmin(np.maximum(t1, t2), axis=1)
    hit = (near <= far) & (near > 0)
    return rays[hit], near[hit]


def make_sample(rng: np.random.Generator, noise: float) -> Sample:
    dims = rng.uniform(0.03, 0.30, 3)
    long, short = max(dims[0], dims[1]), min(dims[0], dims[1])
    size = np.array([long, short, dims[2]])
    yaw = rng.uniform(0, math.pi)
    box_axes_w = np.array([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0], [0, 0, 1.0]])
    center_w = np.array([rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2), size[2] / 2])
    dist, elev, azim = rng.uniform(0.5, 1.2), math.radians(rng.uniform(30, 90)), rng.uniform(0, 2 * math.pi)
    eye = center_w + dist * np.array([math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev)])
    cam_w = _look_at(eye, center_w, azim)  # camera axes in the world
    to_cam = np.eye(4)
    to_cam[:3, :3] = cam_w.T @ box_axes_w
    to_cam[:3, 3] = cam_w.T @ (center_w - eye)
    rays, depth = _ray_cast(size, to_cam)
    depth = depth + rng.normal(size=depth.shape) * noise * depth**2
    up = cam_w.T @ np.array([0.0, 0.0, 1.0])  # table normal in the camera frame; the camera is eye[2] above it
    return Sample(points=(rays * depth[:, None]).astype(np.float32),
                  plane=SupportPlane(normal=up, offset=float(eye[2]), support=1.0, inliers=0),
                  center=to_cam[:3, 3], axes=to_cam[:3, :3], size=size)


def tilted(plane: SupportPlane, degrees: float, rng: np.random.Generator) -> SupportPlane:
    """``plane`` with its normal turned by ``degrees`` about a random axis in the plane (through the camera's foot)."""
    axis = np.cross(plane.normal, rng.normal(size=3))
    axis /= np.linalg.norm(axis)
    a = math.radians(degrees)
    n = plane.normal * math.cos(a) + np.cross(axis, plane.normal) * math.sin(a)
    return SupportPlane(normal=n / np.linalg.norm(n), offset=plane.offset, support=1.0, inliers=0)


def errors(sample: Sample, box: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[float, float, float, float]:
    """(yaw deg, tilt deg, size mm, center mm) of a fitted box against the truth (see the module docstring)."""
    center, quat, size = box
    axes = quaternion_to_matrix(quat)
    n = sample.axes[:, 2]
    up = int(np.argmax(np.abs(axes.T @ n)))
    tilt = math.degrees(math.acos(min(1.0, abs(float(axes[:, up] @ n)))))
    side = [k for k in range(3) if k != up]
    h = axes[:, side[0]] - (axes[:, side[0]] @ n) * n  # a footprint side, flattened onto the table
    h /= max(np.linalg.norm(h), 1e-12)
    ang = math.atan2(float(h @ sample.axes[:, 1]), float(h @ sample.axes[:, 0]))
    yaw = math.degrees(abs((ang + math.pi / 4) % (math.pi / 2) - math.pi / 4))
    fitted = np.array([max(size[side[0]], size[side[1]]), min(size[side[0]], size[side[1]]), size[up]])
    size_mm = float(np.abs(fitted - sample.size).max()) * 1e3
    return yaw, tilt, size_mm, float(np.linalg.norm(center - sample.center)) * 1e3


def down_to_plane(box: tuple[np.ndarray, np.ndarray, np.ndarray], plane: SupportPlane
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A support box extended down to its plane (a variant measured here, not what support_boxes returns)."""
    center, quat, size = box
    bottom = float(center @ plane.normal + plane.offset) - size[2] / 2
    drop = max(bottom, 0.0)
    return center - plane.normal * drop / 2, quat, size + np.array([0.0, 0.0, drop])


def sim_samples(frames: int, seed: int) -> tuple[list[Sample], int]:
    """The boxes of simulated tabletop scenes (``SIM2REAL`` ranges: piles that touch, stack and lean; D435 depth
    noise): each box's points lifted from its true visible mask, the plane fitted to the frame's depth as the
    pipeline does (:func:`~instance_seg_ros.core.support_plane.fit_plane`), its true pose and extent.

    Returns:
        (samples, how many of them lean: their true up axis more than 5 degrees off the plane's normal).
    """
    from instance_seg_ros.core.config import Config
    from instance_seg_ros.core.support_plane import fit_plane
    from instance_seg_ros.sim.frame import lift_mask
    from instance_seg_ros.sim.noise import SensorNoise
    from instance_seg_ros.sim.randomization import SIM2REAL
    from instance_seg_ros.sim.scene import Scene

    out, leaning = [], 0
    for i in range(frames):
        with Scene.random(seed=seed + i, config=SIM2REAL) as scene:
            frame = scene.render(scene.random_camera(seed=0), amodal=False, noise=SensorNoise())
        plane = fit_plane(Config(), frame.depth, frame.intrinsics)
        if plane is None:
            continue
        for o in frame.objects:
            if o.name != "box" or o.status != "ok":
                continue
            points, _, _ = lift_mask(frame.depth, o.visible_mask, frame.intrinsics)
            if len(points) < 10:
                continue
            R = quaternion_to_matrix(o.quat)
            up = int(np.argmax(np.abs(R.T @ plane.normal)))
            order = [*sorted((k for k in range(3) if k != up), key=lambda k: -o.extent[k]), up]
            leaning += abs(float(R[:, up] @ plane.normal)) < math.cos(math.radians(5))
            out.append(Sample(points=points, plane=plane, center=o.position, axes=R[:, order], size=o.extent[order]))
    return out, leaning


def print_errors(samples: list[Sample], rows: dict[str, tuple[list, float]]) -> None:
    """One markdown row per fit: median / p90 of each error, and the cost per box (blank when not timed)."""
    print("| mode | yaw error (deg) median / p90 | tilt error (deg) median / p90 | size error (mm) median / p90 "
          "| center error (mm) median / p90 | µs per box |")
    print("|---|---|---|---|---|---|")
    for name, (boxes, elapsed) in rows.items():
        e = np.array([errors(s, b) for s, b in zip(samples, boxes, strict=True)])
        med, p90 = np.median(e, axis=0), np.percentile(e, 90, axis=0)
        cells = " | ".join(f"{m:.2f} / {p:.2f}" if k < 2 else f"{m:.1f} / {p:.1f}"
                           for k, (m, p) in enumerate(zip(med, p90, strict=True)))
        cost = "" if math.isnan(elapsed) else f"{elapsed / len(samples) * 1e6:.0f}"
        print(f"| {name} | {cells} | {cost} |")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boxes", type=int, default=200, help="how many random boxes (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.0015,
                   help="depth noise (std, meters) at 1 m, growing with depth squared (default 0.0015)")
    p.add_argument("--plane-error", type=float, default=1.0,
                   help="degrees the plane is tilted for the 'support, plane off' row (default 1)")
    p.add_argument("--batch", type=int, default=30, help="boxes per support_boxes call, as a frame's instances")
    p.add_argument("--sim-frames", type=int, default=0,
                   help="also this many simulated scenes (instance_seg_ros.sim, ~0.3 s each); 0 = none")
    return p


def main(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    samples = [make_sample(rng, args.noise) for _ in range(args.boxes)]
    samples = [s for s in samples if len(s.points) >= 10]
    off_planes = [tilted(s.plane, args.plane_error, rng) for s in samples]
    oriented_box(samples[0].points)  # first calls: Open3D and cv2 imports, numpy set-up
    support_boxes([samples[0].points], samples[0].plane)

    rows = {}
    t0 = time.perf_counter()
    free = [oriented_box(s.points) for s in samples]
    rows["free (oriented_box)"] = (free, time.perf_counter() - t0)
    for name, planes in (("support (true plane)", [s.plane for s in samples]),
                         (f"support (plane off by {args.plane_error:g} deg)", off_planes)):
        # a frame has one plane; here every box has its own camera, so each batch is fitted on the first one's
        # plane for the timing and once per box for the errors
        t0 = time.perf_counter()
        for b in range(0, len(samples), args.batch):
            support_boxes([s.points for s in samples[b : b + args.batch]], planes[b])
        elapsed = time.perf_counter() - t0
        rows[name] = ([support_boxes([s.points], pl)[0] for s, pl in zip(samples, planes, strict=True)], elapsed)
    boxes, _ = rows["support (true plane)"]
    rows["support, down to the plane (variant)"] = (
        [down_to_plane(b, s.plane) for b, s in zip(boxes, samples, strict=True)], float("nan"))

    # cost by cloud size: ``--batch`` boxes subsampled to n points each, the best of 3 runs
    by_size = []
    for n in (1000, 4000, 16000):
        clouds = [s.points[rng.choice(len(s.points), n, replace=False)] for s in samples if len(s.points) >= n]
        clouds = clouds[: args.batch]
        t_free, t_support = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            for c in clouds:
                oriented_box(c)
            t_free.append((time.perf_counter() - t0) / len(clouds))
            t0 = time.perf_counter()
            support_boxes(clouds, samples[0].plane)
            t_support.append((time.perf_counter() - t0) / len(clouds))
        by_size.append((n, len(clouds), min(t_free), min(t_support)))

    npts = np.array([len(s.points) for s in samples])
    print(f"{len(samples)} synthetic boxes, sizes 3-30 cm, camera 0.5-1.2 m at 30-90 deg elevation, depth noise "
          f"{args.noise * 1e3:g} mm at 1 m; points per box: median {int(np.median(npts))}, "
          f"p90 {int(np.percentile(npts, 90))}\n")
    print_errors(samples, rows)
    print("\n| points per box | free, µs per box | support, µs per box (a call for all boxes) | boxes |")
    print("|---|---|---|---|")
    for n, k, t_free, t_support in by_size:
        print(f"| {n} | {t_free * 1e6:.0f} | {t_support * 1e6:.0f} | {k} |")

    if args.sim_frames > 0:
        sim, leaning = sim_samples(args.sim_frames, args.seed)
        if not sim:
            print("\nno boxes in the simulated scenes")
            return
        npts = np.array([len(s.points) for s in sim])
        print(f"\n{len(sim)} boxes in {args.sim_frames} simulated scenes (SIM2REAL: piles), true visible masks, "
              f"simulated D435 depth noise, the plane fitted to the depth; points per box: median "
              f"{int(np.median(npts))}. {leaning} of them lean (true up axis > 5 deg off the plane's normal)")
        standing = [s for s in sim if abs(float(s.axes[:, 2] @ s.plane.normal)) >= math.cos(math.radians(5))]
        for title, subset in (("all boxes", sim), ("standing boxes only", standing)):
            if not subset:
                continue
            support = [support_boxes([s.points], s.plane)[0] for s in subset]
            print(f"\n{title} ({len(subset)}):\n")
            print_errors(subset, {
                "free (oriented_box)": ([oriented_box(s.points) for s in subset], float("nan")),
                "support (fitted plane)": (support, float("nan")),
                "support, down to the plane (variant)": (
                    [down_to_plane(b, s.plane) for b, s in zip(support, subset, strict=True)], float("nan")),
            })


if __name__ == "__main__":
    main(get_args_parser().parse_args())
