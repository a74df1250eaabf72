"""core/geometry.py: quaternions, centroid, the tight oriented box and the boxes standing on a support plane on known
boxes and degenerate clouds; ``geometry.box_mode`` in the config and the pipeline's geometry stage."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instance_seg_ros.core.config import Config, ConfigError
from instance_seg_ros.core.geometry import (
    box_corners,
    centroid,
    matrix_to_quaternion,
    oriented_box,
    quaternion_angle,
    quaternion_to_matrix,
    support_boxes,
)
from instance_seg_ros.core.pipeline import attach_geometry, box_plane
from instance_seg_ros.core.support_plane import SupportPlane
from instance_seg_ros.core.types import InstanceResult, Intrinsics


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    return quaternion_to_matrix(rng.normal(size=4))


def random_box(rng: np.random.Generator):
    """Center, rotation and sizes (sorted decreasing, at least 1 cm apart so the axis order is defined)."""
    while True:
        size = np.sort(rng.uniform(0.02, 0.3, 3))[::-1]
        if np.diff(size).min() < -0.01:
            return rng.uniform(-1, 1, 3), random_rotation(rng), size


def corners(size: np.ndarray) -> np.ndarray:
    return np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)]) * size / 2


def surface_samples(rng: np.random.Generator, size: np.ndarray, n: int) -> np.ndarray:
    """n points uniformly over the faces' parameter squares (each point on one of the 6 faces)."""
    p = rng.uniform(-1, 1, (n, 3))
    axis = rng.integers(0, 3, n)
    p[np.arange(n), axis] = rng.choice([-1.0, 1.0], n)
    return p * size / 2


def axes_angle_deg(R1: np.ndarray, R2: np.ndarray) -> float:
    cos = np.abs(np.sum(R1 * R2, axis=0)).clip(0, 1)
    return float(np.degrees(np.arccos(cos)).max())


def check_box_conventions(center, q, size):
    assert center.dtype == np.float64 and q.dtype == np.float64 and size.dtype == np.float64
    assert center.shape == (3,) and q.shape == (4,) and size.shape == (3,)
    assert np.isfinite(center).all() and np.isfinite(q).all() and np.isfinite(size).all()
    assert np.linalg.norm(q) == pytest.approx(1.0) and q[3] >= 0
    assert (np.diff(size) <= 1e-12).all() and (size >= 0).all()
    R = quaternion_to_matrix(q)
    assert np.linalg.det(R) == pytest.approx(1.0)
    for i in (0, 1):  # sign convention: largest-magnitude component positive
        a = R[:, i]
        if size[i] > 0:
            assert a[np.argmax(np.abs(a))] > 0


def assert_contains(points, center, q, size, tol=1e-9):
    local = (np.asarray(points, np.float64) - center) @ quaternion_to_matrix(q)
    assert (np.abs(local) <= size / 2 + tol).all()


# ---------------------------------------------------------------------------------------- quaternions
def test_quaternion_roundtrip_and_angle():
    rng = np.random.default_rng(0)
    for _ in range(200):
        R = random_rotation(rng)
        q = matrix_to_quaternion(R)
        assert q[3] >= 0 and np.linalg.norm(q) == pytest.approx(1.0)
        np.testing.assert_allclose(quaternion_to_matrix(q), R, atol=1e-12)
    for deg in (0.0, 1e-3, 45.0, 90.0, 179.0, 180.0):  # near-180 rotations take Shepperd's other branches
        for axis in np.eye(3):
            h = math.radians(deg) / 2
            q = np.array([*(axis * math.sin(h)), math.cos(h)])
            q2 = matrix_to_quaternion(quaternion_to_matrix(q))
            assert quaternion_angle(q, q2) == pytest.approx(0.0, abs=1e-6)
            assert math.degrees(quaternion_angle([0, 0, 0, 1], q)) == pytest.approx(deg, abs=1e-6)
    np.testing.assert_allclose(matrix_to_quaternion(np.eye(3)), [0, 0, 0, 1])
    assert quaternion_angle([0, 0, 0, 1], [0, 0, 0, -1]) == 0.0  # q and -q are the same orientation
    np.testing.assert_allclose(quaternion_to_matrix([0, 0, 0, 2.0]), np.eye(3))  # normalised


