"""The compiled loops (core/kernels.py, numba) give the numpy code's results bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from roi_cases import overlapping_rois

from instance_seg_ros.core import kernels
from instance_seg_ros.core.geometry import _hull_candidates, _orthonormal_basis, support_boxes
from instance_seg_ros.core.lifting import lift_instances
from instance_seg_ros.core.support_plane import SupportPlane
from instance_seg_ros.core.types import Intrinsics

pytest.importorskip("numba")


@pytest.fixture
def compiled(monkeypatch):
    """Run a function with the compiled loops and with the numpy ones: ``compiled(fn)`` -> (numba, numpy) results."""

    def both(fn):
        monkeypatch.setattr(kernels, "ENABLED", True)
        a = fn()
        monkeypatch.setattr(kernels, "ENABLED", False)
        b = fn()
        monkeypatch.setattr(kernels, "ENABLED", True)
        return a, b

    return both


def test_warm_up_compiles_every_loop(monkeypatch):
    monkeypatch.setattr(kernels, "ENABLED", True)
    assert kernels.warm_up() > 0.0
    monkeypatch.setattr(kernels, "ENABLED", False)
    assert kernels.warm_up() == 0.0


def test_edge_tests_and_projection_are_numpys_bit_for_bit(compiled):
    rng = np.random.default_rng(7)
    for n in (1, 5, 1000, 20000):
        x = (rng.normal(size=n) * rng.uniform(0.01, 3) + rng.uniform(-2, 2)).astype(np.float32)
        y = (rng.normal(size=n) * rng.uniform(0.01, 3) + rng.uniform(-2, 2)).astype(np.float32)
        e = rng.integers(1, 9)
        ax, ay, vx, vy = (rng.normal(size=e).astype(np.float32) for _ in range(4))
        tol = np.float32(1e-12 * 3)

        def edges(x=x, y=y, ax=ax, ay=ay, vx=vx, vy=vy, tol=tol, n=n):
            keep = np.empty(n, bool)
            kernels.edge_tests(x, y, ax, ay, vx, vy, tol, keep, np.empty(n, np.float32), np.empty(n, np.float32),
                               np.empty(n, bool))
            return keep

        a, b = compiled(edges)
        np.testing.assert_array_equal(a, b)
        p = rng.normal(size=(n, 3)).astype(np.float32) * 2
        p[rng.random(n) < 0.05, rng.integers(0, 3)] = np.nan
        basis = np.linalg.qr(rng.normal(size=(3, 3)))[0].astype(np.float32)

        def proj(p=p, basis=basis, n=n):
            out = np.zeros((3, n + 4), np.float32)
            kernels.project(p, basis, out[:, 2 : 2 + n], np.empty(n, np.float32))  # into a view, as support_boxes
            return out

        a, b = compiled(proj)
        np.testing.assert_array_equal(a, b)
        keep = rng.random(n) < 0.3
        a, b = compiled(lambda x=x, y=y, keep=keep, n=n: kernels.select_pairs(x, y, keep, np.empty((n, 2), np.float32)))
        assert a.flags.c_contiguous and b.flags.c_contiguous
        np.testing.assert_array_equal(a, b)


def test_hull_candidates_and_support_boxes_are_numpys(compiled):
    rng = np.random.default_rng(8)
    for n in (1, 5, 100, 5000):
        p = (rng.normal(size=(n, 2)) * rng.uniform(0.01, 3, 2) + rng.uniform(-2, 2, 2)).astype(np.float32)
        a, b = compiled(lambda p=p: _hull_candidates(p).copy())
        np.testing.assert_array_equal(a, b)
    normal = np.array([0.1, -0.8, -0.55])
    plane = SupportPlane(normal=normal / np.linalg.norm(normal), offset=0.7, support=0.5, inliers=100)
    u, v = _orthonormal_basis(plane.normal[None])
    clouds = []
    for n in (3000, 1025, 1024, 40, 3, 2, 0, 12000):
        yaw = rng.uniform(-np.pi, np.pi)
        local = rng.uniform(-0.5, 0.5, (n, 3)) * [0.2, 0.08, 0.1]
        axis = np.cos(yaw) * u[0] + np.sin(yaw) * v[0]
        side = np.cross(plane.normal, axis)
        pts = local @ np.stack([axis, side, plane.normal]) + rng.uniform(-0.3, 0.3, 3) + [0, 0, 0.8]
        clouds.append(pts.astype(np.float32))
    clouds.append(clouds[0].astype(np.float64))  # converted to float32 first
    holes = clouds[1].copy()
    holes[::7, 1] = np.nan
    holes[3, 2] = np.inf
    clouds.append(holes)
    a, b = compiled(lambda: support_boxes(clouds, plane))
    for x, y in zip(a, b, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            for s, t in zip(x, y, strict=True):
                np.testing.assert_array_equal(s, t)


@pytest.mark.parametrize("with_color", [True, False])
@pytest.mark.parametrize("depth_min, flying", [(0.3, 0.03), (0.0, 0.03), (0.3, 0.0)])
def test_lifting_is_numpys_bit_for_bit(compiled, with_color, depth_min, flying):
    """Invalid, out-of-range, boundary (exactly the float32 range ends) and flying depths; masks at the image
    border, overlapping and empty; a mask stack that is a strided view, as the predictor's paste gives."""
    rng = np.random.default_rng(9)
    h, w = 60, 80
    yy, xx = np.mgrid[0:h, 0:w]
    depth = (0.6 + 0.01 * xx + 0.005 * yy + rng.normal(0, 0.001, (h, w))).astype(np.float32)  # 0.6 .. 1.7 m
    depth[:, 70:] += 0.8  # beyond depth_max: out of range
    depth[rng.random((h, w)) < 0.05] = np.nan
    depth[rng.random((h, w)) < 0.02] = 0.0
    depth[0, :3] = np.inf, -np.inf, np.float32(depth_min)
    depth[1, :2] = np.float32(2.0), np.nextafter(np.float32(2.0), np.float32(3))
    depth[20:30, 30:50] += 0.5  # a step: flying pixels along its edges
    stack = np.zeros((5, 2, h, w), bool)
    stack[0, 0, 10:40, 20:60] = True
    stack[1, 0, 0:15, 0:10] = True  # touches two borders
    stack[2, 0, 45:60, 60:80] = True
    stack[2, 0, 50, 70] = False
    stack[3, 0] = rng.random((h, w)) < 0.3  # scattered over the whole frame
    masks = stack[:, 0]  # [5, H, W] view with a stride of 2 masks; mask 4 is empty
    color = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if with_color else None
    K = Intrinsics(fx=70.0, fy=71.0, cx=39.5, cy=29.5, width=w, height=h)

    def lift():
        return lift_instances(depth, masks, K, color=color, depth_min=depth_min, depth_max=2.0,
                              flying_pixel_threshold=flying)

    a, b = compiled(lift)
    assert sum(len(c.points) for c in a) > 500
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.points, y.points)
        assert x.n_mask_pixels == y.n_mask_pixels and x.depth_coverage == y.depth_coverage
        if with_color:
            np.testing.assert_array_equal(x.colors, y.colors)
        else:
            assert x.colors is None and y.colors is None


