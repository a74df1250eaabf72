"""`isr synth`: COCO output that pycocotools loads, masks that match the renders, determinism, resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from instance_seg_ros.core.masks import mask_bbox
from instance_seg_ros.sim.camera import d435_intrinsics
from instance_seg_ros.sim.randomization import SceneConfig
from instance_seg_ros.sim.scene import Scene
from instance_seg_ros.tools import cli
from instance_seg_ros.tools.synth import SynthParams, scene_seed, synthesize

ARGS = ["--scenes", "3", "--seed", "7", "--width", "160", "--height", "120", "--min-objects", "2",
        "--max-objects", "4", "--views-per-scene", "2", "--quiet"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    assert cli.main(["synth", "--out", str(out), *ARGS]) == 0
    return out


def test_pycocotools_loads_it_and_rles_decode_to_the_rendered_masks(dataset):
    coco = COCO(str(dataset / "annotations.json"))
    assert len(coco.imgs) == 6 and coco.loadCats(coco.getCatIds()) == [
        {"id": 1, "name": "object", "supercategory": "object"}
    ]
    assert len(coco.anns) >= 3
    for img in coco.imgs.values():
        assert (dataset / img["file_name"]).is_file() and (dataset / img["depth_file"]).is_file()
        assert set(img["intrinsics"]) == {"fx", "fy", "cx", "cy"}
    # re-render scene 1, view 1 with the same public API and compare with what was written
    img = next(i for i in coco.imgs.values() if i["scene_index"] == 1 and i["view_index"] == 1)
    assert img["scene_seed"] == scene_seed(7, 1)
    with Scene.random(img["scene_seed"], SceneConfig(min_objects=2, max_objects=4)) as scene:
        frame = scene.render(scene.random_camera(seed=1, intrinsics=d435_intrinsics(160, 120)), seed=1)
    color = cv2.imread(str(dataset / img["file_name"]), cv2.IMREAD_COLOR)[..., ::-1]
    assert np.array_equal(color, frame.color)
    depth_mm = cv2.imread(str(dataset / img["depth_file"]), cv2.IMREAD_UNCHANGED)
    assert depth_mm.dtype == np.uint16
    finite = np.isfinite(frame.depth)
    assert np.array_equal(depth_mm > 0, finite)
    assert np.abs(depth_mm[finite] / 1000.0 - frame.depth[finite]).max() <= 0.0005 + 1e-6
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
    gt = frame.ground_truth
    assert [a["object_id"] for a in anns] == [o.id for o in gt]
    for a, o in zip(anns, gt, strict=True):
        assert isinstance(a["segmentation"]["counts"], str)
        with warnings.catch_warnings():  # pycocotools' decode warns about numpy 2's copy keyword
            warnings.simplefilter("ignore", DeprecationWarning)
            visible = coco.annToMask(a).astype(bool)
            amodal = mask_utils.decode({"size": a["amodal_segmentation"]["size"],
                                        "counts": a["amodal_segmentation"]["counts"].encode()}).astype(bool)
        assert np.array_equal(visible, o.visible_mask) and np.array_equal(amodal, o.amodal_mask)
        assert a["area"] == visible.sum() and a["amodal_area"] == amodal.sum()
        assert tuple(a["bbox"]) == mask_bbox(visible) and tuple(a["amodal_bbox"]) == mask_bbox(amodal)
        assert a["occlusion"] == pytest.approx(1 - a["area"] / a["amodal_area"], abs=1e-6)
        assert a["iscrowd"] == 0 and a["category_id"] == 1 and a["object_name"] == o.name
        np.testing.assert_allclose(a["pose"]["position"], o.position, atol=1e-6)
        assert len(a["pose"]["orientation"]) == 4 and len(a["extent"]) == 3


def test_same_seed_same_bytes_whatever_the_workers(dataset, tmp_path):
    again = tmp_path / "again"
    summary = synthesize(again, 3, SynthParams(seed=7, width=160, height=120, min_objects=2, max_objects=4,
                                               views_per_scene=2), workers=2, progress=False)
    assert summary["rendered"] == 3 and summary["images"] == 6
    assert _files(again) == _files(dataset)


def test_rerun_resumes_and_extends(dataset, tmp_path):
    out = tmp_path / "resume"
    shutil.copytree(dataset, out)
    before = _files(out)
    (out / "fragments" / "scene_000001.json").unlink()  # scene 1 "crashed" before its fragment was written
    (out / "color" / "000003.png").unlink()
    stamp = (out / "color" / "000000.png").stat().st_mtime_ns
    params = SynthParams(seed=7, width=160, height=120, min_objects=2, max_objects=4, views_per_scene=2)
    summary = synthesize(out, 3, params, progress=False)
    assert (summary["rendered"], summary["skipped"]) == (1, 2)
    assert _files(out) == before
    assert (out / "color" / "000000.png").stat().st_mtime_ns == stamp  # untouched
    summary = synthesize(out, 4, params, progress=False)
    assert (summary["rendered"], summary["skipped"], summary["images"]) == (1, 3, 8)
    coco = json.loads((out / "annotations.json").read_text())
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))


def test_other_parameters_into_the_same_directory_are_refused(dataset, tmp_path, capsys):
    out = tmp_path / "refuse"
    shutil.copytree(dataset, out)
    args = ["synth", "--out", str(out), *ARGS]
    args[args.index("--seed") + 1] = "8"
    assert cli.main(args) == 2
    assert "other parameters" in capsys.readouterr().err
    assert cli.main(["synth", "--out", str(tmp_path / "x"), "--scenes", "0", "--quiet"]) == 2
    assert cli.main(["synth", "--out", str(tmp_path / "y"), "--scenes", "1", "--supports", "shelf", "--quiet"]) == 2


def test_console_script(tmp_path):
    exe = shutil.which("isr")
    if exe is None:
        pytest.skip("the `isr` console script is not on PATH (source env.sh)")
    out = tmp_path / "cli"
    proc = subprocess.run(
        [exe, "synth", "--out", str(out), "--scenes", "1", "--width", "64", "--height", "48", "--max-objects", "3",
         "--quiet"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 images" in proc.stdout
    assert json.loads((out / "annotations.json").read_text())["images"][0]["width"] == 64