def test_quaternion_bad_inputs():
    with pytest.raises(ValueError, match="quaternion"):
        quaternion_to_matrix([0, 0, 0, 0])
    with pytest.raises(ValueError, match="quaternion"):
        quaternion_to_matrix([1, 2, 3])
    with pytest.raises(ValueError, match="3x3"):
        matrix_to_quaternion(np.eye(4))
    with pytest.raises(ValueError, match="non-zero"):
        quaternion_angle([0, 0, 0, 0], [0, 0, 0, 1])


def test_centroid():
    pts = np.array([[0, 0, 1], [2, 0, 1], [1, 3, 1], [np.nan, 0, 0]], np.float32)
    c = centroid(pts)
    assert c.dtype == np.float64
    np.testing.assert_allclose(c, [1, 1, 1])
    np.testing.assert_array_equal(centroid(np.zeros((0, 3), np.float32)), [0, 0, 0])
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        centroid(np.zeros((4, 2)))


# ---------------------------------------------------------------------------------------- boxes
def test_box_from_8_corners_exact():
    rng = np.random.default_rng(1)
    for _ in range(50):
        c, R, size = random_box(rng)
        pts = corners(size) @ R.T + c
        center, q, s = oriented_box(pts)
        check_box_conventions(center, q, s)
        np.testing.assert_allclose(s, size, atol=1e-9)
        np.testing.assert_allclose(center, c, atol=1e-9)
        assert axes_angle_deg(quaternion_to_matrix(q), R) < 1e-4
        np.testing.assert_allclose(
            box_corners(center, q, s)[np.lexsort(box_corners(center, q, s).T)], pts[np.lexsort(pts.T)], atol=1e-9
        )


def test_box_from_dense_surface_samples():
    rng = np.random.default_rng(2)
    for _ in range(15):
        c, R, size = random_box(rng)
        pts = (surface_samples(rng, size, 4000) @ R.T + c).astype(np.float32)
        center, q, s = oriented_box(pts)
        check_box_conventions(center, q, s)
        assert_contains(pts, center, q, s, tol=1e-6)
        np.testing.assert_allclose(s, size, atol=5e-4)  # samples fall short of the edges by < 0.5 mm
        np.testing.assert_allclose(center, c, atol=5e-4)
        assert axes_angle_deg(quaternion_to_matrix(q), R) < 0.5


def test_box_from_noisy_samples():
    rng = np.random.default_rng(3)
    for _ in range(10):
        c, R, size = random_box(rng)
        pts = surface_samples(rng, size, 4000) @ R.T + c + rng.normal(scale=0.0005, size=(4000, 3))
        center, q, s = oriented_box(pts)
        np.testing.assert_allclose(s, size, atol=5e-3)  # 0.5 mm sensor noise widens the box by a few sigma
        np.testing.assert_allclose(center, c, atol=1e-3)
        assert axes_angle_deg(quaternion_to_matrix(q), R) < 2.0


def test_box_three_visible_faces():
    """What a camera sees of a box from a corner: three whole faces fix the whole box."""
    rng = np.random.default_rng(4)
    for _ in range(10):
        c, R, size = random_box(rng)
        p = surface_samples(rng, size, 9000)
        p = p[(p >= size / 2 - 1e-12).any(axis=1)]  # the points on the faces +x, +y and +z
        center, q, s = oriented_box(p @ R.T + c)
        np.testing.assert_allclose(s, size, atol=1e-3)
        assert axes_angle_deg(quaternion_to_matrix(q), R) < 1.0


def test_cube_corners():
    rng = np.random.default_rng(5)
    R = random_rotation(rng)
    pts = corners(np.full(3, 0.1)) @ R.T
    center, q, s = oriented_box(pts)
    np.testing.assert_allclose(s, 0.1, atol=1e-9)  # PCA is degenerate for a cube; hull faces are not
    assert_contains(pts, center, q, s)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=4, max_value=300), st.integers(min_value=0, max_value=2**31 - 1))
def test_box_contains_all_points_and_beats_pca(n, seed):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3)) * rng.uniform(0.01, 1.0, 3) @ random_rotation(rng).T
    center, q, s = oriented_box(pts)
    check_box_conventions(center, q, s)
    assert_contains(pts, center, q, s, tol=1e-9)
    # never worse than the principal-axes box (each principal axis is one of the candidates)
    evecs = np.linalg.eigh(np.cov(pts.T))[1]
    proj = (pts - pts.mean(0)) @ evecs
    assert np.prod(s) <= np.prod(proj.max(0) - proj.min(0)) * (1 + 1e-9)