def test_cluster_foreground_is_numpys(compiled):
    """The geometric proposals' clusters: a table seen from above at an angle, boxes standing on it (depth jumps at
    their edges), holes, zeros and infinities."""
    from instance_seg_ros.core.geometric_proposals import cluster_boxes
    from instance_seg_ros.core.support_plane import fit_support_plane

    rng = np.random.default_rng(10)
    h, w = 240, 320
    K = Intrinsics(fx=300.0, fy=300.0, cx=159.5, cy=119.5, width=w, height=h)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = 0.9 + 0.0015 * (yy - h / 2)  # a table tilted away from the camera
    for x0, y0, bw, bh, rise in ((40, 50, 40, 30, 0.08), (150, 100, 60, 50, 0.05), (250, 30, 30, 90, 0.12)):
        depth[y0 : y0 + bh, x0 : x0 + bw] -= rise  # boxes: nearer to the camera
    depth = (depth + rng.normal(0, 0.0005, (h, w))).astype(np.float32)
    depth[rng.random((h, w)) < 0.03] = np.nan
    depth[0, :3] = np.inf, 0.0, -1.0
    plane = fit_support_plane(depth, K)
    assert plane is not None
    a, b = compiled(lambda: cluster_boxes(depth, K, plane, stride=2))
    assert len(a) >= 3
    np.testing.assert_array_equal(a, b)
    a, b = compiled(lambda: cluster_boxes(depth, K, plane, stride=1, jump=0.01))
    np.testing.assert_array_equal(a, b)


def test_mask_ownership_settling_is_numpys(compiled):
    """The shared pixels of overlapping masks settled pair by pair (the compiled loop against the numpy one), with
    drops, ties (flat probabilities) and masks reaching over the border."""
    import torch

    from instance_seg_ros.core.model.predictor import mask_ownership_keep, paste_masks_batched

    g = torch.Generator().manual_seed(4)
    for k in range(40):
        boxes, probs = overlapping_rois(g)
        n = len(boxes)
        if k % 3 == 0:
            probs = (probs > 0.5).float() * 0.9  # ties everywhere
        scores = torch.sort(torch.rand(n, generator=g), descending=True).values
        masks = paste_masks_batched(probs[:, None], boxes, (80, 96), 0.5)[:, 0]
        thr, stride = float(torch.rand(1, generator=g)), int(torch.randint(1, 5, (1,), generator=g))
        a, b = compiled(lambda masks=masks, probs=probs, boxes=boxes, scores=scores, thr=thr, stride=stride:
                        mask_ownership_keep(masks, probs, boxes, scores, thr, stride=stride))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
