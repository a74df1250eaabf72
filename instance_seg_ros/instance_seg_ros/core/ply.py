"""Point clouds to PLY files (binary little-endian; readable by Open3D, MeshLab and CloudCompare)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_ply"]


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """Binary little-endian PLY of ``points`` float32[N, 3] (+ ``colors`` uint8[N, 3]); readable by Open3D,
    MeshLab and CloudCompare."""
    pts = np.asarray(points, dtype="<f4").reshape(-1, 3)
    props = ["property float x", "property float y", "property float z"]
    if colors is not None:
        rgb = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        if rgb.shape[0] != pts.shape[0]:
            raise ValueError(f"colors has {rgb.shape[0]} rows but points has {pts.shape[0]}.")
        rec = np.empty(pts.shape[0], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                            ("red", "u1"), ("green", "u1"), ("blue", "u1")])
        rec["red"], rec["green"], rec["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        props += ["property uchar red", "property uchar green", "property uchar blue"]
    else:
        rec = np.empty(pts.shape[0], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    head = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {pts.shape[0]}", *props,
                      "end_header"]) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(head.encode("ascii"))
        fh.write(rec.tobytes())
    return path