def test_flat_rectangle():
    rng = np.random.default_rng(6)
    R = random_rotation(rng)
    uv = rng.uniform(-1, 1, (3000, 2)) * [0.1, 0.04]
    uv = np.concatenate([uv, [[0.1, 0.04], [-0.1, -0.04], [0.1, -0.04], [-0.1, 0.04]]])
    pts = np.c_[uv, np.zeros(len(uv))] @ R.T + [0.2, 0.1, 0.9]
    center, q, s = oriented_box(pts)
    check_box_conventions(center, q, s)
    np.testing.assert_allclose(s, [0.2, 0.08, 0.0], atol=1e-9)
    np.testing.assert_allclose(center, [0.2, 0.1, 0.9], atol=1e-9)
    assert axes_angle_deg(quaternion_to_matrix(q), R) < 1e-4


@pytest.mark.parametrize(
    "pts,size",
    [
        (np.zeros((0, 3)), [0, 0, 0]),
        (np.array([[0.1, 0.2, 0.3]]), [0, 0, 0]),
        (np.array([[0.1, 0.2, 0.3]] * 50), [0, 0, 0]),
        (np.array([[0.0, 0.0, 1.0], [0.3, 0.4, 1.0]]), [0.5, 0, 0]),
        (np.array([[0.0, 0.0, 1.0], [0.3, 0.4, 1.0], [0.6, 0.8, 1.0], [0.15, 0.2, 1.0]]), [1.0, 0, 0]),
        (np.array([[0.0, 0.0, 1.0], [0.1, 0.0, 1.0], [0.0, 0.2, 1.0]]), [0.2, 0.1, 0]),
        (np.array([[np.nan, 0, 0], [np.inf, 1, 1]]), [0, 0, 0]),
        (np.array([[0.0, 0.0, 1.0], [np.nan, 1, 1], [0.0, 0.0, 2.0]]), [1.0, 0, 0]),
    ],
    ids=["empty", "one", "identical", "two", "collinear", "triangle", "all-nan", "nan-dropped"],
)
def test_degenerate_clouds(pts, size):
    center, q, s = oriented_box(pts)
    check_box_conventions(center, q, s)
    np.testing.assert_allclose(s, size, atol=1e-12)
    finite = pts[np.isfinite(pts).all(axis=1)]
    if len(finite):
        assert_contains(finite, center, q, s, tol=1e-12)
    else:
        np.testing.assert_array_equal(center, [0, 0, 0])


def test_bad_shape():
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        oriented_box(np.zeros((5, 2)))


def test_speed_of_typical_instance_cloud():
    rng = np.random.default_rng(8)
    c, R, size = random_box(rng)
    pts = (surface_samples(rng, size, 20000) @ R.T + c + rng.normal(scale=0.001, size=(20000, 3))).astype(np.float32)
    oriented_box(pts)  # warm up (Open3D import)
    t0 = time.perf_counter()
    for _ in range(3):
        oriented_box(pts)
    ms = (time.perf_counter() - t0) / 3 * 1e3
    assert ms < 200, f"oriented_box took {ms:.1f} ms for 20k points"


# ---------------------------------------------------------------------------------------- boxes on a support plane
# a table tilted in the camera frame (normal towards the camera, 0.8 m below it along the normal)
TABLE = SupportPlane(normal=np.array([0.2, -0.85, -0.45]) / np.linalg.norm([0.2, -0.85, -0.45]), offset=0.8,
                     support=0.5, inliers=1000)


def table_axes(normal: np.ndarray, yaw: float) -> np.ndarray:
    """Columns x, y, z of a box standing on a plane: z = normal, x at ``yaw`` from a fixed direction in the plane."""
    e = np.cross([0.0, 0.0, 1.0], normal)
    e /= np.linalg.norm(e)
    f = np.cross(normal, e)
    x = math.cos(yaw) * e + math.sin(yaw) * f
    return np.stack([x, np.cross(normal, x), normal], axis=1)


def box_on_table(rng: np.random.Generator, size: np.ndarray, yaw: float, shift: np.ndarray, n: int = 4000,
                 noise: float = 0.0005, plane: SupportPlane = TABLE):
    """Points on the five faces of a box (all but the bottom) standing on ``plane``, with Gaussian noise.

    Returns:
        (points [n, 3], center [3], axes [3, 3] columns x, y, z).
    """
    R = table_axes(plane.normal, yaw)
    foot = -plane.offset * plane.normal + R[:, :2] @ shift  # a point on the plane
    center = foot + plane.normal * size[2] / 2
    p = surface_samples(rng, size, 2 * n)
    p = p[p[:, 2] > -size[2] / 2 + 1e-12][:n]  # not the bottom face
    return p @ R.T + center + rng.normal(scale=noise, size=p.shape), center, R


