"""core/lifting.py against analytic ground truth: ray-cast planes and boxes, flying pixels, erosion, colors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from instance_seg_ros.core import lifting
from instance_seg_ros.core.geometry import centroid, oriented_box, quaternion_to_matrix
from instance_seg_ros.core.images import FrameError
from instance_seg_ros.core.lifting import (
    LiftedCloud,
    filter_cloud,
    label_image,
    lift_instances,
    valid_depth_mask,
)
from instance_seg_ros.core.masks import crop, mask_bbox, mask_bboxes
from instance_seg_ros.core.types import Intrinsics

H, W = 480, 640
K = Intrinsics(615.0, 615.0, 319.5, 239.5, W, H)
RANGE = dict(depth_min=0.1, depth_max=5.0)


def rot(axis: str, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def rays(K: Intrinsics) -> np.ndarray:
    """[H, W, 3] float64 ray of each pixel centre with z = 1 (so the hit distance t is the depth)."""
    v, u = np.mgrid[0 : K.height, 0 : K.width].astype(np.float64)
    return np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u)], axis=-1)


def render_box(center, R, size, K: Intrinsics = K):
    """Ray-cast a box (slab method). Returns (depth [H, W] float32 with NaN off the box, face [H, W] int8).

    ``face`` is the box axis (0, 1, 2) of the face each pixel sees, -1 off the box.
    """
    o = -R.T @ np.asarray(center, np.float64)  # camera centre in the box frame
    d = rays(K) @ R  # ray directions in the box frame: R^T d for every pixel
    half = np.asarray(size, np.float64) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - o) / d
        t2 = (half - o) / d
    tlo, thi = np.minimum(t1, t2), np.maximum(t1, t2)
    tnear, tfar = tlo.max(axis=-1), thi.min(axis=-1)
    hit = (tnear <= tfar) & (tnear > 0)
    depth = np.where(hit, tnear, np.nan).astype(np.float32)
    face = np.where(hit, tlo.argmax(axis=-1), -1).astype(np.int8)
    return depth, face


def axes_angle_deg(R1: np.ndarray, R2: np.ndarray) -> float:
    """Largest angle between corresponding columns, up to sign (box axes have no direction)."""
    cos = np.abs(np.sum(R1 * R2, axis=0)).clip(0, 1)
    return float(np.degrees(np.arccos(cos)).max())


# ---------------------------------------------------------------------------------------- plane
def test_plane_rectangle_centroid_and_extent():
    z = 0.8
    depth = np.full((H, W), z, np.float32)
    u0, u1, v0, v1 = 100, 260, 300, 380  # mask covers u in [u0, u1), v in [v0, v1)
    masks = np.zeros((1, H, W), bool)
    masks[0, v0:v1, u0:u1] = True
    (cloud,) = lift_instances(depth, masks, K, **RANGE)
    assert cloud.points.dtype == np.float32 and cloud.points.shape == ((u1 - u0) * (v1 - v0), 3)
    assert cloud.n_mask_pixels == (u1 - u0) * (v1 - v0) and cloud.depth_coverage == 1.0
    expect_c = [((u0 + u1 - 1) / 2 - K.cx) * z / K.fx, ((v0 + v1 - 1) / 2 - K.cy) * z / K.fy, z]
    np.testing.assert_allclose(centroid(cloud.points), expect_c, atol=1e-5)
    center, q, size = oriented_box(cloud.points)
    np.testing.assert_allclose(size, [(u1 - u0 - 1) * z / K.fx, (v1 - v0 - 1) * z / K.fy, 0.0], atol=1e-4)
    np.testing.assert_allclose(center, expect_c, atol=1e-4)
    # REP 103 optical frame: left of / above the principal point is x < 0 / y < 0
    assert cloud.points[:, 0].max() < 0 and cloud.points[:, 1].min() > 0


# ---------------------------------------------------------------------------------------- boxes
def test_box_face_seen_head_on():
    """Front face of a box rotated about the optical axis: a rectangle of known size, pose and normal."""
    size = np.array([0.16, 0.10, 0.06])
    R = rot("z", 25.0)
    center = np.array([0.0, 0.0, 0.55])
    depth, face = render_box(center, R, size)
    assert set(np.unique(face)) == {-1, 2}  # only the front face (box z) is visible
    masks = (face >= 0)[None]
    (cloud,) = lift_instances(depth, masks, K, **RANGE)
    assert cloud.num_points == masks.sum() > 20000
    # every point lies on the front face plane z = centre - 0.03
    np.testing.assert_allclose(cloud.points[:, 2], center[2] - size[2] / 2, atol=1e-6)
    c, q, s = oriented_box(cloud.points)
    footprint = (center[2] - size[2] / 2) / K.fx  # ~0.85 mm per pixel
    assert footprint < 1e-3
    np.testing.assert_allclose(centroid(cloud.points), center - [0, 0, size[2] / 2], atol=2e-3)
    np.testing.assert_allclose(c, center - [0, 0, size[2] / 2], atol=2e-3)
    # pixel centres inside the face: the extent shrinks by less than one pixel footprint per side
    np.testing.assert_allclose(s[:2], size[:2], atol=2e-3)
    assert s[2] == pytest.approx(0.0, abs=1e-6)
    assert axes_angle_deg(quaternion_to_matrix(q), R) < 2.0


def test_box_three_faces_full_pose():
    """A box seen from a corner: three whole faces are visible, so their points fix the whole box."""
    size = np.array([0.15, 0.10, 0.07])
    R = rot("z", 30.0) @ rot("x", -40.0) @ rot("y", 35.0)
    center = np.array([0.04, 0.03, 0.55])
    depth, face = render_box(center, R, size)
    counts = np.bincount(face[face >= 0], minlength=3)
    assert (counts > 1500).all(), counts  # three faces seen
    masks = (face >= 0)[None]
    (cloud,) = lift_instances(depth, masks, K, **RANGE)
    assert cloud.num_points == masks.sum()
    # every lifted point lies on the box surface (the projection model is right)
    local = (cloud.points.astype(np.float64) - center) @ R / (size / 2)
    np.testing.assert_allclose(np.abs(local).max(axis=1), 1.0, atol=2e-4)
    c, q, s = oriented_box(cloud.points)
    np.testing.assert_allclose(c, center, atol=2e-3)
    np.testing.assert_allclose(s, size, atol=2e-3)
    assert axes_angle_deg(quaternion_to_matrix(q), R) < 2.0


def test_box_on_table_flying_pixels_removed():
    """A box on a table plane: the silhouette is a depth step; with the filter no point floats off either."""
    size = np.array([0.12, 0.08, 0.10])
    R = rot("x", -30.0) @ rot("z", 20.0)
    center = np.array([0.0, 0.05, 0.6])
    depth, face = render_box(center, R, size)
    table = np.float32(0.9)
    # smear the silhouette like a real sensor: background pixels next to the box get the mean of both
    on = face >= 0
    full = np.where(on, depth, table).astype(np.float32)
    edge = ~on & (np.roll(on, 1, 0) | np.roll(on, -1, 0) | np.roll(on, 1, 1) | np.roll(on, -1, 1))
    smeared = full.copy()
    smeared[edge] = (table + np.nanmax(depth)) / 2
    masks = np.stack([on | edge])  # a generous mask that includes the flying ring
    (raw,) = lift_instances(smeared, masks, K, flying_pixel_threshold=0.0, **RANGE)
    (kept,) = lift_instances(smeared, masks, K, flying_pixel_threshold=0.03, **RANGE)

    def off_surface(p):
        local = (p.astype(np.float64) - center) @ R / (size / 2)
        return np.abs(np.abs(local).max(axis=1) - 1.0) > 0.02

    assert off_surface(raw.points).sum() >= edge.sum() * 0.9  # the flying ring is there unfiltered
    assert off_surface(kept.points).sum() == 0
    assert kept.num_points > 0.8 * on.sum()
    assert kept.depth_coverage == 1.0 and raw.depth_coverage == 1.0


# ---------------------------------------------------------------------------------------- validity
def test_nan_and_zero_depth_never_become_points():
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.5, 0.52, (H, W)).astype(np.float32)
    holes = rng.random((H, W)) < 0.3
    depth[holes] = np.nan
    zeros = rng.random((H, W)) < 0.1
    depth[zeros] = 0.0
    depth[:10] = np.inf
    depth[10:20] = -1.0
    masks = np.ones((2, H, W), bool)
    masks[1, :, : W // 2] = False
    for dmin in (0.0, 0.1):
        clouds = lift_instances(depth, masks, K, depth_min=dmin, depth_max=5.0, flying_pixel_threshold=0.0)
        good = np.isfinite(depth) & (depth > 0)
        assert clouds[0].num_points == good.sum()
        assert clouds[1].num_points == good[:, W // 2 :].sum()
        for c in clouds:
            assert np.isfinite(c.points).all() and (c.points[:, 2] >= 0.5).all()
        assert clouds[0].depth_coverage == pytest.approx(good.sum() / (H * W))


def test_depth_range_limits():
    depth = np.tile(np.linspace(0.2, 3.0, W, dtype=np.float32), (H, 1))
    masks = np.ones((1, H, W), bool)
    (c,) = lift_instances(depth, masks, K, depth_min=0.5, depth_max=2.0, flying_pixel_threshold=0.0)
    assert c.points[:, 2].min() >= 0.5 and c.points[:, 2].max() <= 2.0
    inside = ((depth >= 0.5) & (depth <= 2.0)).sum()
    assert c.num_points == inside and c.depth_coverage == pytest.approx(inside / (H * W))


def test_valid_depth_mask_step_edge():
    depth = np.full((20, 30), 0.6, np.float32)
    depth[:, 15:] = 0.9
    depth[:, 15] = 0.75  # flying column between the two surfaces
    depth[5, 5] = np.nan  # a hole is not a discontinuity: its neighbours stay valid
    v = valid_depth_mask(depth, depth_min=0.1, depth_max=5.0, flying_pixel_threshold=0.03)
    assert isinstance(v, np.ndarray) and v.dtype == bool
    assert not v[:, 14:17].any()  # the flying column and the pixels on both sides of it
    assert v[:, :14].sum() == 20 * 14 - 1 and v[:, 17:].all()
    assert v[4, 5] and v[5, 4]
    v0 = valid_depth_mask(depth, depth_min=0.1, depth_max=5.0, flying_pixel_threshold=0.0)
    assert v0.sum() == 20 * 30 - 1
    vt = valid_depth_mask(torch.from_numpy(depth), depth_min=0.1, depth_max=5.0, flying_pixel_threshold=0.03)
    assert isinstance(vt, torch.Tensor) and np.array_equal(vt.numpy(), v)


# ---------------------------------------------------------------------------------------- erosion
def test_erosion_shrinks_rectangle():
    depth = np.full((H, W), 1.0, np.float32)
    masks = np.zeros((3, H, W), bool)
    masks[0, 100:130, 200:240] = True  # 30 x 40
    masks[1, 0:20, 0:25] = True  # touches the image corner: not eroded from the border
    masks[2, 300:303, 300:303] = True  # vanishes at erode 2
    clouds = lift_instances(depth, masks, K, erode_px=2, **RANGE)
    assert clouds[0].num_points == 26 * 36
    assert clouds[1].num_points == 18 * 23
    assert clouds[2].num_points == 0 and clouds[2].points.shape == (0, 3)
    assert [c.n_mask_pixels for c in clouds] == [1200, 500, 9]  # counted before erosion
    assert clouds[0].depth_coverage == 1.0
    # the eroded cloud is the interior of the original one
    pts = clouds[0].points
    assert pts[:, 0].min() == pytest.approx((202 - K.cx) / K.fx)
    assert pts[:, 1].max() == pytest.approx((127 - K.cy) / K.fy)
    eroded_more = lift_instances(depth, masks, K, erode_px=5, **RANGE)
    assert eroded_more[0].num_points == 20 * 30 < clouds[0].num_points


# ---------------------------------------------------------------------------------------- colors
def coded_color() -> np.ndarray:
    """RGB that encodes the pixel: R = u % 256, G = v % 256, B = u // 256 * 16 + v // 256."""
    v, u = np.mgrid[0:H, 0:W]
    return np.stack([u % 256, v % 256, (u // 256) * 16 + v // 256], axis=-1).astype(np.uint8)


def test_colors_line_up_with_points():
    rng = np.random.default_rng(3)
    depth = rng.uniform(0.4, 0.41, (H, W)).astype(np.float32)
    depth[rng.random((H, W)) < 0.2] = np.nan
    masks = np.zeros((2, H, W), bool)
    masks[0, 50:200, 300:620] = True
    masks[1, 100:470, 10:400] = True  # overlaps mask 0: shared pixels appear in both clouds
    color = coded_color()
    clouds = lift_instances(depth, masks, K, color=color, **RANGE)
    for i, c in enumerate(clouds):
        assert c.colors is not None and c.colors.dtype == np.uint8 and c.colors.shape == c.points.shape
        u = np.rint(c.points[:, 0] / c.points[:, 2] * K.fx + K.cx).astype(int)
        v = np.rint(c.points[:, 1] / c.points[:, 2] * K.fy + K.cy).astype(int)
        np.testing.assert_array_equal(c.colors, color[v, u])
        assert masks[i][v, u].all()
    # BGR views from decode_color (negative strides) work too
    bgr_view = np.ascontiguousarray(color[..., ::-1])[..., ::-1]
    again = lift_instances(depth, masks, K, color=bgr_view, **RANGE)
    np.testing.assert_array_equal(again[0].colors, clouds[0].colors)
    assert lift_instances(depth, masks, K, **RANGE)[0].colors is None


# ---------------------------------------------------------------------------------------- backends
def random_scene(seed: int = 5):
    rng = np.random.default_rng(seed)
    depth = (0.7 + 0.003 * rng.standard_normal((H, W))).astype(np.float32)
    depth[:, 320:] += 0.3
    depth[rng.random((H, W)) < 0.1] = np.nan
    masks = np.zeros((6, H, W), bool)
    v, u = np.mgrid[0:H, 0:W]
    for i in range(6):  # ellipses, some crossing the depth step and the image border
        cy, cx = rng.integers(0, H), rng.integers(0, W)
        ry, rx = rng.integers(20, 80, size=2)
        masks[i] = ((v - cy) / ry) ** 2 + ((u - cx) / rx) ** 2 <= 1
    masks[5] = False  # an empty mask
    color = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return depth, masks, color


def assert_same(a: list[LiftedCloud], b: list[LiftedCloud]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.points, y.points, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(x.colors, y.colors)
        assert (x.n_mask_pixels, x.depth_coverage) == (y.n_mask_pixels, pytest.approx(y.depth_coverage))


@pytest.mark.parametrize("erode", [0, 2])
def test_torch_and_numpy_inputs_agree(erode):
    depth, masks, color = random_scene()
    kw = dict(flying_pixel_threshold=0.05, erode_px=erode, **RANGE)
    ref = lift_instances(depth, masks, K, color=color, **kw)
    assert ref[5].num_points == 0 and ref[5].depth_coverage == 0.0
    assert sum(c.num_points for c in ref) > 5000
    # CPU tensors (float64 depth, uint8 masks) take the numpy path
    t = lift_instances(
        torch.from_numpy(depth.astype(np.float64)),
        torch.from_numpy(masks.astype(np.uint8)),
        K,
        color=torch.from_numpy(color),
        **kw,
    )
    assert_same(ref, t)
    # the accelerator backend, run on the CPU, gives the same answer as the host backend
    d_t, m_t, c_t = torch.from_numpy(depth), torch.from_numpy(masks), torch.from_numpy(color)
    stats, pts, cols = lifting._lift_torch(d_t, m_t, c_t, K, 0.1, 5.0, 0.05, erode)
    stats_np, pts_np, cols_np = lifting._lift_np(depth, masks, color, K, 0.1, 5.0, 0.05, erode)
    np.testing.assert_array_equal(stats, stats_np)
    np.testing.assert_allclose(pts, pts_np, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(cols, cols_np)


def plain_valid(d: np.ndarray, dmin: float, dmax: float, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """(in_range, valid) by the plain whole-image formula: the reference of the banded numpy backend."""
    with np.errstate(invalid="ignore"):
        in_range = np.isfinite(d) & (d > 0) & (d >= dmin) & (d <= dmax)
        fly = np.zeros_like(in_range)
        if thr > 0:
            dx = np.abs(d[:, 1:] - d[:, :-1])
            fly[:, :-1] |= dx > thr * d[:, :-1]
            fly[:, 1:] |= dx > thr * d[:, 1:]
            dy = np.abs(d[1:, :] - d[:-1, :])
            fly[:-1, :] |= dy > thr * d[:-1, :]
            fly[1:, :] |= dy > thr * d[1:, :]
    return in_range, in_range & ~fly


def plain_lift(depth, masks, color, K, dmin, dmax, thr, erode) -> list[tuple]:
    """Per mask over the whole image with flat pixel indices (the reference of the per-box numpy backend):
    (points, colors, mask pixels, covered pixels)."""
    d = np.asarray(depth, np.float32)
    in_range, valid = plain_valid(d, dmin, dmax, thr)
    me = lifting._erode_np(masks, erode) if erode else masks
    out = []
    for i in range(masks.shape[0]):
        pix = np.flatnonzero(me[i] & valid)
        pts = lifting._project(pix, d.reshape(-1)[pix], d.shape[1], K, np)
        cols = np.ascontiguousarray(color).reshape(-1, 3)[pix] if color is not None else None
        out.append((pts, cols, int(masks[i].sum()), int((masks[i] & in_range).sum())))
    return out


@pytest.mark.parametrize("chunk", [1, 700, 32768])
def test_per_box_numpy_backend_equals_the_plain_whole_image_lift(monkeypatch, chunk):
    """The numpy backend works per mask box on validity computed in bands of rows: the same points (bit for bit,
    same order), colors and statistics as lifting every mask over the whole image."""
    monkeypatch.setattr(lifting, "_VALID_CHUNK", chunk)
    rng = np.random.default_rng(11)
    h, w = 37, 53
    k = Intrinsics(60.0, 55.0, 26.0, 18.5, w, h)
    for trial in range(40):
        depth = np.repeat(np.repeat(rng.uniform(0.05, 6.0, (h // 4 + 1, w // 4 + 1)), 4, 0), 4, 1)[:h, :w]
        depth = (depth + rng.normal(0, 0.01, depth.shape)).astype(np.float32)
        r = rng.random(depth.shape)
        depth[r < 0.1], depth[(r > 0.1) & (r < 0.12)], depth[(r > 0.12) & (r < 0.13)] = np.nan, 0.0, np.inf
        depth[(r > 0.13) & (r < 0.14)] = -1.0
        if trial % 10 == 9:
            depth[:] = np.nan
        masks = np.zeros((5, h, w), bool)
        masks[0, 0:9, 40:] = True  # touches the top and right borders
        masks[1] = rng.random((h, w)) < 0.3  # scattered: its box is (nearly) the image
        y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
        masks[2, y0 : rng.integers(y0 + 1, h + 1), x0 : rng.integers(x0 + 1, w + 1)] = True
        masks[3, h - 1, 0] = True  # one pixel in a corner
        # masks[4]: empty
        rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        color = [None, rgba[..., :3], rgba[..., 2::-1], np.ascontiguousarray(rgba[..., :3])][trial % 4]
        dmin, thr, erode = [0.0, 0.1, 0.5][trial % 3], [0.0, 0.03, 0.2][trial % 3 - 1], [0, 1, 3][trial % 3 - 2]
        got = lift_instances(depth.astype(np.float64) if trial % 5 == 0 else depth, masks, k, color=color,
                             depth_min=dmin, depth_max=5.0, flying_pixel_threshold=thr, erode_px=erode)
        # the masks' tight boxes given by the caller (as the pipeline passes its summaries'): the same clouds
        given = lift_instances(depth, masks, k, color=color, depth_min=dmin, depth_max=5.0,
                               flying_pixel_threshold=thr, erode_px=erode, boxes=mask_bboxes(masks))
        ref = plain_lift(depth, masks, color, k, dmin, 5.0, thr, erode)
        for cloud, cloud_b, (pts, cols, npx, ncov) in zip(got, given, ref, strict=True):
            for c in (cloud, cloud_b):
                np.testing.assert_array_equal(c.points, pts)
                np.testing.assert_array_equal(c.colors, cols)
                assert c.n_mask_pixels == npx
                assert c.depth_coverage == (ncov / npx if npx else 0.0)
        for thr in (0.0, 0.05):
            np.testing.assert_array_equal(
                valid_depth_mask(depth, depth_min=dmin, depth_max=5.0, flying_pixel_threshold=thr),
                plain_valid(depth, dmin, 5.0, thr)[1],
            )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_masks_computed_on_device():
    depth, masks, color = random_scene()
    kw = dict(flying_pixel_threshold=0.05, erode_px=2, **RANGE)
    ref = lift_instances(depth, masks, K, color=color, **kw)
    got = lift_instances(depth, torch.from_numpy(masks).cuda(), K, color=color, **kw)
    assert all(isinstance(c.points, np.ndarray) for c in got)
    assert_same(ref, got)
    np.testing.assert_array_equal(label_image(torch.from_numpy(masks).cuda()), label_image(masks))
    np.testing.assert_array_equal(mask_bboxes(torch.from_numpy(masks).cuda()), mask_bboxes(masks))


def test_no_masks_and_bad_inputs():
    depth = np.ones((H, W), np.float32)
    assert lift_instances(depth, np.zeros((0, H, W), bool), K, **RANGE) == []
    m = np.ones((1, H, W), bool)
    with pytest.raises(FrameError, match=r"masks must have shape \[N, H, W\]"):
        lift_instances(depth, m[0], K, **RANGE)
    with pytest.raises(FrameError, match="masks are 640x480 but depth is 320x240"):
        lift_instances(np.ones((240, 320), np.float32), m, K, **RANGE)
    with pytest.raises(FrameError, match="intrinsics are for 320x240"):
        lift_instances(depth, m, Intrinsics(300.0, 300.0, 160.0, 120.0, 320, 240), **RANGE)
    with pytest.raises(FrameError, match="decode_depth"):
        lift_instances(np.ones((H, W), np.uint16), m, K, **RANGE)
    with pytest.raises(FrameError, match="uint8 image"):
        lift_instances(depth, m, K, color=np.zeros((H, W, 3), np.float32), **RANGE)
    with pytest.raises(FrameError, match="numpy array or a torch tensor"):
        lift_instances([[1.0]], m, K, **RANGE)
    with pytest.raises(ValueError, match="depth_min"):
        lift_instances(depth, m, K, depth_min=2.0, depth_max=1.0)
    with pytest.raises(ValueError, match="erode_px"):
        lift_instances(depth, m, K, erode_px=-1, **RANGE)
    with pytest.raises(FrameError, match=r"boxes must have shape \[1, 4\]"):
        lift_instances(depth, m, K, boxes=np.zeros((2, 4), np.int64), **RANGE)


# ---------------------------------------------------------------------------------------- filtering
def test_filter_cloud():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 0.1, (2000, 3)).astype(np.float32)
    cols = np.full((2000, 3), 100, np.uint8)
    same_p, same_c = filter_cloud(pts, cols)
    assert same_p is pts and same_c is cols  # disabled: no-op, no copy
    vp, vc = filter_cloud(pts, cols, voxel_size=0.02)
    assert vp.dtype == np.float32 and len(vp) <= 6**3 and vc.dtype == np.uint8
    assert (vc == 100).all()  # averaged colors of equal colors
    far = np.concatenate([pts, [[5.0, 5.0, 5.0]]]).astype(np.float32)
    op, oc = filter_cloud(far, None, outlier_removal=True, neighbors=10, std_ratio=2.0)
    assert oc is None and len(op) < len(far) and np.abs(op).max() < 1.0
    for n in (0, 1, 2):
        p, c = filter_cloud(pts[:n], cols[:n], voxel_size=0.01, outlier_removal=True)
        assert p.shape == (n, 3) and c.shape == (n, 3)
    with pytest.raises(ValueError, match="voxel_size"):
        filter_cloud(pts, voxel_size=-1.0)


# ---------------------------------------------------------------------------------------- masks
def test_label_image_overlap_and_order():
    m = np.zeros((3, 4, 6), bool)
    m[0, 0:2, 0:4] = True
    m[1, 1:3, 2:6] = True
    m[2, 0:4, 3:4] = True
    lab = label_image(m)
    assert lab.dtype == np.uint16
    expected = np.array(
        [
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 2, 2],
            [0, 0, 2, 2, 2, 2],
            [0, 0, 0, 3, 0, 0],
        ]
    )
    np.testing.assert_array_equal(lab, expected)
    # with scores the highest score wins; the value stays index + 1
    lab_s = label_image(m, scores=[0.1, 0.5, 0.9])
    assert lab_s[0, 3] == 3 and lab_s[1, 3] == 3 and lab_s[1, 2] == 2 and lab_s[0, 0] == 1
    np.testing.assert_array_equal(label_image(torch.from_numpy(m)), lab)
    assert label_image(np.zeros((0, 4, 6), bool)).shape == (4, 6)
    with pytest.raises(ValueError, match="scores"):
        label_image(m, scores=[1.0, 2.0])


def test_label_image_matches_painting_loop():
    rng = np.random.default_rng(2)
    m = rng.random((40, 30, 50)) < 0.05
    scores = rng.random(40)
    ref = np.zeros((30, 50), np.uint16)
    for i in np.argsort(scores):  # paint lowest score first, highest last
        ref[m[i]] = i + 1
    np.testing.assert_array_equal(label_image(m, scores), ref)


def test_mask_bbox_and_crop():
    m = np.zeros((3, 10, 12), bool)
    m[0, 2:5, 3:9] = True
    m[1, 9, 11] = True
    boxes = mask_bboxes(m)
    assert boxes.dtype == np.int64
    np.testing.assert_array_equal(boxes, [[3, 2, 6, 3], [11, 9, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(mask_bboxes(torch.from_numpy(m)), boxes)
    assert mask_bbox(m[0]) == (3, 2, 6, 3)
    assert mask_bbox(m[2]) == (0, 0, 0, 0)
    c = crop(m[0], mask_bbox(m[0]))
    assert c.shape == (3, 6) and c.all() and np.shares_memory(c, m)
    assert crop(m[2], (0, 0, 0, 0)).shape == (0, 0)
    with pytest.raises(ValueError, match="inside"):
        crop(m[0], (10, 0, 5, 1))
    assert mask_bboxes(np.zeros((0, 4, 4), bool)).shape == (0, 4)
