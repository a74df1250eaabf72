"""Support-plane fit and the on-the-plane test (core.support_plane), on analytic renders and the real frames.

:func:`render_boxes_on_plane` (pinhole ray casting of a tilted plane with boxes standing on it) is also used by
``test_plane_baseline.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from instance_seg_ros.core.lifting import lift_instances
from instance_seg_ros.core.support_plane import (
    SupportPlane,
    SupportPlaneError,
    fit_support_plane,
    on_support_plane,
    plane_tolerance,
)
from instance_seg_ros.core.types import Intrinsics

K640 = Intrinsics(570.0, 570.0, 319.5, 239.5, 640, 480)
# a table seen from 0.6 m above it, looking down at about 35 degrees and slightly rolled
TABLE_NORMAL = np.array([0.08, -0.8, -0.55]) / np.linalg.norm([0.08, -0.8, -0.55])
TABLE_OFFSET = 0.6
REALDATA = Path(__file__).resolve().parents[3] / "shared" / "realdata" / "ycbv"


def _plane_basis(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e1 = np.array([1.0, 0.0, 0.0]) - n[0] * n
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(n, e1)


def render_boxes_on_plane(
    K: Intrinsics,
    boxes: list[tuple[float, float, float, float, float]],
    *,
    normal: np.ndarray = TABLE_NORMAL,
    offset: float = TABLE_OFFSET,
    noise: float = 0.01,
    dropout: float = 0.02,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast an infinite plane ``normal · p + offset = 0`` with boxes standing on it.

    Args:
        boxes: ``(u, v, sx, sy, h)`` per box: its footprint centre is where pixel ``(u, v)``'s ray meets the plane,
            ``sx, sy`` its footprint sides (metres, along the plane's in-plane axes), ``h`` its height.
        noise: Gaussian depth noise, standard deviation as a share of the depth (0.01: the pessimistic end of a
            structured-light camera); the depth is then rounded to millimetres like a 16UC1 image.
        dropout: share of pixels set to NaN (no reading).

    Returns:
        depth np.ndarray[H, W] float32 metres (NaN = no hit / dropped), ids np.ndarray[H, W] int64 (0 = plane,
        k = box k (1-based), -1 = nothing).
    """
    n = np.asarray(normal, np.float64)
    e1, e2 = _plane_basis(n)
    o = -offset * n  # foot of the camera on the plane
    u, v = np.meshgrid(np.arange(K.width, dtype=np.float64), np.arange(K.height, dtype=np.float64))
    r = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u)], axis=-1)  # r_z = 1: t is the depth
    nr = r @ n
    with np.errstate(divide="ignore", invalid="ignore"):
        t_best = np.where(nr < 0, -offset / nr, np.inf)
    ids = np.where(np.isfinite(t_best), 0, -1)
    d_l = np.stack([r @ e1, r @ e2, nr], axis=-1)  # ray directions in the plane's frame
    origin_l = np.array([0.0, 0.0, offset])  # the camera in the plane's frame
    for k, (bu, bv, sx, sy, h) in enumerate(boxes, start=1):
        ray = np.array([(bu - K.cx) / K.fx, (bv - K.cy) / K.fy, 1.0])
        foot = ray * (-offset / (ray @ n)) - o
        a, b = foot @ e1, foot @ e2
        lo = np.array([a - sx / 2, b - sy / 2, 0.0])
        hi = np.array([a + sx / 2, b + sy / 2, h])
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (lo - origin_l) / d_l
            t2 = (hi - origin_l) / d_l
        tmin = np.nanmax(np.minimum(t1, t2), axis=-1)
        tmax = np.nanmin(np.maximum(t1, t2), axis=-1)
        hit = (tmax >= tmin) & (tmin > 0) & (tmin < t_best)
        t_best = np.where(hit, tmin, t_best)
        ids = np.where(hit, k, ids)
    rng = np.random.default_rng(seed)
    depth = t_best * (1.0 + noise * rng.standard_normal(t_best.shape))
    depth = np.round(depth * 1000.0) / 1000.0
    depth[~np.isfinite(t_best) | (rng.random(t_best.shape) < dropout)] = np.nan
    return depth.astype(np.float32), ids


BOX_5CM = (250.0, 300.0, 0.08, 0.06, 0.05)
SHEET_2MM = (430.0, 330.0, 0.10, 0.10, 0.002)


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    return render_boxes_on_plane(K640, [BOX_5CM, SHEET_2MM, (330.0, 200.0, 0.05, 0.05, 0.12)])


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(abs(a @ b), -1.0, 1.0))))