def yaw_error_deg(x: np.ndarray, x_true: np.ndarray) -> float:
    """Angle between two directions, modulo 180 degrees."""
    return float(np.degrees(np.arccos(min(1.0, abs(float(x @ x_true))))))


def test_support_boxes_recover_yaw_size_and_center_on_a_tilted_table():
    rng = np.random.default_rng(20)
    clouds, truth = [], []
    for _ in range(12):
        size = np.array([rng.uniform(0.08, 0.3), 0.0, rng.uniform(0.03, 0.3)])
        size[1] = rng.uniform(0.03, size[0] - 0.02)  # the longer side is x
        yaw = rng.uniform(-math.pi, math.pi)
        pts, center, R = box_on_table(rng, size, yaw, rng.uniform(-0.3, 0.3, 2))
        clouds.append(pts.astype(np.float32))
        truth.append((size, center, R))
    boxes = support_boxes(clouds, TABLE)
    assert len(boxes) == len(clouds)
    for box, (size, center, R) in zip(boxes, truth, strict=True):
        c, q, s = box
        assert c.dtype == q.dtype == s.dtype == np.float64 and c.shape == s.shape == (3,) and q.shape == (4,)
        assert np.linalg.norm(q) == pytest.approx(1.0) and q[3] >= 0
        axes = quaternion_to_matrix(q)
        np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-9)
        assert np.linalg.det(axes) == pytest.approx(1.0)
        np.testing.assert_allclose(axes[:, 2], TABLE.normal, atol=1e-6)  # z = the plane's normal, up
        np.testing.assert_allclose(axes[:, 1], np.cross(axes[:, 2], axes[:, 0]), atol=1e-9)
        x = axes[:, 0]
        assert x[np.argmax(np.abs(x))] > 0
        assert yaw_error_deg(x, R[:, 0]) < 2.0
        np.testing.assert_allclose(s, size, atol=4e-3)  # (long, short, height); 0.5 mm noise widens it a little
        np.testing.assert_allclose(c, center, atol=2e-3)


def test_support_boxes_contain_their_points_and_match_the_plane_frame():
    """Exact points: the box holds every point, its bottom lies on the lowest point, and a free fit of the same
    points (all faces but the bottom: a whole box) finds the same box up to the order and signs of its axes."""
    rng = np.random.default_rng(21)
    size = np.array([0.2, 0.1, 0.06])
    pts, center, R = box_on_table(rng, size, 0.7, np.array([0.05, -0.1]), noise=0.0)
    (c, q, s), = support_boxes([pts], TABLE)
    assert_contains(pts, c, q, s, tol=1e-6)
    assert TABLE.height(pts).min() == pytest.approx(c @ TABLE.normal + TABLE.offset - s[2] / 2, abs=1e-6)
    cf, qf, sf = oriented_box(pts)
    np.testing.assert_allclose(sf, s, atol=1e-4)
    np.testing.assert_allclose(cf, c, atol=1e-4)
    assert axes_angle_deg(quaternion_to_matrix(qf), quaternion_to_matrix(q)) < 0.1


def test_support_boxes_quaternion_matches_its_axes_for_every_yaw():
    rng = np.random.default_rng(22)
    for yaw in np.linspace(-math.pi, math.pi, 37):
        pts, _, R = box_on_table(rng, np.array([0.15, 0.05, 0.04]), yaw, np.zeros(2), n=800, noise=0.0)
        (_, q, _), = support_boxes([pts], TABLE)
        axes = quaternion_to_matrix(q)
        np.testing.assert_allclose(matrix_to_quaternion(axes), q, atol=1e-9)  # w >= 0 as matrix_to_quaternion
        assert yaw_error_deg(axes[:, 0], R[:, 0]) < 1e-3


