"""COCO metrics (visible and amodal masks) of a weights file on held-out `isr synth` sets, each set scored alone.

    python scripts/eval_heldout.py WEIGHTS DIR [DIR ...] [--max-images N] [--json OUT]

The same inference path as `isr train`'s evaluation (Predictor, score threshold 0.05): what MODEL.md reports for
the simulator. Use it to compare a new model with the shipped one on the old (plain) and the new (sim2real)
held-out sets.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights")
    p.add_argument("sets", nargs="+", metavar="DIR")
    p.add_argument("--max-images", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    import torch

    from instance_seg_ros.core.dataset import AmodalCocoDataset
    from instance_seg_ros.core.model import load_model
    from instance_seg_ros.tools.train_engine import evaluate

    torch.set_num_threads(a.threads)
    model, meta = load_model(a.weights)
    out = {}
    for d in a.sets:
        ds = AmodalCocoDataset(d, load_depth=meta.input_mode == "rgbd", skip_empty=True)
        m = evaluate(model, meta, [(ds, {int(c["id"]): 1 for c in ds.categories})], max_images=a.max_images)
        out[d] = m
        print(f"{d}: {len(ds)} images, visible AP {m['mask_ap']:.3f} AP50 {m['mask_ap50']:.3f}; "
              f"amodal AP {m['amodal_ap']:.3f} AP50 {m['amodal_ap50']:.3f}; occlusion MAE {m['occlusion_mae']:.3f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
