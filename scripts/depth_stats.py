"""Sensor statistics of depth images: compare real RGB-D frames with `isr synth` output in one markdown table.

    python scripts/depth_stats.py --set real=../shared/realdata/ycbv --set sim2real=DIR --set plain=DIR \
        [--set sim2real_xtion=DIR --sensor sim2real_xtion=xtion_kinect1] [--max-images 100] [--out FILE.md]

A set is either a folder of real frames (``<frame>/depth.png`` + ``rgb.png`` + ``K.json``, as in
``../shared/realdata/ycbv``) or an ``isr synth`` output folder (``annotations.json``, ``color/``, ``depth/``).
Depth is uint16 millimetres with 0 = no reading. Only numpy and OpenCV are used, so the script runs anywhere.

Statistics (pixel counts are pooled over all frames of a set; distributions pool all samples of the set):

- **valid fraction**: nonzero depth pixels / all pixels.
- **depth p5 / p50 / p95**: percentiles of the valid depths (m) -- context, since most other figures depend on range.
- **depth jump**: two depths more than ``JUMP_MM`` (30 mm) apart at 1 m, measured in inverse depth
  (``|1/z1 - 1/z2| > 0.03 / m``: 7.5 mm at 0.5 m, 120 mm at 2 m). Triangulating sensors (structured light, stereo)
  have depth-independent noise in disparity, so a fixed millimetre threshold would call the noise of a far floor
  "jumps"; and the shadow a baseline ``b`` casts is ``fx * b * |1/z1 - 1/z2|`` px wide, so a jump by this
  definition is one that casts a shadow of a pixel or more (``fx * b`` > 33 px*m, e.g. 550 px * 7.5 cm = 41).
- **depth discontinuity**: two 4-neighbouring valid pixels with a depth jump between them, or the two valid pixels
  bounding a row or column run of at most ``MAX_GAP_PX`` invalid pixels with a depth jump across it (a jump with a
  hole in it). Both pixels of such a pair are discontinuity pixels.
- **valid fraction, frame median / p10**: the same per frame, to tell a few empty frames from a general deficit.
- **invalid in wide regions**: share of the invalid pixels in 8-connected invalid components that hold an
  invalid disc of radius ``WIDE_PX`` (25 px) or more, i.e. some pixel is at least 25 px from every valid pixel --
  regions with no surface in range (no floor rendered, beyond ``max_depth``) rather than sensor dropout, which comes
  in bands and holes a few pixels wide (the connected edge bands of real frames can be large in area but stay thin,
  so area alone does not separate them). These pixels are left out of the *excluding wide regions* and *away from
  edges* rows; *valid fraction excluding wide regions* = valid / (all - wide-region pixels).
- **invalid near discontinuities**: share of the invalid pixels lying within 3 px (Chebyshev, i.e. a 7x7 window)
  of a discontinuity pixel; once over all invalid pixels and once excluding wide regions.
- **edge bands** (rows only: a structured-light / stereo baseline is horizontal): every horizontal depth jump is
  either direct (valid next to valid) or bridged by a run of 1..``MAX_GAP_PX`` invalid pixels that does not touch
  the image border. *jumps with a band* = bridged / all jumps; *band width* = the run length in px (median and p90
  over bridged jumps); *band left of near surface* = share of bands whose nearer bounding surface is on their right,
  i.e. the band lies on the left of the nearer object; *implied baseline* = median over bands of
  ``width / (fx * (1/z_near - 1/z_far))`` in mm, the projector/camera offset that would cast a shadow that wide
  (independent of resolution and focal length, so sets with different cameras can be compared).
- **invalid on dark / mid / bright pixels**: invalid fraction among pixels with luminance
  ``Y = 0.299 R + 0.587 G + 0.114 B`` below ``DARK_Y`` (40), in between, and at or above ``BRIGHT_Y`` (220,
  near-saturated glare), counting only pixels away from edges (outside the 7x7 neighbourhood of a discontinuity and
  outside every bridged run), so edge shadows do not leak into it, and outside wide
  invalid regions. *invalid away from edges* is the same fraction
  over all luminances.
- **plane noise**: for every 7x7 window whose 49 pixels are valid and contain no discontinuity pixel, the RMS
  residual (mm) of a least-squares plane ``z = a + b x + c y`` fitted to its depths; median over windows, binned by
  the window's mean depth into 0.5-0.8, 0.8-1.2, 1.2-2.0 m (n = windows in the bin). For i.i.d. noise of standard
  deviation s the expected value is ``s * sqrt(46 / 49)``.
- **invalid blobs**: 8-connected components of invalid pixels; median and p90 area (px) and blobs per 100k px.
- **quantisation at ~1 m**: over 4-neighbouring valid pairs both within 0.95-1.05 m and at most ``JUMP_MM`` apart,
  *step* = the smallest nonzero ``|dz|`` (mm) that accounts for at least 1 % of the nonzero differences (robust to
  stray values), *plateau share* = share of pairs with ``dz == 0``. Registered (reprojected) depth such as
  YCB-Video's blurs the sensor's disparity steps to 1 mm, so compare the plateau share too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

JUMP_MM = 30.0
MAX_GAP_PX = 50
WIDE_PX = 25
NEAR_PX = 3
PLANE_WIN = 7
DEPTH_BINS_M = ((0.5, 0.8), (0.8, 1.2), (1.2, 2.0))
DARK_Y = 40
BRIGHT_Y = 220
QUANT_RANGE_MM = (950, 1050)


@dataclass
class Frame:
    """One RGB-D frame: ``depth`` (uint16[H, W], mm, 0 = invalid), ``luma`` (float32[H, W], 0..255), ``fx`` (px)."""

    name: str
    depth: np.ndarray
    luma: np.ndarray
    fx: float
    sensor: str = ""


# ----------------------------------------------------------------------------------------------------- loading


def _luma(bgr: np.ndarray) -> np.ndarray:
    b, g, r = (bgr[..., i].astype(np.float32) for i in range(3))
    return 0.299 * r + 0.587 * g + 0.114 * b


def _read_pair(depth_path: Path, color_path: Path) -> tuple[np.ndarray, np.ndarray]:
    depth = cv2.imread(str(depth_path), cv2.IMREAD_UNCHANGED)
    color = cv2.imread(str(color_path), cv2.IMREAD_COLOR)
    if depth is None or color is None:
        raise ValueError(f"cannot read {depth_path} or {color_path}; is the set complete?")
    if depth.dtype != np.uint16 or depth.ndim != 2:
        raise ValueError(f"{depth_path}: expected single-channel uint16 depth in mm, got {depth.dtype} {depth.shape}")
    if color.shape[:2] != depth.shape:
        raise ValueError(f"{color_path}: color {color.shape[:2]} and depth {depth.shape} differ in size")
    return depth, _luma(color)


def load_frames(root: str | Path, max_images: int = 0, sensor: str = "") -> Iterator[Frame]:
    """Frames of a real-frame folder or an ``isr synth`` folder (detected by ``annotations.json``), in name order.

    ``max_images`` > 0 keeps the first N; ``sensor`` keeps only synth images whose ``sensor`` field equals it."""
    root = Path(root)
    ann = root / "annotations.json"
    n = 0
    if ann.is_file():
        images = sorted(json.loads(ann.read_text())["images"], key=lambda im: im["file_name"])
        for im in images:
            if sensor and im.get("sensor", "") != sensor:
                continue
            if max_images and n >= max_images:
                return
            depth, luma = _read_pair(root / im["depth_file"], root / im["file_name"])
            if float(im.get("depth_scale", 0.001)) != 0.001:
                raise ValueError(f"{root}: depth_scale {im['depth_scale']} is not millimetres")
            n += 1
            yield Frame(im["file_name"], depth, luma, float(im["intrinsics"]["fx"]), im.get("sensor", ""))
        return
    dirs = sorted(p.parent for p in root.glob("*/depth.png"))
    if not dirs:
        raise ValueError(f"{root}: neither an isr synth folder (annotations.json) nor real frames (*/depth.png)")
    if sensor:
        raise ValueError("--sensor only applies to isr synth sets, which record the simulated sensor per image")
    for d in dirs[: max_images or None]:
        depth, luma = _read_pair(d / "depth.png", d / "rgb.png")
        k = json.loads((d / "K.json").read_text())
        yield Frame(d.name, depth, luma, float(k["fx"]), "real")


# ------------------------------------------------------------------------------------------ per-frame measures


@dataclass
class Gaps:
    """Invalid runs along the rows of an image that bridge a depth jump (both ends valid, inside the image).

    Arrays are int64[N] / float64[N]: ``row, start`` (first invalid column), ``width`` (px), ``z_left, z_right``
    (mm, the bounding valid depths)."""

    row: np.ndarray
    start: np.ndarray
    width: np.ndarray
    z_left: np.ndarray
    z_right: np.ndarray


def bridged_gaps(depth: np.ndarray, jump_mm: float = JUMP_MM, max_gap: int = MAX_GAP_PX) -> Gaps:
    """Row runs of 1..``max_gap`` invalid pixels whose two bounding valid depths are a jump (:func:`is_jump`).

    ``depth``: uint16/float[H, W] in mm, 0 = invalid. Runs touching the left or right image border are skipped."""
    h, w = depth.shape
    inv = np.zeros((h, w + 2), dtype=np.int8)
    inv[:, 1:-1] = depth == 0
    d = np.diff(inv.ravel())
    starts = np.flatnonzero(d == 1) + 1  # flat index (padded) of the first invalid pixel of a run
    ends = np.flatnonzero(d == -1) + 1  # flat index (padded) one past the run
    row, col = np.divmod(starts, w + 2)
    col = col - 1
    width = ends - starts
    keep = (col > 0) & (col + width < w) & (width <= max_gap)
    row, col, width = row[keep], col[keep], width[keep]
    zl = depth[row, col - 1].astype(np.float64)
    zr = depth[row, col + width].astype(np.float64)
    jump = is_jump(zl, zr, jump_mm)
    return Gaps(row[jump], col[jump], width[jump], zl[jump], zr[jump])


def is_jump(za: np.ndarray, zb: np.ndarray, jump_mm: float = JUMP_MM) -> np.ndarray:
    """bool: depths ``za, zb`` (mm, > 0) differ by more than ``jump_mm`` at 1 m, in inverse depth:
    ``|1/za - 1/zb| > jump_mm / 1 m^2``, i.e. ``|za - zb| > jump_mm * za * zb / 1e6``."""
    za = np.asarray(za, np.float64)
    zb = np.asarray(zb, np.float64)
    return np.abs(za - zb) > jump_mm * za * zb / 1e6


def _direct_jumps(depth: np.ndarray, jump_mm: float, axis: int) -> np.ndarray:
    """bool[H, W-1] (axis 1) or [H-1, W] (axis 0): neighbouring valid pixels with :func:`is_jump` between them."""
    z = depth.astype(np.float64)
    a = z[:, :-1] if axis == 1 else z[:-1, :]
    b = z[:, 1:] if axis == 1 else z[1:, :]
    return (a > 0) & (b > 0) & is_jump(a, b, jump_mm)


def discontinuities(depth: np.ndarray, jump_mm: float = JUMP_MM, max_gap: int = MAX_GAP_PX) -> np.ndarray:
    """bool[H, W]: valid pixels on a depth discontinuity, direct or across a bridged invalid run (rows and columns)."""
    disc = np.zeros(depth.shape, dtype=bool)
    for axis in (1, 0):
        j = _direct_jumps(depth, jump_mm, axis)
        if axis == 1:
            disc[:, :-1] |= j
            disc[:, 1:] |= j
        else:
            disc[:-1, :] |= j
            disc[1:, :] |= j
    g = bridged_gaps(depth, jump_mm, max_gap)
    disc[g.row, g.start - 1] = True
    disc[g.row, g.start + g.width] = True
    gt = bridged_gaps(depth.T, jump_mm, max_gap)
    disc[gt.start - 1, gt.row] = True
    disc[gt.start + gt.width, gt.row] = True
    return disc


def bridged_mask(depth: np.ndarray, jump_mm: float = JUMP_MM, max_gap: int = MAX_GAP_PX) -> np.ndarray:
    """bool[H, W]: invalid pixels inside a bridged run, along rows or columns."""
    out = np.zeros(depth.shape, dtype=bool)
    for transpose in (False, True):
        g = bridged_gaps(depth.T if transpose else depth, jump_mm, max_gap)
        if len(g.width) == 0:
            continue
        rows = np.repeat(g.row, g.width)
        offset = np.arange(g.width.sum()) - np.repeat(np.cumsum(g.width) - g.width, g.width)  # 0..width-1 per run
        cols = np.repeat(g.start, g.width) + offset
        if transpose:
            out[cols, rows] = True
        else:
            out[rows, cols] = True
    return out


def near_mask(mask: np.ndarray, radius: int = NEAR_PX) -> np.ndarray:
    """bool[H, W]: pixels within ``radius`` px (Chebyshev) of a True pixel of ``mask``."""
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), k) > 0


def plane_rms(depth: np.ndarray, disc: np.ndarray | None = None, win: int = PLANE_WIN) -> tuple[np.ndarray, np.ndarray]:
    """RMS residual (mm) of a least-squares plane in every ``win`` x ``win`` window that is all valid and (when
    ``disc`` is given) free of discontinuity pixels. Returns ``(rms, mean_depth_mm)``, both float64[N].

    With centred pixel coordinates x, y the fit separates: a = mean z, b = sum(x z) / sum(x^2), c likewise, and the
    residual sum of squares is ``sum z^2 - n a^2 - b^2 sum x^2 - c^2 sum y^2``; all sums are box filters."""
    if win % 2 != 1 or win < 3:
        raise ValueError(f"win must be an odd number >= 3, got {win}")
    z = depth.astype(np.float64)
    r = win // 2
    n = float(win * win)
    x = np.tile(np.arange(-r, r + 1, dtype=np.float64), (win, 1))
    sxx = float((x**2).sum())
    ones = np.ones((win, win), np.float64)

    def corr(img: np.ndarray, k: np.ndarray) -> np.ndarray:
        return cv2.filter2D(img, cv2.CV_64F, k, borderType=cv2.BORDER_CONSTANT)

    valid = (z > 0).astype(np.float64)
    ok = corr(valid, ones) > n - 0.5
    if disc is not None:
        ok &= corr(disc.astype(np.float64), ones) < 0.5
    # interior only: windows that reach past the border are partly zero-padded
    ok[:r, :] = ok[-r:, :] = False
    ok[:, :r] = ok[:, -r:] = False
    if not ok.any():
        return np.empty(0), np.empty(0)
    # subtract a coarse offset so the sums of squares stay well conditioned
    off = float(np.median(z[z > 0]))
    zc = np.where(z > 0, z - off, 0.0)
    s = corr(zc, ones)
    sz2 = corr(zc * zc, ones)
    sxz = corr(zc, x)
    syz = corr(zc, x.T)
    a = s[ok] / n
    rss = sz2[ok] - n * a * a - sxz[ok] ** 2 / sxx - syz[ok] ** 2 / sxx
    return np.sqrt(np.maximum(rss, 0.0) / n), a + off


def neighbour_diffs(depth: np.ndarray, lo: float, hi: float, jump_mm: float = JUMP_MM) -> np.ndarray:
    """int64[N]: ``|dz|`` (mm) of 4-neighbouring valid pairs with both depths in [lo, hi] mm and ``|dz| <= jump_mm``."""
    z = depth.astype(np.int64)
    out = []
    for a, b in ((z[:, :-1], z[:, 1:]), (z[:-1, :], z[1:, :])):
        m = (a >= lo) & (a <= hi) & (b >= lo) & (b <= hi)
        d = np.abs(a[m] - b[m])
        out.append(d[d <= jump_mm])
    return np.concatenate(out)


def quant_step(diffs: np.ndarray, min_share: float = 0.01) -> float:
    """Smallest nonzero value of ``diffs`` (int mm) holding at least ``min_share`` of the nonzero ones; NaN if none."""
    nz = diffs[diffs > 0]
    if nz.size == 0:
        return float("nan")
    vals, counts = np.unique(nz, return_counts=True)
    big = vals[counts >= min_share * nz.size]
    return float(big.min()) if big.size else float("nan")


def wide_invalid_mask(depth: np.ndarray, radius: float = WIDE_PX) -> np.ndarray:
    """bool[H, W]: invalid pixels in 8-connected invalid components with a pixel ``radius`` px or more (Euclidean)
    from the nearest valid pixel. An all-invalid image is one wide region."""
    inv = (depth == 0).astype(np.uint8)
    if not inv.any():
        return np.zeros(depth.shape, dtype=bool)
    if inv.all():
        return np.ones(depth.shape, dtype=bool)
    dist = cv2.distanceTransform(inv, cv2.DIST_L2, 5)
    _, labels = cv2.connectedComponents(inv, connectivity=8)
    wide = np.unique(labels[dist >= radius])
    wide = wide[wide > 0]
    return np.isin(labels, wide) if wide.size else np.zeros(depth.shape, dtype=bool)


def invalid_blob_areas(depth: np.ndarray) -> np.ndarray:
    """int64[N]: areas (px) of the 8-connected components of invalid pixels."""
    n, _, stats, _ = cv2.connectedComponentsWithStats((depth == 0).astype(np.uint8), connectivity=8)
    return stats[1:, cv2.CC_STAT_AREA].astype(np.int64)


# --------------------------------------------------------------------------------------------------- one set


@dataclass
class SetStats:
    """Pooled measurements of one set; ``add`` one frame at a time, ``summary`` gives the table cells."""

    frames: int = 0
    pixels: int = 0
    invalid: int = 0
    invalid_near: int = 0
    invalid_wide: int = 0
    invalid_near_small: int = 0
    valid_frac: list = field(default_factory=list)
    direct_jumps: int = 0
    lum: dict = field(default_factory=lambda: {k: [0, 0] for k in ("dark", "mid", "bright", "all")})
    depths: list = field(default_factory=list)
    band_w: list = field(default_factory=list)
    band_left: list = field(default_factory=list)
    band_base: list = field(default_factory=list)
    rms: list = field(default_factory=list)
    rms_z: list = field(default_factory=list)
    blobs: list = field(default_factory=list)
    qdiffs: list = field(default_factory=list)
    fx: list = field(default_factory=list)
    sizes: set = field(default_factory=set)

    def add(self, f: Frame) -> None:
        depth = f.depth
        valid = depth > 0
        self.frames += 1
        self.pixels += depth.size
        self.invalid += int((~valid).sum())
        self.fx.append(f.fx)
        self.sizes.add(f"{depth.shape[1]}x{depth.shape[0]}")
        self.depths.append(depth[valid][:: max(1, int(valid.sum()) // 20000)].astype(np.float32))

        disc = discontinuities(depth)
        near = near_mask(disc)
        self.invalid_near += int((~valid & near).sum())
        self.valid_frac.append(float(valid.mean()))
        wide = wide_invalid_mask(depth)
        self.invalid_wide += int(wide.sum())
        self.invalid_near_small += int((~valid & ~wide & near).sum())

        g = bridged_gaps(depth)
        self.direct_jumps += int(_direct_jumps(depth, JUMP_MM, axis=1).sum())
        self.band_w.append(g.width)
        self.band_left.append(g.z_right < g.z_left)
        zn, zf = np.minimum(g.z_left, g.z_right) / 1000.0, np.maximum(g.z_left, g.z_right) / 1000.0
        self.band_base.append(1000.0 * g.width / (f.fx * (1.0 / zn - 1.0 / zf)))

        away = ~(near | bridged_mask(depth) | wide)
        for key, sel in (
            ("dark", f.luma < DARK_Y),
            ("mid", (f.luma >= DARK_Y) & (f.luma < BRIGHT_Y)),
            ("bright", f.luma >= BRIGHT_Y),
            ("all", np.ones_like(valid)),
        ):
            m = away & sel
            self.lum[key][0] += int((m & ~valid).sum())
            self.lum[key][1] += int(m.sum())

        rms, mz = plane_rms(depth, disc)
        self.rms.append(rms.astype(np.float32))
        self.rms_z.append(mz.astype(np.float32))
        self.blobs.append(invalid_blob_areas(depth))
        self.qdiffs.append(neighbour_diffs(depth, *QUANT_RANGE_MM))

    def summary(self) -> dict[str, str]:
        cat = np.concatenate
        out: dict[str, str] = {}
        out["frames"] = str(self.frames)
        out["image size; fx median (px)"] = f"{', '.join(sorted(self.sizes))}; {np.median(self.fx):.0f}"
        out["valid fraction"] = _pct(1 - self.invalid / max(self.pixels, 1))
        p = np.percentile(cat(self.depths), [5, 50, 95]) / 1000 if self.depths else [np.nan] * 3
        vf = np.percentile(self.valid_frac, [50, 10])
        out["valid fraction, frame median / p10"] = " / ".join(_pct(v) for v in vf)
        out[f"invalid in wide regions (>= {WIDE_PX} px from valid)"] = _pct(self.invalid_wide / max(self.invalid, 1))
        out["valid fraction excluding wide regions"] = _pct(
            (self.pixels - self.invalid) / max(self.pixels - self.invalid_wide, 1)
        )
        out["depth p5 / p50 / p95 (m)"] = " / ".join(f"{v:.2f}" for v in p)
        out["invalid within 3 px of a discontinuity"] = _pct(self.invalid_near / max(self.invalid, 1))
        small = self.invalid - self.invalid_wide
        out["... excluding wide regions"] = _pct(self.invalid_near_small / small) if small else "-"
        w = cat(self.band_w)
        out["horizontal jumps with an invalid band"] = _pct(w.size / max(w.size + self.direct_jumps, 1))
        out["band width median / p90 (px)"] = _pq(w, (50, 90), "{:.0f}")
        out["band left of near surface"] = _pct(cat(self.band_left).mean()) if w.size else "-"
        out["implied baseline median (mm)"] = _pq(cat(self.band_base), (50,), "{:.0f}")
        for key, label in (
            ("dark", f"Y < {DARK_Y}"),
            ("mid", f"{DARK_Y} <= Y < {BRIGHT_Y}"),
            ("bright", f"Y >= {BRIGHT_Y}"),
        ):
            bad, tot = self.lum[key]
            out[f"invalid away from edges, {label}"] = f"{_pct(bad / tot)} (n={_k(tot)})" if tot else "-"
        bad, tot = self.lum["all"]
        out["invalid away from edges, all"] = _pct(bad / max(tot, 1))
        rms, rz = cat(self.rms), cat(self.rms_z)
        for lo, hi in DEPTH_BINS_M:
            sel = (rz >= lo * 1000) & (rz < hi * 1000)
            cell = f"{np.median(rms[sel]):.2f} (n={_k(int(sel.sum()))})" if sel.any() else "-"
            out[f"plane RMS 7x7, {lo}-{hi} m (mm)"] = cell
        b = cat(self.blobs)
        out["invalid blob area median / p90 (px)"] = _pq(b, (50, 90), "{:.0f}")
        out["invalid blobs per 100k px"] = f"{100_000 * b.size / max(self.pixels, 1):.1f}"
        q = cat(self.qdiffs)
        step = quant_step(q)
        out["quantisation step at ~1 m (mm)"] = "-" if np.isnan(step) else f"{step:.0f}"
        out["equal-neighbour share at ~1 m"] = f"{_pct((q == 0).mean())} (n={_k(q.size)})" if q.size else "-"
        return out


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def _k(n: int) -> str:
    return f"{n / 1000:.0f}k" if n >= 10_000 else str(n)


def _pq(v: np.ndarray, qs: tuple[int, ...], fmt: str) -> str:
    if v.size == 0:
        return "-"
    return " / ".join(fmt.format(x) for x in np.percentile(v, qs))


def markdown_table(columns: dict[str, dict[str, str]]) -> str:
    """Rows = statistics, one column per set."""
    names = list(columns)
    rows = list(next(iter(columns.values())))
    lines = ["| statistic | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += ["| " + r + " | " + " | ".join(columns[n].get(r, "-") for n in names) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a real-frame folder or an isr synth folder, with the column name (repeatable)",
    )
    p.add_argument("--max-images", type=int, default=100, help="first N frames of each set (0 = all; default 100)")
    p.add_argument(
        "--sensor",
        action="append",
        default=[],
        metavar="[NAME=]SENSOR",
        help="keep only synth images of this simulated sensor (the image's 'sensor' field), in set NAME "
        "or, without NAME=, in every synth set (repeatable)",
    )
    p.add_argument("--out", default=None, metavar="FILE.md", help="also write the table here")
    a = p.parse_args(argv)

    sensor_for: dict[str, str] = {}
    for spec in a.sensor:
        name, _, sensor = spec.rpartition("=")
        sensor_for[name or "*"] = sensor
    columns: dict[str, dict[str, str]] = {}
    for spec in a.sets:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            p.error(f"--set wants NAME=DIR, got {spec!r}")
        sensor = sensor_for.get(name, sensor_for.get("*", ""))
        if sensor and not (Path(path) / "annotations.json").is_file():
            sensor = ""  # real frames: there is only the one sensor
        stats = SetStats()
        for frame in load_frames(path, a.max_images, sensor):
            stats.add(frame)
        if stats.frames == 0:
            p.error(f"set {name!r} ({path}) has no frames" + (f" of sensor {sensor!r}" if sensor else ""))
        columns[name] = stats.summary()
        print(f"{name}: {stats.frames} frames from {path}" + (f" (sensor {sensor})" if sensor else ""), file=sys.stderr)
    table = markdown_table(columns)
    print(table)
    if a.out:
        Path(a.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