def test_support_boxes_degenerate_inputs():
    n = TABLE.normal
    e = table_axes(n, 0.3)[:, 0]
    base = -TABLE.offset * n
    line = base + np.linspace(0, 0.2, 50)[:, None] * e  # collinear, on the table
    vertical = base + np.linspace(0, 0.1, 50)[:, None] * n  # a vertical segment
    with_nan = np.concatenate([line, [[np.nan, 0.0, 1.0], [np.inf, 0.0, 1.0]]])
    boxes = support_boxes(
        [np.zeros((0, 3)), line[:2], np.full((3, 3), np.nan), line, vertical, np.repeat(base[None], 5, 0), with_nan,
         np.zeros((0,))],
        TABLE,
    )
    assert boxes[0] is None and boxes[1] is None and boxes[2] is None and boxes[7] is None  # < 3 finite points
    c, q, s = boxes[3]
    np.testing.assert_allclose(s, [0.2, 0.0, 0.0], atol=1e-6)
    assert yaw_error_deg(quaternion_to_matrix(q)[:, 0], e) < 1e-3
    np.testing.assert_allclose(c, base + 0.1 * e, atol=1e-6)
    c, q, s = boxes[4]
    np.testing.assert_allclose(s, [0.0, 0.0, 0.1], atol=1e-6)
    np.testing.assert_allclose(quaternion_to_matrix(q)[:, 2], n, atol=1e-6)
    np.testing.assert_allclose(c, base + 0.05 * n, atol=1e-6)
    c, q, s = boxes[5]
    np.testing.assert_allclose(s, 0.0, atol=1e-6)
    np.testing.assert_allclose(c, base, atol=1e-6)
    for a, b in zip(boxes[6], boxes[3], strict=True):  # non-finite rows are ignored
        np.testing.assert_array_equal(a, b)
    for box in boxes:
        assert box is None or all(np.isfinite(v).all() for v in box)
    assert support_boxes([], TABLE) == []


def test_support_boxes_bad_inputs():
    with pytest.raises(ValueError, match=r"points_list\[1\] must have shape \[N, 3\]"):
        support_boxes([np.zeros((4, 3)), np.zeros((4, 2))], TABLE)
    with pytest.raises(ValueError, match="unit vector"):
        support_boxes([np.zeros((4, 3))], SupportPlane(np.array([0.0, 0.0, 2.0]), 1.0, 1.0, 10))


def test_support_boxes_of_large_clouds_keep_their_hull():
    """Footprints of more than 1,024 points drop the points inside their extreme-point octagon before the rectangle
    search: the rectangle is still the one of all points (cv2.minAreaRect of the whole footprint)."""
    import cv2

    rng = np.random.default_rng(23)
    for n, noise in ((20000, 0.0005), (6000, 0.01)):  # a box, and a blob with many points on its hull
        pts, _, R = box_on_table(rng, np.array([0.25, 0.12, 0.1]), 1.1, np.zeros(2), n=n, noise=noise)
        (c, q, s), = support_boxes([pts], TABLE)
        _, wh, _ = cv2.minAreaRect((pts @ R[:, :2]).astype(np.float32))
        np.testing.assert_allclose(s[:2], sorted(wh, reverse=True), atol=1e-5)
        for a, b in zip((c, q, s), support_boxes([pts[::-1]], TABLE)[0], strict=True):  # order-independent
            np.testing.assert_allclose(a, b, atol=1e-5)


def plain_hull_candidates(p: np.ndarray) -> np.ndarray:
    """The Akl-Toussaint filter with whole-array temporaries: the reference of the in-place one."""
    x, y = p[:, 0], p[:, 1]
    s, d = x + y, y - x
    ext = np.array([x.argmax(), s.argmax(), y.argmax(), d.argmax(), x.argmin(), s.argmin(), y.argmin(), d.argmin()])
    poly = p[ext]
    tol = 1e-12 * max(1.0, float(np.abs(p).max()))
    keep = np.zeros(p.shape[0], bool)
    edges = 0
    for i in range(8):
        a, b = poly[i], poly[(i + 1) % 8]
        ex, ey = b[0] - a[0], b[1] - a[1]
        if ex == 0 and ey == 0:
            continue
        keep |= ex * (y - a[1]) - ey * (x - a[0]) <= tol
        edges += 1
    if edges < 3:
        return np.ones(p.shape[0], bool)
    keep[ext] = True
    return keep


