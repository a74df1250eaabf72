"""The fast paths give the same instances as the plain path.

"Plain path" here is concrete code that still runs: ``Segmenter(config, reference=True)`` (default memory
format, masks pasted one RoI at a time, mask statistics by torch reductions over the full [N, H, W] stack, one
device copy per crop), and the naive baseline of ``isr bench`` (per-instance full-image lifting, messages filled
element by element). The accelerator code paths (channels-last network, batched paste, device-side mask summary)
are run on the CPU too, so their equivalence is checked on every machine; the CUDA / fp16 comparison runs where
a GPU is present.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from instance_seg_ros.core.config import Config
from instance_seg_ros.core.lifting import lift_instances
from instance_seg_ros.core.model.predictor import (
    paste_masks_batched,
    paste_masks_opencv,
    paste_masks_thresholded,
    paste_regions,
)
from instance_seg_ros.core.pipeline import Segmenter, summarize_masks

CPU_FAST = Path(__file__).resolve().parent.parent / "config" / "cpu_fast.yaml"


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: one thread is stable, more can thrash
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def frame():
    from instance_seg_ros.tools.bench_frame import make_frame

    return make_frame(640, 480, 6, seed=3)


def _profile(**extra) -> Config:
    """The CPU profile with untrained weights, fixed to one thread and a non-trivial mask threshold."""
    cfg = Config.from_yaml(CPU_FAST)
    return cfg.replace(**{"model.weights": "none", "model.score_threshold": 0.0, "model.mask_threshold": 0.5,
                          "model.threads": 1, "model.warmup": False, "model.max_instances": 6, **extra})


class _ShapedLogits(nn.Module):
    """Mask logits = a fixed elliptic blob (positive inside, negative outside) + a small share of the learned
    1x1 conv: an untrained net's own logits are nearly constant over an RoI (every mask would be empty or the
    whole box, depending on the random init), these give real shapes whose edges still depend on the features."""

    def __init__(self, conv: nn.Conv2d, radius: float) -> None:
        super().__init__()
        self.conv = conv
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.01)
            conv.bias.zero_()
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
        blob = 6.0 * (1.0 - (xx / radius) ** 2 - (yy / (0.8 * radius)) ** 2)
        self.register_buffer("blob", blob.expand(1, conv.out_channels, 28, 28).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.blob


def _structured(seg: Segmenter) -> None:
    heads = seg.predictor.model.roi_heads
    for pred, radius in ((heads.mask_predictor, 0.7), (heads.amodal_mask_predictor, 0.9)):
        pred.mask_fcn_logits = _ShapedLogits(pred.mask_fcn_logits, radius)
    seg.predictor.model.to(seg.predictor.device)
    if seg.predictor.channels_last:
        seg.predictor.model.to(memory_format=torch.channels_last)


def _loaded(cfg: Config, *, reference: bool, state: dict | None = None) -> Segmenter:
    seg = Segmenter(cfg, log=lambda m: None, reference=reference)
    torch.manual_seed(0)
    seg.load()
    _structured(seg)
    if state is not None:
        seg.predictor.model.load_state_dict(state)
    return seg


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _assert_same_instances(res, ref, *, min_iou: float = 0.99, max_mm: float = 1.0) -> None:
    h, w = res.height, res.width
    assert len(res.instances) == len(ref.instances) > 0
    for a in res.instances:
        ious = [_iou(a.full_mask(h, w), b.full_mask(h, w)) for b in ref.instances]
        j = int(np.argmax(ious))
        b = ref.instances[j]
        assert ious[j] >= min_iou, f"instance {a.index}: best visible-mask IoU {ious[j]:.4f}"
        assert _iou(a.full_mask(h, w, amodal=True), b.full_mask(h, w, amodal=True)) >= min_iou
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert np.linalg.norm(a.centroid - b.centroid) * 1e3 <= max_mm
        assert abs(a.occlusion - b.occlusion) <= 0.01


@pytest.fixture(scope="module")
def fast_and_reference(frame):
    cfg = _profile()
    fast = _loaded(cfg, reference=False)
    ref = _loaded(cfg, reference=True, state=fast.predictor.model.state_dict())
    return fast, ref


def test_cpu_profile_matches_its_reference(frame, fast_and_reference):
    fast, ref = fast_and_reference
    res = fast.process(frame.color, frame.depth, frame.intrinsics)
    expected = ref.process(frame.color, frame.depth, frame.intrinsics)
    masks = [i.mask for i in res.instances]
    assert all(0.3 < m.mean() < 0.95 for m in masks), "the shaped masks should be blobs, not boxes or nothing"
    _assert_same_instances(res, expected)
    assert fast.predictor.paste == "opencv" and ref.predictor.paste == "loop"
    # on the CPU the network runs the same code either way, and the two pastes differ only by float rounding at the
    # threshold (a few 1e-6, test_opencv_paste_equals_the_per_roi_paste), which this frame does not hit: the
    # results are identical, not just close
    for a, b in zip(res.instances, expected.instances, strict=True):
        assert a.bbox == b.bbox and a.amodal_bbox == b.amodal_bbox
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(res.label_image, expected.label_image)


def test_geometric_proposals_run_in_the_worker_beside_the_network(frame, fast_and_reference, monkeypatch):
    """With ``overlap_proposals`` (the default on accelerators) the predictor gets a callable: the plane and depth
    clusters computed in the Segmenter's worker thread while the backbone runs; the reference path computes them
    first. The same boxes and the same instances; the frame's timings carry the wait as ``proposals``."""
    fast, ref = fast_and_reference
    assert not fast._overlap(), "on the CPU the proposals run before the network by default"
    monkeypatch.setattr(fast, "overlap_proposals", True)  # as on an accelerator
    given = {}
    for name, seg in (("fast", fast), ("reference", ref)):
        predict = seg.predictor.predict

        def spy(color, depth, *, extra_proposals=None, _predict=predict, _name=name):
            given[_name] = extra_proposals
            return _predict(color, depth, extra_proposals=extra_proposals)

        monkeypatch.setattr(seg.predictor, "predict", spy)
        res = seg.process(frame.color, frame.depth, frame.intrinsics)
        assert res.timings["proposals"] >= 0.0
        if name == "fast":
            overlapped = res
        else:
            _assert_same_instances(overlapped, res)
    assert callable(given["fast"]) and isinstance(given["reference"], np.ndarray)
    assert len(given["reference"]) > 0
    np.testing.assert_array_equal(given["fast"](), given["reference"])  # already computed: returns at once
    assert fast._pool is not None
    idle = Segmenter(_profile())
    worker = idle._worker()
    idle.release()  # stops the worker thread
    assert idle._pool is None and worker._shutdown


