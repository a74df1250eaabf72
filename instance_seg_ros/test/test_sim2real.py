"""The sim-to-real generator: procedural textures, appearance randomisation, sensor-like depth noise, random sensors
and the ``isr synth --recipe sim2real`` training recipe. Real PyBullet renders, no mocks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from instance_seg_ros.core.types import Intrinsics
from instance_seg_ros.sim.appearance import Appearance, surface_normals
from instance_seg_ros.sim.camera import Camera, d435_intrinsics
from instance_seg_ros.sim.errors import SceneError
from instance_seg_ros.sim.noise import SensorNoise
from instance_seg_ros.sim.objects import ObjectSpec
from instance_seg_ros.sim.randomization import SENSORS, SIM2REAL, random_sensor
from instance_seg_ros.sim.scene import Scene
from instance_seg_ros.sim.textures import SURFACE_STYLES, packaging_texture, sheet_texture, surface_texture


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------------ textures
def test_textures_are_seeded_and_not_flat():
    a, b = packaging_texture(_rng(3)), packaging_texture(_rng(3))
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, packaging_texture(_rng(4)))
    # a package print is not one flat color: many distinct colors across 20 draws
    stds = [packaging_texture(_rng(s)).reshape(-1, 3).std(axis=0).mean() for s in range(20)]
    assert np.median(stds) > 10
    for style in SURFACE_STYLES:
        t = surface_texture(_rng(1), 64, style=style)
        assert t.shape == (64, 64, 3) and t.dtype == np.uint8
    assert sheet_texture(_rng(2)).shape == (256, 256, 3)


def test_surface_normals_of_a_tilted_plane():
    k = d435_intrinsics(64, 48)
    us, vs = np.meshgrid(np.arange(64.0), np.arange(48.0))
    z = 1.0 + 0.002 * us  # a plane tilted about the y axis
    pts = np.stack([(us - k.cx) / k.fx * z, (vs - k.cy) / k.fy * z, z], axis=-1)
    n = surface_normals(pts)
    expect = np.array([0.002 * k.fx, 0.0, -1.0])  # -dz/dx * fx/z ... normal of z = 1 + a*x_cam*fx/z
    expect /= np.linalg.norm(expect)
    inner = n[5:-5, 5:-5].reshape(-1, 3)
    assert np.all(inner[:, 2] < 0)  # facing the camera
    assert np.abs(inner[:, 1]).max() < 1e-3
    assert np.all(np.sign(inner[:, 0]) == np.sign(expect[0]))


# ------------------------------------------------------------------------------------------------ appearance
@pytest.fixture(scope="module")
def rendered():
    cam = Camera.look_at((0.0, -0.45, 1.15), (0.0, 0.0, 0.63), intrinsics=d435_intrinsics(160, 120))
    specs = [ObjectSpec("box", size=(0.08, 0.06, 0.1), position=(-0.06, 0.0, 0.68)),
             ObjectSpec("cylinder", size=(0.035, 0.12), position=(0.07, 0.02, 0.69))]
    with Scene.from_spec(specs, support="table", seed=5) as scene:
        frame = scene.render(cam)
        yield scene, cam, frame


def test_appearance_textures_objects_and_keeps_ground_truth(rendered):
    scene, cam, frame = rendered
    look = Appearance(object_texture_probability=1.0, sheets=(0, 0)).apply(frame, _rng(1), support_z=0.625)
    again = Appearance(object_texture_probability=1.0, sheets=(0, 0)).apply(frame, _rng(1), support_z=0.625)
    assert look.color.shape == frame.color.shape and look.color.dtype == np.uint8
    assert np.array_equal(look.color, again.color)  # seeded
    assert look.glare.shape == frame.visible_ids.shape and look.glare.dtype == bool
    for o in frame.ground_truth:
        inside = o.visible_mask
        # TinyRenderer's flat colors vary only with shading; a print varies much more
        flat = frame.color[inside].astype(float).std(axis=0).mean()
        printed = look.color[inside].astype(float).std(axis=0).mean()
        assert printed > flat
    # the same scene rendered with appearance: identical ground truth, different color
    styled = scene.render(cam, appearance=Appearance(), seed=0)
    assert np.array_equal(styled.visible_ids, frame.visible_ids)
    for a, b in zip(styled.ground_truth, frame.ground_truth, strict=True):
        assert np.array_equal(a.visible_mask, b.visible_mask) and np.array_equal(a.amodal_mask, b.amodal_mask)
    assert not np.array_equal(styled.color, frame.color)
    assert "appearance" in styled.timings


def test_flat_sheets_are_background(rendered):
    _, _, frame = rendered
    hits = 0
    for seed in range(6):
        look = Appearance(sheets=(3, 3)).apply(frame, _rng(seed), support_z=0.625)
        assert not (look.sheets & (frame.visible_ids > 0)).any()  # never on an object: objects hide them
        hits += int(look.sheets.sum())
    assert hits > 0  # sheets were drawn on the table


def _same_look(frame, look) -> bool:
    """Whether the two flat-painted objects of ``rendered`` share one color: shading and gamma change brightness,
    not the log-ratios between channels."""
    chroma = []
    for o in frame.ground_truth:
        px = look.color[o.visible_mask].astype(float) + 1.0
        ok = (px < 250).all(axis=1)  # clipped highlights would shift the ratio
        lg = np.log(px[ok])
        chroma.append(np.median(lg[:, [0, 2]] - lg[:, [1]], axis=0))
    return bool(np.abs(chroma[0] - chroma[1]).max() < 0.05)


def test_shared_looks_paint_neighbours_alike(rendered):
    _, _, frame = rendered
    plain = dict(object_texture_probability=0.0, sheets=(0, 0), glossy_object_probability=0.0, blur_probability=0.0,
                 jpeg_probability=0.0, color_noise=(0.0, 0.0), shadow_probability=0.0)
    shared = Appearance(shared_look_probability=1.0, shared_look_fraction=1.0, **plain)
    same = [_same_look(frame, shared.apply(frame, _rng(s), support_z=0.625)) for s in range(8)]
    assert 2 <= sum(same) < 8  # 1-3 looks per frame: two objects often, not always, share one
    with pytest.raises(SceneError):
        Appearance(shared_look_probability=2.0)


def test_appearance_rejects_bad_ranges():
    with pytest.raises(SceneError):
        Appearance(glossy_object_probability=1.5)
    with pytest.raises(SceneError):
        Appearance(exposure=(1.2, 0.8))


# ------------------------------------------------------------------------------------------------ depth noise
def _step_depth(h=60, w=200, near=0.6, far=1.0):
    d = np.full((h, w), far, np.float32)
    d[:, 100:140] = near
    return d


def test_projector_shadow_band_width_and_side():
    fx, b = 570.0, 0.075
    d = _step_depth()
    quiet = dict(disparity_std=0.0, edge_dropout=0.0, holes_per_megapixel=0.0, color_std=0.0)
    right = SensorNoise(baseline=b, shadow_baseline=b, **quiet).apply_depth(d, fx, _rng(0))
    left = SensorNoise(baseline=b, shadow_baseline=-b, **quiet).apply_depth(d, fx, _rng(0))
    expect = fx * b * (1 / 0.6 - 1 / 1.0)  # ~28.5 px of background the projector cannot see
    band_r = np.isnan(right[30]).nonzero()[0]
    band_l = np.isnan(left[30]).nonzero()[0]
    # projector to the right: the band lies left of the near object, and vice versa
    assert band_r.size and band_r.max() < 100 and abs(band_r.size - expect) <= 2
    assert band_l.size and band_l.min() >= 140 and abs(band_l.size - expect) <= 2
    # the near object itself keeps its depth
    assert np.isfinite(right[:, 100:140]).all() and np.isfinite(left[:, 100:140]).all()


def test_depth_noise_grows_with_distance_and_has_a_correlated_part():
    fx = 600.0
    noise = SensorNoise(edge_dropout=0.0, holes_per_megapixel=0.0, color_std=0.0)
    rms = []
    for z in (0.5, 1.0, 2.0):
        d = np.full((120, 160), z, np.float32)
        out = noise.apply_depth(d, fx, _rng(1))
        rms.append(float(np.sqrt(np.nanmean((out - z) ** 2))))
    # disparity noise: sigma_z = z^2 * sigma_d / (fx * b): expected 0.67, 2.7, 10.7 mm (+ quantisation)
    assert 0.0004 < rms[0] < 0.002 and 0.0015 < rms[1] < 0.005 and 0.006 < rms[2] < 0.018
    assert rms[0] < rms[1] < rms[2]
    smooth = SensorNoise(disparity_std=0.0, subpixel=1e-4, edge_dropout=0.0, holes_per_megapixel=0.0,
                         correlated_std=0.005, color_std=0.0)
    d = np.full((120, 160), 1.0, np.float32)
    out = smooth.apply_depth(d, fx, _rng(2)) - 1.0
    assert 0.001 < float(np.nanstd(out)) < 0.015  # a bias of millimetres ...
    assert float(np.nanstd(np.diff(out, axis=1))) < 0.1 * float(np.nanstd(out))  # ... that varies slowly


def test_dark_and_glare_pixels_lose_depth():
    d = np.full((40, 40), 0.8, np.float32)
    color = np.full((40, 40, 3), 200, np.uint8)
    color[:, :20] = 5  # dark half
    glare = np.zeros((40, 40), bool)
    glare[30:, 30:] = True
    noise = SensorNoise(disparity_std=0.0, edge_dropout=0.0, holes_per_megapixel=0.0, dark_dropout=1.0)
    out = noise.apply_depth(d, 600.0, _rng(0), color=color, glare=glare)
    assert np.isnan(out[:, :20]).all() and np.isnan(out[30:, 30:]).all()
    assert np.isfinite(out[:30, 20:]).all()


def test_default_noise_is_unchanged_by_the_new_options():
    d = np.random.default_rng(0).uniform(0.4, 1.5, size=(48, 64)).astype(np.float32)
    a = SensorNoise().apply_depth(d, 600.0, _rng(9))
    b = SensorNoise(correlated_std=0.0, shadow_baseline=0.0, dark_dropout=0.0, registration_baseline=0.0,
                    noise_cell_px=0.0, smooth_ksize=0, edge_band_px=0, dark_blob_px=0.0).apply_depth(d, 600.0, _rng(9))
    np.testing.assert_array_equal(a, b)


def test_registration_occlusion_band_lies_opposite_the_projector_shadow():
    fx = 1067.0
    d = _step_depth()
    quiet = dict(disparity_std=0.0, edge_dropout=0.0, holes_per_megapixel=0.0, color_std=0.0)
    out = SensorNoise(baseline=0.075, shadow_baseline=0.075, registration_baseline=-0.025, **quiet).apply_depth(
        d, fx, _rng(0))
    band = np.isnan(out[30])
    shadow, occluded = band[:100].nonzero()[0], band[140:].nonzero()[0]
    scale = fx * (1 / 0.6 - 1 / 1.0)  # px per meter of baseline
    assert abs(shadow.size - 0.075 * scale) <= 2 and abs(occluded.size - 0.025 * scale) <= 2
    assert shadow.max() == 99 and occluded.min() == 0  # solid, and touching the object
    assert np.isfinite(out[:, 100:140]).all()


def _plateau_share(out: np.ndarray) -> float:
    dz = np.abs(np.diff(out, axis=1))
    return float(np.mean(dz[np.isfinite(dz)] == 0))


def _plane_rms(out: np.ndarray, z: np.ndarray) -> float:
    return float(np.sqrt(np.nanmean((out - z) ** 2)))


def test_registered_depth_has_plateaus_and_less_noise():
    fx, h, w = 1067.0, 120, 160
    # a tilted plane around 1 m
    z = (1.0 + 0.0005 * np.arange(w)[None, :] + 0.0003 * np.arange(h)[:, None]).astype(np.float32)
    quiet = dict(baseline=0.075, subpixel=1 / 64, edge_dropout=0.0, holes_per_megapixel=0.0, color_std=0.0)
    std = 1e-3 * fx * 0.075  # 1 mm RMS at 1 m
    raw = SensorNoise(disparity_std=std, **quiet).apply_depth(z, fx, _rng(3))
    cells = SensorNoise(disparity_std=std, noise_cell_px=2.0, **quiet).apply_depth(z, fx, _rng(3))
    smooth = SensorNoise(disparity_std=std, noise_cell_px=2.0, smooth_ksize=5, **quiet).apply_depth(z, fx, _rng(3))
    assert 0.0008 < _plane_rms(raw, z) < 0.0013
    assert _plateau_share(raw) < 0.2 and 0.35 < _plateau_share(cells) < 0.7 and _plateau_share(smooth) > 0.4
    assert _plane_rms(smooth, z) < 0.7 * _plane_rms(raw, z)
    assert np.isfinite(smooth).all()
    # the median keeps a depth step sharp: no pixel takes a depth between the two sides
    d = _step_depth()
    out = SensorNoise(disparity_std=0.02, smooth_ksize=5, **quiet).apply_depth(d, 600.0, _rng(4))
    assert not ((out > 0.65) & (out < 0.95)).any()


def _blobs(mask: np.ndarray) -> np.ndarray:
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return stats[1:, cv2.CC_STAT_AREA]


def test_edge_dropout_in_solid_bands():
    d = np.full((120, 200), 1.0, np.float32)
    for c in (30, 80, 130):
        d[20:100, c:c + 30] = 0.6
    quiet = dict(disparity_std=0.0, holes_per_megapixel=0.0, color_std=0.0, edge_dropout=0.8)
    coins = np.isnan(SensorNoise(**quiet).apply_depth(d, 600.0, _rng(5)))
    bands = np.isnan(SensorNoise(edge_band_px=3, **quiet).apply_depth(d, 600.0, _rng(5)))
    # about the same share of edges is hit, but in a few wide bands instead of many specks
    assert bands.sum() > 2 * coins.sum()
    assert len(_blobs(bands)) <= len(_blobs(coins)) and np.median(_blobs(bands)) > 1.5 * np.median(_blobs(coins))
    # the dropped pixels stay within edge_band_px of an edge
    assert not bands[:, :25].any() and not bands[:15].any()
    again = np.isnan(SensorNoise(edge_band_px=3, **quiet).apply_depth(d, 600.0, _rng(5)))
    np.testing.assert_array_equal(bands, again)


def test_dark_dropout_in_patches():
    d = np.full((200, 200), 0.8, np.float32)
    color = np.full((200, 200, 3), 10, np.uint8)  # all dark
    quiet = dict(disparity_std=0.0, edge_dropout=0.0, holes_per_megapixel=0.0, dark_dropout=0.1)
    speckle = np.isnan(SensorNoise(**quiet).apply_depth(d, 600.0, _rng(6), color=color))
    patches = np.isnan(SensorNoise(dark_blob_px=10.0, **quiet).apply_depth(d, 600.0, _rng(6), color=color))
    assert 0.07 < speckle.mean() < 0.13 and 0.03 < patches.mean() < 0.2
    assert np.median(_blobs(patches)) >= 50 and np.median(_blobs(speckle)) <= 2


def test_new_noise_options_are_checked():
    for bad in (dict(noise_cell_px=0.5), dict(smooth_ksize=7), dict(edge_band_px=-1), dict(dark_blob_px=-2.0)):
        with pytest.raises(SceneError):
            SensorNoise(**bad)


# ------------------------------------------------------------------------------------------------ sensors, recipe
def test_random_sensor_draws_real_sensor_families():
    seen = set()
    for s in range(60):
        name, k, noise = random_sensor(_rng(s), 640)
        assert isinstance(k, Intrinsics) and k.width == 640 and k.height in (360, 480, 576)
        assert 250 < k.fx < 1200 and abs(k.cx - 319.5) < 20
        assert noise.max_depth > noise.min_depth
        # broad ranges around real structured-light / stereo / ToF depth (docs/depth_stats.md)
        assert noise.dark_dropout <= 0.1 and noise.dark_blob_px >= 4 and 1 <= noise.edge_band_px <= 2
        assert 1.0 <= noise.noise_cell_px <= 3.0 and noise.smooth_ksize in (0, 3, 5)
        assert 0.01 <= abs(noise.registration_baseline) <= 0.035 and noise.holes_per_megapixel <= 15
        sigma_1m = noise.disparity_std / (k.fx * noise.baseline)  # depth noise (m) at 1 m before smoothing
        assert 0.0005 <= sigma_1m <= 0.0025
        if name in ("xtion_kinect1", "narrow_fov"):  # registration band opposite the projector shadow
            assert noise.shadow_baseline * noise.registration_baseline < 0
        seen.add(name)
        again = random_sensor(_rng(s), 640)
        assert again[0] == name and again[1] == k
    assert seen == {p.name for p in SENSORS}


def test_sim2real_scene_config_ranges():
    assert SIM2REAL.camera_distance[0] <= 0.35 and SIM2REAL.camera_distance[1] >= 1.5
    assert SIM2REAL.camera_elevation_deg == (20.0, 90.0)
    assert SIM2REAL.box_size[1] * SIM2REAL.box_aspect[1] >= 0.3 and SIM2REAL.box_size[0] <= 0.03


def test_synth_sim2real_recipe(tmp_path):
    from instance_seg_ros.tools.synth import SynthError, SynthParams, synthesize

    params = SynthParams(seed=3, width=160, height=120, min_objects=3, max_objects=5, noise=True,
                         recipe="sim2real", views_per_scene=2)
    summary = synthesize(tmp_path / "s", 2, params, progress=False)
    coco = json.loads((tmp_path / "s" / "annotations.json").read_text())
    assert summary["images"] == 4 and len(coco["annotations"]) > 0
    sensors = {im["sensor"] for im in coco["images"]}
    assert sensors <= {p.name for p in SENSORS}
    for im in coco["images"]:
        assert im["width"] == 160 and im["height"] in (90, 120, 144)
    assert json.loads((tmp_path / "s" / "synth_params.json").read_text())["recipe"] == "sim2real"
    with pytest.raises(SynthError):
        SynthParams(recipe="photoreal")
