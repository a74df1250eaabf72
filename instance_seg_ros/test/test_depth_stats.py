"""scripts/depth_stats.py on constructed depth images whose band widths, plane noise and holes are known."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "depth_stats.py"


@pytest.fixture(scope="module")
def ds():
    spec = importlib.util.spec_from_file_location("depth_stats", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["depth_stats"] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("depth_stats", None)


FX = 600.0
BASELINE_M = 0.05
Z_FAR, Z_NEAR = 1000, 750
# the shadow a 5 cm baseline casts beside a 0.75 m edge on a 1.0 m background at fx 600: 10 px
BAND = round(FX * BASELINE_M * (1000 / Z_NEAR - 1000 / Z_FAR))


def step_scene() -> np.ndarray:
    """uint16[120, 200] mm: background at 1.0 m, a box at 0.75 m (rows 30-89, cols 100-159) with an invalid band of
    ``BAND`` px on its left, and a 4x4 hole in the background."""
    z = np.full((120, 200), Z_FAR, np.uint16)
    z[30:90, 100:160] = Z_NEAR
    z[30:90, 100 - BAND : 100] = 0
    z[10:14, 20:24] = 0
    return z


def test_band_width_side_and_implied_baseline(ds):
    assert BAND == 10
    g = ds.bridged_gaps(step_scene())
    assert len(g.width) == 60  # one band per box row; the hole has no depth jump across it
    assert set(g.width.tolist()) == {BAND}
    assert np.all(g.z_right < g.z_left)  # nearer surface on the band's right: the band is left of the box
    stats = ds.SetStats()
    stats.add(ds.Frame("step", step_scene(), np.full((120, 200), 128, np.float32), FX))
    s = stats.summary()
    assert s["band width median / p90 (px)"] == "10 / 10"
    assert s["band left of near surface"] == "100.0 %"
    assert s["implied baseline median (mm)"] == "50"
    # 60 bridged jumps on the left edge, 60 direct ones on the right edge of the box
    assert s["horizontal jumps with an invalid band"] == "50.0 %"


def test_invalid_near_discontinuity_and_blobs(ds):
    z = step_scene()
    near = ds.near_mask(ds.discontinuities(z))
    invalid = z == 0
    # band columns 90..99: the 3 next to the background edge and the 3 next to the box, on 60 rows; not the hole
    assert int((invalid & near).sum()) == 6 * 60
    assert not near[10:14, 20:24].any()
    assert sorted(ds.invalid_blob_areas(z).tolist()) == [16, BAND * 60]
    assert not ds.wide_invalid_mask(z).any()  # a 10 px band is thin, not an empty region
    z2 = z.copy()
    z2[:, 150:] = 0  # 50 px wide strip at the border: no surface there
    assert ds.wide_invalid_mask(z2)[:, 150:].all()


def test_plane_noise_rms(ds):
    rng = np.random.default_rng(0)
    sigma = 2.0
    y, x = np.mgrid[0:160, 0:160]
    z = np.round(1000 + 0.4 * x + 0.2 * y + rng.normal(0, sigma, x.shape)).astype(np.uint16)
    rms, mean_z = ds.plane_rms(z)
    assert rms.size == (160 - 6) ** 2
    # the tilt is fitted away; 3 parameters of 49 leave var * 46/49 (rounding to mm adds 1/12 mm^2), and the median
    # of a chi-square with 46 degrees of freedom is ~0.986 of its mean
    expected = np.sqrt((sigma**2 + 1 / 12) * 46 / 49 * 0.986)
    assert np.median(rms) == pytest.approx(expected, rel=0.03)
    assert np.median(mean_z) == pytest.approx(1000 + 0.6 * 79.5, abs=1)
    # windows touching a discontinuity pixel are skipped
    disc = np.zeros(z.shape, bool)
    disc[80, 80] = True
    assert ds.plane_rms(z, disc)[0].size == (160 - 6) ** 2 - 49
    assert ds.plane_rms(np.zeros((20, 20), np.uint16))[0].size == 0


def test_quantisation_step(ds):
    x = np.arange(40)
    z = np.tile(999 + 3 * (x // 5), (20, 1)).astype(np.uint16)  # 3 mm steps every 5 px
    d = ds.neighbour_diffs(z, 950, 1050)
    assert ds.quant_step(d) == 3
    assert (d == 0).mean() == pytest.approx(1 - (7 * 20) / d.size)
    assert np.isnan(ds.quant_step(np.zeros(5, np.int64)))


def test_main_writes_table(ds, tmp_path):
    frame = tmp_path / "real" / "0000_000001"
    frame.mkdir(parents=True)
    z = step_scene()
    cv2.imwrite(str(frame / "depth.png"), z)
    rgb = np.full(z.shape + (3,), 200, np.uint8)
    rgb[:60] = 10  # top half dark
    cv2.imwrite(str(frame / "rgb.png"), rgb)
    (frame / "K.json").write_text(json.dumps({"fx": FX, "fy": FX, "cx": 99.5, "cy": 59.5, "width": 200, "height": 120}))
    out = tmp_path / "stats.md"
    assert ds.main(["--set", f"real={tmp_path / 'real'}", "--out", str(out)]) == 0
    table = out.read_text()
    assert table.startswith("| statistic | real |")
    assert "| band width median / p90 (px) | 10 / 10 |" in table
    # the only hole away from edges is the 4x4 one, on the dark half
    assert "| invalid away from edges, 40 <= Y < 220 | 0.0 %" in table
    assert "| invalid away from edges, Y < 40 | 0." in table
    with pytest.raises(SystemExit):
        ds.main(["--set", "no-equals-sign"])