def plain_support_boxes(points_list, plane):
    """support_boxes over all clouds at once (one [3, M] projection, the plain filter): the reference of the
    per-cloud implementation with reused work rows."""
    import cv2

    from instance_seg_ros.core.geometry import _orthonormal_basis

    n = np.asarray(plane.normal, np.float64)
    out = [None] * len(points_list)
    counts = np.array([len(p) for p in points_list])
    if counts.sum() == 0:
        return out
    xyz = np.concatenate([np.asarray(p).reshape(-1, 3).T for p in points_list], axis=1).astype(np.float32)
    finite = np.isfinite(xyz).all(axis=0)
    counts = np.bincount(np.repeat(np.arange(len(points_list)), counts)[finite], minlength=len(points_list))
    xyz = xyz[:, finite]
    u, v = _orthonormal_basis(n[None])
    basis = np.stack([u[0], v[0], n], axis=1)
    b32 = basis.astype(np.float32)
    uvn = [xyz[0] * b32[0, k] + xyz[1] * b32[1, k] + xyz[2] * b32[2, k] for k in range(3)]
    starts = np.concatenate([[0], np.cumsum(counts)])
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
        if b - a < 3:
            continue
        foot = np.stack([uvn[0][a:b], uvn[1][a:b]], axis=1)
        if b - a > 1024:
            foot = foot[plain_hull_candidates(foot)]
        (ca, cb), (w, h), deg = cv2.minAreaRect(foot)
        lo, hi = float(uvn[2][a:b].min()), float(uvn[2][a:b].max())
        angle = math.radians(deg) + (0.0 if w >= h else math.pi / 2)
        x3 = math.cos(angle) * u[0] + math.sin(angle) * v[0]
        if x3[np.argmax(np.abs(x3))] < 0:
            angle += math.pi
        size = np.array([max(w, h), min(w, h), hi - lo])
        center = basis @ np.array([ca, cb, (lo + hi) / 2.0])
        R = basis @ np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
        out[i] = (center, matrix_to_quaternion(R), size)
    return out


def test_hull_candidates_in_place_equal_the_plain_filter():
    from instance_seg_ros.core.geometry import _hull_candidates

    rng = np.random.default_rng(27)
    clouds = [rng.normal(size=(n, 2)) * rng.uniform(0.01, 3, 2) + rng.uniform(-2, 2, 2) for n in (1, 5, 100, 5000)]
    clouds += [np.zeros((40, 2)), np.outer(rng.uniform(0, 1, 300), [0.3, -0.7]), np.round(rng.uniform(0, 9, (999, 2)))]
    for p in clouds:
        for dtype in (np.float32, np.float64):
            q = p.astype(dtype)
            np.testing.assert_array_equal(_hull_candidates(q), plain_hull_candidates(q))