def test_accelerator_code_paths_on_the_cpu_match(frame, fast_and_reference):
    """Channels-last network and batched paste (the CUDA defaults), run on the CPU: IoU >= 0.99, centroids 1 mm."""
    fast, ref = fast_and_reference
    cl = _loaded(_profile(), reference=False, state=fast.predictor.model.state_dict())
    cl.predictor.channels_last = True
    cl.predictor.model.to(memory_format=torch.channels_last)
    cl.predictor.paste = "batched"
    res = cl.process(frame.color, frame.depth, frame.intrinsics)
    _assert_same_instances(res, ref.process(frame.color, frame.depth, frame.intrinsics))


@pytest.mark.parametrize("path", ["host", "device", "host-regions"])
def test_mask_summary_paths_equal_the_reference(frame, fast_and_reference, path):
    fast, _ = fast_and_reference
    det = fast.predictor.predict(frame.color, frame.depth)
    # one empty visible mask must be dropped the same way by every path
    masks = det.masks.clone()
    masks[1] = False
    regions = None
    if path == "host-regions":  # boxes looked for only inside the paste regions
        path, regions = "host", det.regions
    got = summarize_masks(masks, det.amodal_masks, det.scores, det.labels, path=path, regions=regions)
    ref = summarize_masks(masks, det.amodal_masks, det.scores, det.labels, path="reference")
    assert got.keep.tolist() == ref.keep.tolist() and 1 not in got.keep.tolist()
    np.testing.assert_array_equal(got.boxes, ref.boxes)
    np.testing.assert_array_equal(got.amodal_boxes, ref.amodal_boxes)
    for a, b in zip(got.crops + got.amodal_crops, ref.crops + ref.amodal_crops, strict=True):
        assert a.shape == b.shape and a.flags.c_contiguous
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got.occlusion, ref.occlusion)
    np.testing.assert_array_equal(got.label_image, ref.label_image)
    np.testing.assert_array_equal(got.scores, ref.scores)
    np.testing.assert_array_equal(got.labels, ref.labels)
    with pytest.raises(ValueError, match="path must be one of"):
        summarize_masks(masks, det.amodal_masks, det.scores, det.labels, path="gpu")