# ------------------------------------------------------------------------------------------------ fit
def test_recovers_tilted_plane(scene):
    depth, ids = scene
    plane = fit_support_plane(depth, K640)
    assert plane is not None
    assert _angle_deg(plane.normal, TABLE_NORMAL) < 1.0
    assert plane.normal @ TABLE_NORMAL > 0  # oriented towards the camera, as the ground truth
    assert abs(plane.offset - TABLE_OFFSET) < 0.005
    assert plane.normal.dtype == np.float64 and plane.normal.shape == (3,)
    assert abs(np.linalg.norm(plane.normal) - 1.0) < 1e-9
    # support: at most about the share of valid subsampled pixels that see the table (plus the sheet and the boxes'
    # bottom edges, inside the band); 1 % noise puts some table pixels (~6 % here) outside the band
    sub_d, sub_ids = depth[::4, ::4], ids[::4, ::4]
    valid = np.isfinite(sub_d)
    expected = np.count_nonzero(valid & (sub_ids == 0)) / np.count_nonzero(valid)
    assert expected - 0.1 < plane.support < expected + 0.02
    assert plane.inliers == round(plane.support * np.count_nonzero(valid))


def test_height_sign_and_orientation(scene):
    plane = fit_support_plane(scene[0], K640)
    assert plane.offset > 0
    assert plane.height(np.zeros((1, 3)))[0] == pytest.approx(plane.offset)
    below = -(TABLE_OFFSET + 0.3) * TABLE_NORMAL  # 30 cm below the table, straight under the camera
    assert plane.height(below[None])[0] == pytest.approx(-0.3, abs=0.01)
    with pytest.raises(SupportPlaneError, match="points"):
        plane.height(np.zeros((4, 2)))


def test_deterministic_with_seed(scene):
    a = fit_support_plane(scene[0], K640, seed=3)
    b = fit_support_plane(scene[0], K640, seed=3)
    assert np.array_equal(a.normal, b.normal) and a.offset == b.offset and a.inliers == b.inliers
    c = fit_support_plane(scene[0], K640, seed=4)
    assert _angle_deg(a.normal, c.normal) < 0.5 and abs(a.offset - c.offset) < 0.003


def test_tolerance_grows_with_depth():
    z = np.array([0.4, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(plane_tolerance(z, 0.01), [0.01, 0.01, 0.04, 0.09], rtol=1e-6)


def test_full_resolution_stride_one_runs(scene):
    plane = fit_support_plane(scene[0], K640, stride=1, iterations=50)
    assert plane is not None and _angle_deg(plane.normal, TABLE_NORMAL) < 1.0


def test_random_depth_has_no_plane():
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.5, 3.0, (480, 640)).astype(np.float32)
    assert fit_support_plane(depth, K640) is None


def test_sphere_has_no_plane():
    # a 1 m sphere 2 m away fills the view: no plane holds 20 % of it (a tangent cap within the band holds ~15 %)
    u, v = np.meshgrid(np.arange(640.0), np.arange(480.0))
    r = np.stack([(u - K640.cx) / K640.fx, (v - K640.cy) / K640.fy, np.ones_like(u)], axis=-1)
    c, radius = np.array([0.0, 0.0, 2.0]), 1.0
    rc, rr = r @ c, (r * r).sum(-1)
    disc = rc**2 - rr * (c @ c - radius**2)
    with np.errstate(invalid="ignore"):
        depth = ((rc - np.sqrt(disc)) / rr).astype(np.float32)  # NaN outside the silhouette
    assert np.isfinite(depth).mean() > 0.8
    assert fit_support_plane(depth, K640) is None


def test_too_few_valid_pixels():
    depth = np.full((480, 640), np.nan, np.float32)
    assert fit_support_plane(depth, K640) is None
    depth[100:108, 100:108] = 1.0  # 4 subsampled pixels of a perfect plane: not enough evidence
    assert fit_support_plane(depth, K640) is None


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"tolerance": 0.0}, "tolerance"),
        ({"tolerance": float("nan")}, "tolerance"),
        ({"stride": 0}, "stride"),
        ({"min_support": 0.0}, "min_support"),
        ({"min_support": 1.5}, "min_support"),
        ({"iterations": 0}, "iterations"),
        ({"depth_min": 2.0, "depth_max": 1.0}, "depth_min"),
    ],
)
def test_bad_arguments(scene, kwargs, word):
    with pytest.raises(SupportPlaneError, match=word):
        fit_support_plane(scene[0], K640, **kwargs)


def test_bad_depth():
    with pytest.raises(SupportPlaneError, match="2-D"):
        fit_support_plane(np.zeros((480, 640, 1), np.float32), K640)
    with pytest.raises(SupportPlaneError, match="K is for 640x480"):
        fit_support_plane(np.zeros((240, 320), np.float32), K640)
    with pytest.raises(SupportPlaneError, match="float metres"):
        fit_support_plane(np.zeros((480, 640), np.uint16), K640)
    assert issubclass(SupportPlaneError, ValueError)


