"""Procedural textures for appearance randomisation: packaging prints for objects, wood / stone / cloth /
carpet / paper for tables and floors, printed sheets for flat clutter.

Everything is drawn from a ``numpy.random.Generator`` with OpenCV primitives (no image files: nothing to ship or
license). Each function returns an ``uint8[size, size, 3]`` RGB image that tiles well enough to be sampled with
wrap-around.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PACKAGING_STYLES", "SURFACE_STYLES", "packaging_texture", "sheet_texture", "surface_texture"]

PACKAGING_STYLES = ("print", "stripes", "label", "plain")
SURFACE_STYLES = ("wood", "stone", "cloth", "carpet", "plain", "laminate")

_FONTS = None


def _fonts() -> list[int]:
    global _FONTS
    if _FONTS is None:
        import cv2

        _FONTS = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
                  cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX]
    return _FONTS


def _color(rng: np.random.Generator, saturated: bool | None = None) -> tuple[int, int, int]:
    """A random RGB color: often saturated (print), sometimes dark, light or gray."""
    import colorsys

    kind = rng.random() if saturated is None else (0.0 if saturated else 0.9)
    h = rng.random()
    if kind < 0.55:
        s, v = rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0)
    elif kind < 0.75:
        s, v = rng.uniform(0.0, 0.3), rng.uniform(0.75, 1.0)  # white-ish
    elif kind < 0.9:
        s, v = rng.uniform(0.0, 1.0), rng.uniform(0.05, 0.35)  # dark
    else:
        s, v = rng.uniform(0.0, 0.5), rng.uniform(0.3, 0.9)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1], ``cells`` random values per side upsampled (tiles)."""
    import cv2

    cells = max(2, int(cells))
    base = rng.random((cells, cells)).astype(np.float32)
    base = np.tile(base, (3, 3))
    up = cv2.resize(base, (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)[size:2 * size, size:2 * size]
    lo, hi = float(up.min()), float(up.max())
    return (up - lo) / max(hi - lo, 1e-6)


def _text(img: np.ndarray, rng: np.random.Generator, color: tuple[int, int, int], *, lines: int | None = None,
          region: tuple[int, int, int, int] | None = None) -> None:
    import cv2

    h, w = img.shape[:2]
    x0, y0, x1, y1 = region or (0, 0, w, h)
    n = int(rng.integers(1, 6)) if lines is None else lines
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 "
    for _ in range(n):
        word = "".join(rng.choice(list(letters), size=int(rng.integers(2, 12))))
        scale = float(rng.uniform(0.3, 1.8))
        thick = int(rng.integers(1, 4))
        org = (int(rng.uniform(x0 - 10, max(x0, x1 - 20))), int(rng.uniform(y0 + 10, max(y0 + 11, y1))))
        cv2.putText(img, word, org, int(rng.choice(_fonts())), scale, color, thick, cv2.LINE_AA)


def _barcode(img: np.ndarray, rng: np.random.Generator) -> None:
    h, w = img.shape[:2]
    bw, bh = int(rng.uniform(0.15, 0.35) * w), int(rng.uniform(0.08, 0.2) * h)
    x, y = int(rng.uniform(0, w - bw)), int(rng.uniform(0, h - bh))
    img[y:y + bh, x:x + bw] = 255
    xs = x + 3
    while xs < x + bw - 3:
        lw = int(rng.integers(1, 4))
        img[y + 2:y + bh - 2, xs:xs + lw] = 0
        xs += lw + int(rng.integers(1, 4))


def packaging_texture(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A product-package-like print: color fields or a gradient, stripes, logos, words, a barcode, speckle."""
    import cv2

    style = str(rng.choice(PACKAGING_STYLES, p=[0.5, 0.2, 0.2, 0.1]))
    img = np.empty((size, size, 3), np.uint8)
    c0, c1 = np.array(_color(rng), np.float32), np.array(_color(rng), np.float32)
    if rng.random() < 0.4:  # gradient
        t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        grad = c0 * (1 - t) + c1 * t
        img[:] = (grad if rng.random() < 0.5 else grad.transpose(1, 0, 2)).astype(np.uint8)
    else:
        img[:] = c0.astype(np.uint8)
    if style == "plain":
        if rng.random() < 0.5:
            _text(img, rng, _color(rng), lines=int(rng.integers(0, 3)))
        return img
    if style == "stripes":
        n = int(rng.integers(2, 9))
        for _ in range(n):
            y, t = int(rng.uniform(0, size)), int(rng.uniform(4, size / 4))
            img[y:y + t] = _color(rng)
        if rng.random() < 0.5:
            img = np.ascontiguousarray(img.transpose(1, 0, 2))
    for _ in range(int(rng.integers(1, 5))):  # color fields
        x0, y0 = rng.uniform(-0.2, 0.9, size=2) * size
        x1, y1 = x0 + rng.uniform(0.1, 0.8) * size, y0 + rng.uniform(0.1, 0.8) * size
        cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), _color(rng), -1)
    for _ in range(int(rng.integers(0, 4))):  # logos
        c = (int(rng.uniform(0, size)), int(rng.uniform(0, size)))
        ax = (int(rng.uniform(5, size / 4)), int(rng.uniform(5, size / 4)))
        cv2.ellipse(img, c, ax, float(rng.uniform(0, 180)), 0, 360, _color(rng), -1 if rng.random() < 0.7 else 3,
                    cv2.LINE_AA)
    if style == "label" or rng.random() < 0.3:  # a photo-like patch (food on cereal boxes)
        x, y = (int(v) for v in rng.uniform(0, size * 0.6, size=2))
        s = int(rng.uniform(0.2, 0.5) * size)
        patch = np.stack([_noise(rng, s, int(rng.integers(3, 8))) for _ in range(3)], axis=-1)
        tint = np.array(_color(rng, saturated=True), np.float32)
        img[y:y + s, x:x + s] = np.clip(patch * tint * 1.3, 0, 255).astype(np.uint8)[:size - y, :size - x]
    _text(img, rng, _color(rng))
    if rng.random() < 0.5:
        _text(img, rng, _color(rng), lines=int(rng.integers(3, 10)))
    if rng.random() < 0.4:
        _barcode(img, rng)
    return img


def surface_texture(rng: np.random.Generator, size: int = 256, style: str | None = None) -> np.ndarray:
    """A table / floor / wall surface: wood, stone, cloth, carpet, laminate or a plain noisy color."""
    style = style or str(rng.choice(SURFACE_STYLES))
    base = np.array(_color(rng, saturated=rng.random() < 0.2), np.float32)
    if style == "wood":
        base = np.array([rng.uniform(90, 200), rng.uniform(55, 140), rng.uniform(25, 90)], np.float32)
        y = np.arange(size, dtype=np.float32)[:, None]
        warp = _noise(rng, size, 4) * rng.uniform(5, 25)
        freq = rng.uniform(0.08, 0.3)
        grain = 0.5 + 0.5 * np.sin(freq * (y + warp) + 2 * np.pi * _noise(rng, size, 16) * 0.3)
        shade = 0.75 + 0.25 * grain + 0.1 * (_noise(rng, size, 32) - 0.5)
    elif style == "stone":
        shade = 0.7 + 0.3 * _noise(rng, size, 6) + 0.25 * (_noise(rng, size, 48) - 0.5) \
            + 0.15 * (rng.random((size, size)).astype(np.float32) - 0.5)
    elif style == "cloth":
        p = rng.uniform(2, 6)
        x = np.arange(size, dtype=np.float32)
        weave = np.abs(np.sin(np.pi * x[None, :] / p)) * np.abs(np.sin(np.pi * x[:, None] / p))
        shade = 0.8 + 0.2 * weave + 0.1 * (_noise(rng, size, 8) - 0.5)
    elif style == "carpet":
        shade = 0.75 + 0.5 * (rng.random((size, size)).astype(np.float32) - 0.5) + 0.2 * (_noise(rng, size, 12) - 0.5)
    elif style == "laminate":
        shade = 0.9 + 0.1 * _noise(rng, size, 3) + 0.04 * (rng.random((size, size)).astype(np.float32) - 0.5)
    else:
        shade = 0.95 + 0.05 * (_noise(rng, size, 4) - 0.5) * 2
    img = np.clip(base[None, None, :] * shade[..., None], 0, 255).astype(np.uint8)
    if style == "carpet" and rng.random() < 0.5:  # speckled two-tone carpet
        other = np.array(_color(rng, saturated=False), np.float32)
        m = rng.random((size, size)) < 0.3
        img[m] = np.clip(other * shade[m][:, None], 0, 255).astype(np.uint8)
    return img


def sheet_texture(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Flat clutter that is background: printed paper (text lines), a magazine page, a dark desk mat."""
    kind = rng.random()
    if kind < 0.45:  # paper with text
        img = np.full((size, size, 3), int(rng.uniform(215, 255)), np.uint8)
        _text(img, rng, (int(rng.uniform(0, 80)),) * 3, lines=int(rng.integers(4, 14)))
        return img
    if kind < 0.8:  # printed page / flyer
        return packaging_texture(rng, size)
    return surface_texture(rng, size, style=str(rng.choice(["cloth", "plain", "stone"])))
