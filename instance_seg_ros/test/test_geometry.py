"""core/geometry.py: quaternions, centroid, and the tight oriented box on known boxes and degenerate clouds."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instance_seg_ros.core.geometry import (
    box_corners,
    centroid,
    matrix_to_quaternion,
    oriented_box,
    quaternion_angle,
    quaternion_to_matrix,
)


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
