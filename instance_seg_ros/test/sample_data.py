"""A deterministic two-instance FrameResult shared by a publisher process and the test that checks it."""

from __future__ import annotations

import numpy as np

from instance_seg_ros.core.types import FrameResult, InstanceResult

WIDTH, HEIGHT = 64, 48
FRAME_ID = "camera_color_optical_frame"
STAMP_NS = 1_700_000_123_456_789_000


def sample_result() -> FrameResult:
    rng = np.random.default_rng(7)
    instances = []
    label = np.zeros((HEIGHT, WIDTH), np.uint16)
    specs = [  # (bbox, amodal_bbox, n_points, with colors)
        ((5, 6, 10, 8), (5, 4, 12, 10), 50, True),
        ((30, 20, 7, 9), (28, 20, 9, 12), 0, False),
    ]
    for i, (bbox, abox, n, with_rgb) in enumerate(specs):
        x, y, w, h = bbox
        mask = rng.random((h, w)) > 0.3
        amodal = rng.random((abox[3], abox[2])) > 0.1
        pts = rng.normal(size=(n, 3)).astype(np.float32) + np.float32([0.1, -0.2, 0.8])
        colors = rng.integers(0, 256, size=(n, 3), dtype=np.uint8) if with_rgb else None
        label[y:y + h, x:x + w][mask & (label[y:y + h, x:x + w] == 0)] = i + 1
        instances.append(InstanceResult(
            index=i + 1, class_id=1 + i, class_name=f"object_{i}", score=0.9 - 0.2 * i,
            bbox=bbox, mask=mask, amodal_bbox=abox, amodal_mask=amodal,
            occlusion=0.25 * (i + 1), is_occluded=bool(i), points=pts, colors=colors,
            depth_coverage=0.5 + 0.25 * i,
            centroid=pts.mean(axis=0).astype(np.float64) if n else np.zeros(3),
            box_center=np.array([0.1, -0.2, 0.8 + i]), box_quat=np.array([0.0, 0.0, np.sin(0.3), np.cos(0.3)]),
            box_size=np.array([0.1, 0.05 * (i + 1), 0.02]), track_id=100 + i,
        ))
    return FrameResult(width=WIDTH, height=HEIGHT, instances=instances, label_image=label)