# ------------------------------------------------------------------------------------------------ on the plane
def test_instances_on_plane(scene):
    depth, ids = scene
    plane = fit_support_plane(depth, K640)
    masks = np.stack([ids == k for k in (1, 2, 3)])
    clouds = [c.points for c in lift_instances(depth, masks, K640, depth_min=0.1, depth_max=5.0)]
    assert all(len(c) > 500 for c in clouds)
    # points 30 cm below the table (the floor beyond its edge), a 3-point instance, an empty one
    e1, e2 = _plane_basis(TABLE_NORMAL)
    g = np.random.default_rng(0).uniform(-0.2, 0.2, (200, 2))
    floor = (-(TABLE_OFFSET + 0.3) * TABLE_NORMAL + g[:, :1] * e1 + g[:, 1:] * e2).astype(np.float32)
    tiny = (-TABLE_OFFSET * TABLE_NORMAL + np.array([[0.0, 0, 0], [0.01, 0, 0], [0, 0.01, 0]])).astype(np.float32)
    flags = on_support_plane([*clouds, floor, tiny, np.zeros((0, 3), np.float32)], plane)
    assert flags.dtype == np.bool_ and flags.tolist() == [False, True, False, True, False, False]
    # non-finite rows are ignored: a flat sheet padded with NaN rows is still flagged, NaN-only is not
    nan_rows = np.full((50, 3), np.nan, np.float32)
    flags = on_support_plane([np.concatenate([clouds[1], nan_rows]), nan_rows], plane)
    assert flags.tolist() == [True, False]


def test_on_plane_matches_numpy_quantile(scene):
    plane = fit_support_plane(scene[0], K640)
    rng = np.random.default_rng(5)
    clouds = []
    for n in (10, 11, 37, 200):
        h = rng.uniform(-0.02, 0.04, n)
        e1, _ = _plane_basis(plane.normal)
        clouds.append(-plane.offset * plane.normal + h[:, None] * plane.normal + rng.uniform(-1, 1, (n, 1)) * e1)
    got = on_support_plane(clouds, plane, min_height=0.015)
    want = [np.quantile(plane.height(c), 0.9) < 0.015 for c in clouds]
    assert got.tolist() == want
    assert on_support_plane([], plane).shape == (0,)


def test_on_plane_bad_arguments(scene):
    plane = fit_support_plane(scene[0], K640)
    with pytest.raises(SupportPlaneError, match="min_points"):
        on_support_plane([np.zeros((20, 3))], plane, min_points=0)
    with pytest.raises(SupportPlaneError, match="min_height"):
        on_support_plane([np.zeros((20, 3))], plane, min_height=float("nan"))
    with pytest.raises(SupportPlaneError, match=r"points_per_instance\[1\]"):
        on_support_plane([np.zeros((20, 3)), np.zeros((20, 2))], plane)
    with pytest.raises(SupportPlaneError, match="SupportPlane"):
        on_support_plane([np.zeros((20, 3))], (np.zeros(3), 0.0))


def test_support_plane_is_frozen():
    p = SupportPlane(normal=np.array([0.0, -1.0, 0.0]), offset=1.0, support=0.5, inliers=10)
    with pytest.raises(AttributeError):
        p.offset = 2.0


# ------------------------------------------------------------------------------------------------ real frames
def load_real_frame(folder: Path) -> tuple[np.ndarray, np.ndarray, Intrinsics, np.ndarray]:
    """(rgb [H, W, 3] uint8, depth [H, W] float32 metres with NaN holes, K, label [H, W] uint8) of a real frame."""
    import cv2

    k = json.loads((folder / "K.json").read_text())
    K = Intrinsics(float(k["fx"]), float(k["fy"]), float(k["cx"]), float(k["cy"]), int(k["width"]), int(k["height"]))
    raw = cv2.imread(str(folder / "depth.png"), cv2.IMREAD_UNCHANGED)
    depth = raw.astype(np.float32) / 1000.0
    depth[raw == 0] = np.nan
    rgb = cv2.cvtColor(cv2.imread(str(folder / "rgb.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    label = cv2.imread(str(folder / "label.png"), cv2.IMREAD_UNCHANGED)
    return rgb, depth, K, label


def real_frames() -> list[Path]:
    return sorted(p for p in REALDATA.iterdir() if (p / "depth.png").is_file()) if REALDATA.is_dir() else []


@pytest.mark.skipif(not real_frames(), reason=f"no real frames at {REALDATA}")
def test_real_frames_plane_found_objects_not_flagged():
    for folder in real_frames():
        _, depth, K, label = load_real_frame(folder)
        plane = fit_support_plane(depth, K)
        assert plane is not None, folder.name
        assert plane.support >= 0.2
        ids = [i for i in np.unique(label) if i != 0]
        masks = np.stack([label == i for i in ids])
        clouds = [c.points for c in lift_instances(depth, masks, K, depth_min=0.1, depth_max=5.0)]
        flags = on_support_plane(clouds, plane)
        assert not flags.any(), f"{folder.name}: labelled objects {np.array(ids)[flags].tolist()} flagged"
