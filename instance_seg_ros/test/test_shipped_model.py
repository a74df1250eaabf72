"""The shipped model (``model.weights: bundled``): loads safely and finds the objects of an unseen scene."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instance_seg_ros.core.config import Config
from instance_seg_ros.core.matching import match_instances
from instance_seg_ros.core.model.weights import BUNDLED_WEIGHTS
from instance_seg_ros.core.pipeline import Segmenter
from instance_seg_ros.core.types import FrameResult

pytestmark = pytest.mark.skipif(not BUNDLED_WEIGHTS.is_file(), reason="no bundled model in this checkout")

# Scene seeds never used for training (isr synth --seed 1: 100003 + i) nor validation (--seed 777).
SEEDS = (4242, 4243, 4244)


def test_bundled_weights_load_with_weights_only():
    obj = torch.load(BUNDLED_WEIGHTS, map_location="cpu", weights_only=True)
    assert obj["format"] == "instance_seg_ros/amodal_maskrcnn"
    meta = obj["meta"]
    assert meta["classes"][0] == "__background__" and len(meta["classes"]) == 2
    assert BUNDLED_WEIGHTS.stat().st_size <= 50 * 1024 * 1024


@pytest.fixture(scope="module")
def segmenter():
    torch.set_num_threads(2)
    seg = Segmenter(Config.from_flat({"model.weights": "bundled", "model.device": "cpu", "model.warmup": False}))
    seg.load()
    return seg


def _scene(seed: int):
    from instance_seg_ros.sim.scene import Scene

    with Scene.random(seed) as scene:
        cam = scene.random_camera(seed=seed)
        return scene.render(cam)


def test_finds_unoccluded_objects_of_unseen_scenes(segmenter):
    found = total = 0
    for seed in SEEDS:
        frame = _scene(seed)
        gt = frame.to_frame_result()
        # unoccluded, and whole in the image
        keep = [o.occlusion < 0.1 and o.truncation < 0.05 for o in frame.ground_truth]
        gt_clear = FrameResult(gt.width, gt.height, [i for i, k in zip(gt.instances, keep, strict=True) if k],
                               gt.label_image)
        res = segmenter.process(frame.color, frame.depth, frame.intrinsics)
        matches = match_instances(res, gt_clear, iou_threshold=0.5)
        found += len(matches)
        total += len(gt_clear.instances)
        errs = [m.centroid_error_m for m in matches if np.isfinite(m.centroid_error_m)]
        if errs:
            assert np.median(errs) < 0.02, "matched instances' centroids should be within 2 cm"
    assert total >= 5
    assert found / total >= 0.8, f"found {found} of {total} unoccluded objects at IoU >= 0.5"
