"""Write an `isr synth` dataset in the folder layout `isr eval --frames` reads (rgb.png, depth.png, K.json,
label.png, amodal/inst_XX.png), so held-out simulated frames are scored by exactly the code and metrics used on the
real frames (recall, unmatched detections per frame, Overlap/Boundary F, AP).

    python scripts/synth_to_frames.py data/s2r_val /tmp/s2r_val_frames [--max-images N]
    isr eval --frames /tmp/s2r_val_frames --out /tmp/ev_s2r_val
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("synth_dir")
    p.add_argument("out")
    p.add_argument("--max-images", type=int, default=0)
    a = p.parse_args(argv)

    import cv2
    import numpy as np

    from instance_seg_ros.core.coco_eval import decode_segmentation

    src, out = Path(a.synth_dir), Path(a.out)
    coco = json.loads((src / "annotations.json").read_text())
    anns: dict[int, list] = {}
    for ann in coco["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    images = coco["images"][: a.max_images or None]
    for im in images:
        d = out / Path(im["file_name"]).stem
        (d / "amodal").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / im["file_name"], d / "rgb.png")
        shutil.copyfile(src / im["depth_file"], d / "depth.png")
        k = im["intrinsics"]
        (d / "K.json").write_text(json.dumps({**k, "width": im["width"], "height": im["height"]}))
        label = np.zeros((im["height"], im["width"]), np.uint8)
        for i, ann in enumerate(anns.get(im["id"], []), start=1):
            vis = decode_segmentation(ann["segmentation"], im["height"], im["width"])
            amo = decode_segmentation(ann["amodal_segmentation"], im["height"], im["width"])
            label[vis.astype(bool)] = i
            cv2.imwrite(str(d / "amodal" / f"inst_{i:02d}.png"), amo.astype(np.uint8) * 255)
        cv2.imwrite(str(d / "label.png"), label)
    print(f"{len(images)} frames -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