@pytest.mark.parametrize("paste", ["thresholded", "batched", "opencv"])
def test_paste_regions_hold_every_pasted_pixel(paste):
    """Detections.regions (paste_regions) bound the pasted masks, boxes partly outside the image included."""
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(30, 2, 28, 28, generator=g)
    xy = torch.rand(30, 2, generator=g) * torch.tensor([200.0, 150.0]) - 30.0
    boxes = torch.cat([xy, xy + torch.rand(30, 2, generator=g) * 90.0 + 0.2], dim=1)
    size = (120, 160)
    fn = {"batched": paste_masks_batched, "opencv": paste_masks_opencv}.get(paste, paste_masks_thresholded)
    out = fn(probs, boxes, size, 0.0)  # threshold 0: every pixel the paste reaches
    regions = paste_regions(boxes, 28, size)
    inside = torch.zeros_like(out)
    for i, (x0, y0, x1, y1) in enumerate(regions.tolist()):
        assert 0 <= x0 <= x1 <= size[1] and 0 <= y0 <= y1 <= size[0]
        inside[i, :, y0:y1, x0:x1] = True
    assert out.any() and not (out & ~inside).any()


@pytest.mark.parametrize("paste", ["batched", "opencv"])
def test_fast_pastes_equal_the_per_roi_paste(paste):
    """The batched paste (accelerators; in chunks) and the OpenCV one (the CPU default) against the plain per-RoI
    F.interpolate: boxes partly or entirely outside the image, degenerate and sub-pixel ones; only float rounding at
    the threshold may differ."""
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(40, 2, 28, 28, generator=g)
    xy = torch.rand(40, 2, generator=g) * torch.tensor([200.0, 150.0]) - 20.0
    wh = torch.rand(40, 2, generator=g) * 90.0 + 0.2
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[0] = torch.tensor([-50.0, -50.0, -10.0, -10.0])  # entirely outside
    boxes[1] = torch.tensor([30.0, 30.0, 30.0, 30.0])  # degenerate
    boxes[2] = torch.tensor([40.2, 50.7, 40.9, 51.1])  # under a pixel
    fn = paste_masks_opencv if paste == "opencv" else functools.partial(paste_masks_batched,
                                                                        max_elements=2 * 120 * 160 * 7)  # 7 a chunk
    for thr in (0.0, 0.3, 0.5):
        ref = paste_masks_thresholded(probs, boxes, (120, 160), thr)
        got = fn(probs, boxes, (120, 160), thr)
        assert got.dtype == torch.bool and got.shape == ref.shape
        assert int((got != ref).sum()) <= 2, "only float rounding at the threshold may differ"
    assert fn(probs[:0], boxes[:0], (120, 160), 0.5).shape == (0, 2, 120, 160)


def test_naive_lifting_equals_the_vectorized_lifting(frame):
    """The baseline's per-instance full-image lifting gives exactly our points (so the bench compares costs of
    the same output)."""
    from instance_seg_ros.tools.baseline import naive_lift

    ids = frame.visible_ids
    masks = np.stack([ids == i for i in np.unique(ids) if i > 0])
    cfg = Config.from_flat({"depth.erode_px": 1, "depth.flying_pixel_threshold": 0.03, "depth.max": 1.5})
    clouds = lift_instances(frame.depth, masks, frame.intrinsics, color=frame.color, depth_min=cfg.depth.min,
                            depth_max=cfg.depth.max, flying_pixel_threshold=0.03, erode_px=1)
    for m, c in zip(masks, clouds, strict=True):
        pts, cols, coverage = naive_lift(frame.depth, m, frame.intrinsics, frame.color, cfg)
        np.testing.assert_array_equal(pts, c.points)
        np.testing.assert_array_equal(cols, c.colors)
        assert coverage == pytest.approx(c.depth_coverage)