def test_support_boxes_equal_the_plain_all_clouds_implementation():
    """Per cloud in reused work rows: the same boxes as projecting all clouds at once (same float32 arithmetic, the
    same footprint points for cv2.minAreaRect), for large, small, degenerate, float64 and non-finite clouds."""
    rng = np.random.default_rng(28)
    clouds = []
    for n in (3000, 1025, 1024, 40, 3):
        clouds.append(box_on_table(rng, np.array([0.2, 0.1, 0.05]), rng.uniform(-3, 3), rng.uniform(-0.3, 0.3, 2),
                                   n=n)[0])
    clouds[0] = clouds[0].astype(np.float32)
    blob = rng.normal(-TABLE.offset * TABLE.normal, 0.05, (4000, 3))
    blob[rng.integers(0, 4000, 30), rng.integers(0, 3, 30)] = np.nan
    blob[5, 1] = np.inf
    line = -TABLE.offset * TABLE.normal + np.linspace(0, 0.2, 2000)[:, None] * table_axes(TABLE.normal, 0.3)[:, 0]
    clouds += [blob.astype(np.float32), line, np.zeros((0, 3)), np.full((4, 3), np.nan), np.asfortranarray(blob)]
    got, ref = support_boxes(clouds, TABLE), plain_support_boxes(clouds, TABLE)
    for g, r in zip(got, ref, strict=True):
        assert (g is None) == (r is None)
        if g is not None:
            for a, b in zip(g, r, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_centroid_skips_non_finite_rows():
    rng = np.random.default_rng(29)
    p = rng.normal(size=(1000, 3)).astype(np.float32)
    p[[3, 70, 500], [0, 2, 1]] = [np.nan, np.inf, -np.inf]
    np.testing.assert_allclose(centroid(p), np.delete(p, [3, 70, 500], axis=0).astype(np.float64).mean(axis=0),
                               rtol=1e-12)
    np.testing.assert_array_equal(centroid(np.full((5, 3), np.nan, np.float32)), [0, 0, 0])


def test_support_boxes_speed():
    rng = np.random.default_rng(24)
    clouds = [box_on_table(rng, np.array([0.15, 0.08, 0.1]), rng.uniform(0, 3), rng.uniform(-0.3, 0.3, 2),
                           n=3000)[0].astype(np.float32) for _ in range(30)]
    support_boxes(clouds, TABLE)  # warm up (cv2 import)
    t0 = time.perf_counter()
    support_boxes(clouds, TABLE)
    ms = (time.perf_counter() - t0) * 1e3
    assert ms < 100, f"support_boxes took {ms:.1f} ms for 30 clouds of 3,000 points"


# ---------------------------------------------------------------------------------------- geometry.box_mode
def test_box_mode_option():
    assert Config().geometry.box_mode == "auto"
    for mode in ("auto", "support", "free"):
        assert Config.from_flat({"geometry.box_mode": mode}).geometry.box_mode == mode
    spec = Config.spec("geometry.box_mode")
    assert spec.dynamic and spec.choices == ("auto", "support", "free") and "support plane" in spec.description
    for bad in ("gravity", "Support", ""):
        with pytest.raises(ConfigError, match=rf"geometry.box_mode must be one of auto, support, free, got '{bad}'"):
            Config.from_flat({"geometry.box_mode": bad})
    with pytest.raises(ConfigError, match="geometry.box_mode must be a string"):
        Config.from_flat({"geometry.box_mode": 1})
    with pytest.raises(ConfigError, match="geometry.box_mode"):
        Config().replace(**{"geometry.box_mode": False})  # YAML's bare off: not a choice here


def _instances(clouds):
    return [InstanceResult(index=i + 1, class_id=1, class_name="object", score=1.0, bbox=(0, 0, 1, 1),
                           mask=np.ones((1, 1), bool), amodal_bbox=(0, 0, 1, 1), amodal_mask=np.ones((1, 1), bool),
                           occlusion=0.0, is_occluded=False, points=c) for i, c in enumerate(clouds)]


def _table_depth(K: Intrinsics, plane: SupportPlane) -> np.ndarray:
    """Depth image [H, W] float32 of ``plane`` seen by ``K`` (NaN where the ray misses it)."""
    u, v = np.meshgrid(np.arange(K.width), np.arange(K.height))
    rays = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones(u.shape)], axis=-1)
    with np.errstate(divide="ignore"):
        z = -plane.offset / (rays @ plane.normal)
    return np.where(z > 0, z, np.nan).astype(np.float32)


def test_box_plane_per_mode():
    K = Intrinsics(fx=150.0, fy=150.0, cx=79.5, cy=59.5, width=160, height=120)
    flat = SupportPlane(normal=np.array([0.0, -0.5, -0.866]) / np.linalg.norm([0.0, -0.5, -0.866]), offset=0.8,
                        support=1.0, inliers=1)
    depth = _table_depth(K, flat)
    cfg = {m: Config.from_flat({"geometry.box_mode": m}) for m in ("auto", "support", "free")}
    assert box_plane(cfg["free"], TABLE, searched=True, depth=depth, K=K) is None
    assert box_plane(cfg["auto"], TABLE, searched=True, depth=depth, K=K) is TABLE
    assert box_plane(cfg["support"], TABLE, searched=True, depth=depth, K=K) is TABLE
    assert box_plane(cfg["auto"], None, searched=False, depth=depth, K=K) is None  # auto never fits one
    assert box_plane(cfg["support"], None, searched=True, depth=depth, K=K) is None  # searched: there is none
    fitted = box_plane(cfg["support"], None, searched=False, depth=depth, K=K)
    assert fitted is not None and fitted.offset == pytest.approx(0.8, abs=0.005)
    np.testing.assert_allclose(fitted.normal, flat.normal, atol=0.01)
    no_table = np.full_like(depth, np.nan)
    assert box_plane(cfg["support"], None, searched=False, depth=no_table, K=K) is None  # then free


