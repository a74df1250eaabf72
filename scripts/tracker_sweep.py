"""Replay cached detections of a simulated bag through the tracker under several configurations (issue 17).

Running the network is by far the slowest part of ``isr eval BAG``; the tracker is not. This script runs the pipeline
over a bag once (``isr eval``'s own replay, tracker off), caches every frame's detections and ground truth in a
pickle, then replays the cache through :class:`~instance_seg_ros.core.tracking.Tracker` for each ``--variant``
and prints the identity figures (IDF1, IDF1 on detected objects, MOTA, ID switches) that ``isr eval`` reports, plus,
with ``--switches``, where each switch happened. With tracking enabled in the config, the default variant's figures
equal ``isr eval BAG``'s.

    python scripts/tracker_sweep.py /tmp/orbit --cache /tmp/orbit.pkl
    python scripts/tracker_sweep.py /tmp/orbit2 --cache /tmp/orbit2.pkl --switches \\
        --variant "" --variant "tracking.min_hits=2" --variant "tracking.gate_m=0.05"

A variant is a comma-separated list of ``key=value`` config overrides (``isr eval --set``'s syntax); ``""`` is the
default configuration.
"""

from __future__ import annotations

import argparse
import copy
import pickle
import sys
from pathlib import Path


def _cache(bag: Path, cache: Path) -> list:
    from instance_seg_ros.tools import eval_replay
    from instance_seg_ros.tools.cli_config import build_config, parse_set
    from instance_seg_ros.tools.evaluate import evaluate

    frames: list = []
    original = eval_replay.EvalRun.score

    def score(self, stamp, pred, gt, lat):
        frames.append((int(stamp), copy.deepcopy(pred), gt))
        return original(self, stamp, pred, gt, lat)

    eval_replay.EvalRun.score = score
    try:
        config, _ = build_config(overrides=parse_set(["tracking.enabled=false"]))
        evaluate(bag, config=config, progress=True)
    finally:
        eval_replay.EvalRun.score = original
    frames.sort(key=lambda f: f[0])
    with cache.open("wb") as fh:
        pickle.dump(frames, fh)
    return frames


def _run(frames: list, overrides: list[str], switches: bool) -> dict:
    from instance_seg_ros.core.tracking import Tracker
    from instance_seg_ros.tools.cli_config import build_config, parse_set
    from instance_seg_ros.tools.eval_replay import IdFrame, mot_summary

    config, _ = build_config(overrides=parse_set(["tracking.enabled=true", *overrides]))
    tracker = Tracker(config.tracking)
    id_frames = []
    for stamp, pred, gt in frames:
        pred = copy.copy(pred)
        pred.instances = [copy.copy(i) for i in pred.instances]
        tracker.update(stamp / 1e9, pred.instances)
        id_frames.append(IdFrame.of(stamp, pred, gt, 0.5))
    out = mot_summary(id_frames, 0.5)
    if switches:
        out["switch_list"] = _switches(id_frames)
    return out


def _switches(id_frames: list) -> list[str]:
    """Frame index, gt id, previous and new track id of each ID switch: the matches of
    :class:`~instance_seg_ros.core.mot_metrics.MotAccumulator` (the one that counts them), a pair that contradicts
    the ground-truth object's previous match being a switch (frames left out by ``mot_summary`` are skipped here
    too)."""
    from instance_seg_ros.core.mot_metrics import MotAccumulator

    acc = MotAccumulator(iou_threshold=0.5)
    last: dict[int, int] = {}
    out = []
    for k, f in enumerate(id_frames):
        keep = [i for i, g in enumerate(f.gt_ids) if g]
        gt_ids = [f.gt_ids[i] for i in keep]
        if len(set(gt_ids)) != len(gt_ids) or len(set(f.pred_ids)) != len(f.pred_ids):
            continue
        for gid, pid in acc.add(gt_ids, f.pred_ids, f.iou[keep], detected=f.detected[keep]):
            if last.get(gid, pid) != pid:
                out.append(f"frame {k}: gt {gid} {last[gid]} -> {pid}")
            last[gid] = pid
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bag", type=Path)
    ap.add_argument("--cache", type=Path, required=True, help="pickle of the detections (made when missing)")
    ap.add_argument("--variant", action="append", default=None, help='comma-separated overrides; "" = default')
    ap.add_argument("--switches", action="store_true", help="list each ID switch")
    args = ap.parse_args(argv)
    if args.cache.exists():
        with args.cache.open("rb") as fh:
            frames = pickle.load(fh)
    else:
        frames = _cache(args.bag, args.cache)
    for variant in args.variant or [""]:
        overrides = [v for v in variant.split(",") if v]
        s = _run(frames, overrides, args.switches)
        print(f"{variant or 'default':40s} IDF1 {s['idf1']:.3f}  det {s['idf1_detected']:.3f}  IDP {s['idp']:.3f}  "
              f"MOTA {s['mota']:.3f}  switches {s['id_switches']} ({s['id_switches_per_100']:.2f}/100)")
        for line in s.get("switch_list", []):
            print("   ", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