@pytest.mark.ros
def test_fast_message_equals_the_element_wise_message(frame, fast_and_reference):
    from instance_seg_ros.core.msg_codec import frame_result_from_instance_array as frame_result_from_msg
    from instance_seg_ros.ros.conversions import header, instance_array_msg
    from instance_seg_ros.tools.baseline import naive_instance_array_msg

    fast, _ = fast_and_reference
    res = fast.process(frame.color, frame.depth, frame.intrinsics)
    hdr = header("camera_color_optical_frame", 123)
    a, b = instance_array_msg(res, hdr), naive_instance_array_msg(res, hdr)
    assert len(a.instances) == len(b.instances) == len(res.instances)
    for x, y in zip(a.instances, b.instances, strict=True):
        for img in ("mask", "amodal_mask"):
            p, q = getattr(x, img), getattr(y, img)
            assert (p.height, p.width, p.step, p.encoding) == (q.height, q.width, q.step, q.encoding)
            assert bytes(p.data) == bytes(q.data)
        assert [f.name for f in x.points.fields] == [f.name for f in y.points.fields]
        assert (x.points.point_step, x.points.width) == (y.points.point_step, y.points.width)
        assert bytes(x.points.data) == bytes(y.points.data)
        assert x.centroid == y.centroid and x.box_pose == y.box_pose and x.box_size == y.box_size
    back = frame_result_from_msg(a)
    for r, inst in zip(back.instances, res.instances, strict=True):
        np.testing.assert_array_equal(r.points, inst.points)
        np.testing.assert_array_equal(r.colors, inst.colors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_fast_paths_match_the_cpu_reference(frame, fast_and_reference, precision):
    """On the GPU: channels-last, autocast, batched paste, device-side summary and lifting vs the CPU fp32 reference."""
    fast, ref = fast_and_reference
    gpu = _loaded(_profile(**{"model.device": "cuda", "model.precision": precision}), reference=False,
                  state=fast.predictor.model.state_dict())
    assert gpu.predictor.channels_last and gpu.predictor.paste == "batched"
    res = gpu.process(frame.color, frame.depth, frame.intrinsics)
    expected = ref.process(frame.color, frame.depth, frame.intrinsics)
    if precision == "fp32":
        _assert_same_instances(res, expected)
        return
    # half precision moves the untrained net's (close) scores by ~1e-3, which may reorder or swap detections at
    # the cap: most instances must still have a close counterpart
    h, w = res.height, res.width
    good = 0
    for a in res.instances:
        ious = [_iou(a.full_mask(h, w), b.full_mask(h, w)) for b in expected.instances]
        good += max(ious, default=0.0) >= 0.95
    assert good >= len(res.instances) // 2


def test_reused_mask_stack_gives_the_same_results_frame_after_frame():
    """``reuse_buffers`` (the Segmenter's CPU default: one mask stack kept from frame to frame, only the last
    frame's regions cleared): frames with more, fewer and dropped detections give exactly the results of fresh
    stacks, and what an earlier frame returned is not changed by later frames."""
    from instance_seg_ros.tools.bench_frame import make_frame
    from instance_seg_ros.tools.cli_config import build_config

    cfg = build_config()[0].replace(**{"model.warmup": False, "model.threads": 1})  # the bundled model
    reuse, fresh = Segmenter(cfg, log=lambda m: None), Segmenter(cfg, log=lambda m: None)
    reuse.load()
    fresh.load()
    fresh.predictor.reuse_buffers = False
    assert reuse.predictor.reuse_buffers and reuse.predictor.paste == "opencv"
    earlier, moved = [], False
    for seed, n in ((0, 30), (1, 8), (3, 3), (0, 30)):
        f = make_frame(640, 480, n, seed)
        depth = f.depth.astype(np.float32)
        a = reuse.process(f.color, depth, f.intrinsics)
        b = fresh.process(f.color, depth, f.intrinsics)
        moved |= any(len(r) > 1 for r in reuse.predictor._paste_dirty)  # ownership dropped one, rows moved up
        assert len(a.instances) == len(b.instances) > 0
        np.testing.assert_array_equal(a.label_image, b.label_image)
        for x, y in zip(a.instances, b.instances, strict=True):
            assert x.bbox == y.bbox and x.amodal_bbox == y.amodal_bbox
            np.testing.assert_array_equal(x.mask, y.mask)
            np.testing.assert_array_equal(x.amodal_mask, y.amodal_mask)
            np.testing.assert_array_equal(x.points, y.points)
        earlier.append((a, [(x.mask.copy(), x.amodal_mask.copy()) for x in a.instances]))
    assert moved, "a frame should exercise the dropped-detection moves"
    for res, masks in earlier:
        for x, (m, am) in zip(res.instances, masks, strict=True):
            np.testing.assert_array_equal(x.mask, m)
            np.testing.assert_array_equal(x.amodal_mask, am)
    reuse.release()
    assert reuse.predictor is None or reuse.predictor._paste_buf is None