def test_attach_geometry_free_and_support():
    rng = np.random.default_rng(25)
    clouds = [box_on_table(rng, np.array([0.2, 0.1, 0.05]), yaw, rng.uniform(-0.2, 0.2, 2), n=1500)[0]
              .astype(np.float32) for yaw in (0.2, 1.0, 2.5)]
    clouds += [clouds[0][:2], clouds[1][:5], np.zeros((0, 3), np.float32)]
    free, support = _instances(clouds), _instances(clouds)
    attach_geometry(free, 3)
    attach_geometry(support, 3, plane=TABLE)
    boxes = support_boxes(clouds[:3], TABLE)
    for i, (f, s) in enumerate(zip(free, support, strict=True)):
        np.testing.assert_array_equal(f.centroid, s.centroid)
        if i < 3:  # free: exactly oriented_box; support: exactly support_boxes of the frame
            for a, b in zip((f.box_center, f.box_quat, f.box_size), oriented_box(clouds[i]), strict=True):
                np.testing.assert_array_equal(a, b)
            for a, b in zip((s.box_center, s.box_quat, s.box_size), boxes[i], strict=True):
                np.testing.assert_array_equal(a, b)
        elif i == 4:  # 5 points: a box in both modes (support: standing on the table)
            assert f.box_size.any() and s.box_size.any()
            np.testing.assert_allclose(quaternion_to_matrix(s.box_quat)[:, 2], TABLE.normal, atol=1e-6)
        else:  # fewer than min_points (or none): no box, the defaults
            for inst in (f, s):
                np.testing.assert_array_equal(inst.box_size, 0.0)
                np.testing.assert_array_equal(inst.box_quat, [0, 0, 0, 1])
    single = _instances(clouds[:1])[0]
    attach_geometry(single, 10)  # one instance, as tools/baseline.py calls it: the free fit
    np.testing.assert_array_equal(single.box_quat, free[0].box_quat)


def test_pipeline_geometry_stage_per_box_mode():
    """The Segmenter on a small tabletop frame with an untrained model: with the table found, auto and support stand
    every box on it; free and auto-without-a-plane give oriented_box's boxes; the plain (reference) path the same."""
    import torch

    from instance_seg_ros.core.pipeline import Segmenter

    W, H = 160, 120
    K = Intrinsics(fx=150.0, fy=150.0, cx=79.5, cy=59.5, width=W, height=H)
    rng = np.random.default_rng(0)
    color = np.full((H, W, 3), 200, np.uint8)
    depth = np.full((H, W), 0.8, np.float32)
    for _ in range(4):  # boxes standing above the table
        x, y = rng.integers(0, W - 40), rng.integers(0, H - 30)
        color[y : y + 30, x : x + 40] = rng.integers(0, 255, 3)
        depth[y : y + 30, x : x + 40] = rng.uniform(0.6, 0.7)
    torch.manual_seed(0)
    base = Config.from_flat({
        "model.weights": "none", "model.backbone": "resnet18_fpn", "model.device": "cpu", "model.warmup": False,
        "model.score_threshold": 0.0, "model.mask_threshold": 0.0, "model.max_instances": 4, "model.proposals": 50,
        "model.min_size": 60, "model.max_size": 80,
        "model.geometric_proposals": "off", "filter.support_plane": "off", "model.mask_nms_threshold": 1.0,
    })
    seg = Segmenter(base)
    seg.load()
    results = {}
    for mode, check in (("support", "off"), ("auto", "auto"), ("auto", "off"), ("free", "auto")):
        seg.update_config(base.replace(**{"geometry.box_mode": mode, "filter.support_plane": check}))
        results[mode, check] = seg.process(color, depth, K)
    seg.update_config(base.replace(**{"geometry.box_mode": "auto", "filter.support_plane": "auto"}))
    seg.reference = True  # the plain path of the postprocessing and lifting (the same network)
    reference = seg.process(color, depth, K)
    for (mode, check), res in results.items():
        assert "geometry" in res.timings and res.timings["geometry"] >= 0
        boxed = [i for i in res.instances if i.num_points >= 10]
        assert boxed, f"{mode}, {check}: no instance with points"
        for inst in boxed:
            axes = quaternion_to_matrix(inst.box_quat)
            if mode == "support" or (mode == "auto" and check == "auto"):  # the table: depth 0.8, normal -z
                np.testing.assert_allclose(axes[:, 2], [0, 0, -1], atol=2e-3)
                assert inst.box_size[2] <= 0.8 - 0.6 + 1e-3  # heights along the normal, not the longest side
            else:
                for a, b in zip((inst.box_center, inst.box_quat, inst.box_size), oriented_box(inst.points),
                                strict=True):
                    np.testing.assert_array_equal(a, b)
    for a, b in zip(results["auto", "auto"].instances, reference.instances, strict=True):  # the same boxes
        np.testing.assert_allclose(a.box_center, b.box_center, atol=1e-6)
        np.testing.assert_allclose(a.box_size, b.box_size, atol=1e-6)
        assert quaternion_angle(a.box_quat, b.box_quat) < 1e-6
