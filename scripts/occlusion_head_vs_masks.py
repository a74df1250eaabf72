#!/usr/bin/env python3
"""Which occlusion should the node publish: the occlusion head's output, or 1 - visible/amodal area of the masks?

Runs the shipped model (default config) on the frames of a bag recorded by ``isr record`` (ground truth with true
occlusion) and on a folder of real frames with amodal masks (``isr eval --frames`` layouts), matches detections to
ground truth at visible-mask IoU >= 0.5 (greedy, descending score), and prints the mean absolute error of both
estimates against the true hidden fraction. Usage::

    python scripts/occlusion_head_vs_masks.py --bag sim_bag --frames ../shared/realdata
"""

from __future__ import annotations

import argparse

import numpy as np


def _errors(pred, det, gt_vis: np.ndarray, gt_occ: np.ndarray) -> tuple[list[float], list[float]]:
    """(|head - true|, |masks - true|) over the greedy matches of one frame."""
    vis = det.masks.cpu().numpy()
    amo = det.amodal_masks.cpu().numpy()
    head = det.occlusion_pred.float().cpu().numpy()
    taken: set[int] = set()
    e_head, e_mask = [], []
    for i in range(vis.shape[0]):  # detections are sorted by descending score
        inter = (gt_vis & vis[i][None]).reshape(len(gt_vis), -1).sum(1)
        union = (gt_vis | vis[i][None]).reshape(len(gt_vis), -1).sum(1)
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        for j in taken:
            iou[j] = 0.0
        j = int(np.argmax(iou)) if len(iou) else -1
        if j < 0 or iou[j] < 0.5:
            continue
        taken.add(j)
        a = amo[i].sum()
        from_masks = 1.0 - vis[i].sum() / a if a else 0.0
        e_head.append(abs(float(head[i]) - gt_occ[j]))
        e_mask.append(abs(float(from_masks) - gt_occ[j]))
    return e_head, e_mask


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bag", help="a bag from isr record (with /ground_truth)")
    p.add_argument("--frames", help="a folder of frames with amodal masks")
    a = p.parse_args()
    from instance_seg_ros.core.config import Config
    from instance_seg_ros.core.pipeline import Segmenter

    seg = Segmenter(Config(), log=lambda m: None)
    seg.load()
    if a.bag:
        from rosbags.highlevel import AnyReader

        from instance_seg_ros.core.images import color_from_msg
        from instance_seg_ros.tools.bagio import frame_result_from_instance_array, typestore

        colors, gts = {}, {}
        with AnyReader([__import__("pathlib").Path(a.bag)], default_typestore=typestore()) as r:
            for c, _t, raw in r.messages():
                msg = r.deserialize(raw, c.msgtype)
                stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
                if c.topic == "/camera/color/image_raw":
                    colors[stamp] = np.array(color_from_msg(msg))
                elif c.topic == "/ground_truth":
                    gts[stamp] = frame_result_from_instance_array(msg)
        eh, em = [], []
        for stamp, color in colors.items():
            gt = gts[stamp]
            h, w = gt.height, gt.width
            gv = np.stack([i.full_mask(h, w) for i in gt.instances]) if gt.instances else np.zeros((0, h, w), bool)
            x, y = _errors(None, seg.predictor.predict(color), gv, np.array([i.occlusion for i in gt.instances]))
            eh += x
            em += y
        print(f"simulated bag {a.bag}: {len(eh)} matches; "
              f"occlusion MAE head {np.mean(eh):.3f}, masks {np.mean(em):.3f}")
    if a.frames:
        from instance_seg_ros.tools.frames import find_frames, load_frame

        eh, em = [], []
        for ref in find_frames(a.frames):
            f = load_frame(ref)
            if f.visible is None or f.amodal is None:
                continue
            amo = f.amodal | f.visible
            occ = 1.0 - f.visible.reshape(len(amo), -1).sum(1) / np.maximum(amo.reshape(len(amo), -1).sum(1), 1)
            x, y = _errors(None, seg.predictor.predict(f.color), f.visible, occ)
            eh += x
            em += y
        print(f"real frames {a.frames}: {len(eh)} matches; occlusion MAE head {np.mean(eh):.3f}, "
              f"masks {np.mean(em):.3f}")


if __name__ == "__main__":
    main()
