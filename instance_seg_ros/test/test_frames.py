"""tools/frames.py: discovery and reading of the folder, OSD and OCID layouts; every malformed input raises
FramesError naming the file; and the real frames in shared/realdata read as their meta.json says."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from instance_seg_ros.core.types import Intrinsics
from instance_seg_ros.tools.frames import (
    DEFAULT_INTRINSICS,
    Frame,
    FrameRef,
    FramesError,
    find_frames,
    load_frame,
)

H, W = 48, 64
K_SMALL = {"fx": 60.0, "fy": 61.0, "cx": 31.5, "cy": 23.5, "width": W, "height": H}
REALDATA = Path(__file__).resolve().parents[3] / "shared" / "realdata"


# ------------------------------------------------------------------------------------------------ fixtures
def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))  # cv2 writes BGR


def write_gray(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def make_rgb(h: int = H, w: int = W) -> np.ndarray:
    rgb = np.full((h, w, 3), 40, np.uint8)
    rgb[3, 5] = (255, 0, 0)  # a red pixel: catches a BGR/RGB swap
    return rgb


def make_depth(h: int = H, w: int = W) -> np.ndarray:
    depth = np.full((h, w), 1234, np.uint16)
    depth[0, 0] = 0  # no reading
    depth[1, 2] = 500
    return depth


def make_label(h: int = H, w: int = W, dtype=np.uint8) -> np.ndarray:
    label = np.zeros((h, w), dtype)
    label[10:20, 10:20] = 2
    label[30:40, 40:50] = 5  # ids need not be contiguous
    return label


def folder_frame(d: Path, *, label: np.ndarray | None = None, k: dict | None = K_SMALL, amodal: dict | None = None,
                 rgb: np.ndarray | None = None, depth: np.ndarray | None = None) -> Path:
    write_rgb(d / "rgb.png", make_rgb() if rgb is None else rgb)
    write_gray(d / "depth.png", make_depth() if depth is None else depth)
    if k is not None:
        (d / "K.json").write_text(json.dumps(k))
    if label is not None:
        write_gray(d / "label.png", label)
    for name, mask in (amodal or {}).items():
        write_gray(d / "amodal" / name, mask.astype(np.uint8) * 255)
    return d


def osd_root(d: Path, stems=("learn0", "test1"), h: int = 480, w: int = 640, labels: bool = True) -> Path:
    for s in stems:
        write_rgb(d / "image_color" / f"{s}.png", make_rgb(h, w))
        write_gray(d / "disparity" / f"{s}.png", make_depth(h, w))
        if labels:
            write_gray(d / "annotation" / f"{s}.png", make_label(h, w))
    return d


def ocid_seq(d: Path, stems=("result_2018-08-20-10-00-00",), h: int = 480, w: int = 640) -> Path:
    label = np.zeros((h, w), np.uint8)
    label[:, : w // 4] = 1  # floor
    label[h // 2 :, :] = 2  # table (or an object, in floor sequences)
    label[5:15, 300:320] = 3
    label[20:30, 400:420] = 4
    for s in stems:
        write_rgb(d / "rgb" / f"{s}.png", make_rgb(h, w))
        write_gray(d / "depth" / f"{s}.png", make_depth(h, w))
        write_gray(d / "label" / f"{s}.png", label)
    return d


def only(refs: list[FrameRef]) -> FrameRef:
    assert len(refs) == 1, [r.name for r in refs]
    return refs[0]


# ------------------------------------------------------------------------------------------------ folder layout
def test_folder_discovery_names_sorted_and_recursive(tmp_path):
    folder_frame(tmp_path / "ycbv" / "0000_000005")
    folder_frame(tmp_path / "ycbv" / "0000_000001")
    folder_frame(tmp_path / "more" / "deep" / "x" / "f")
    (tmp_path / ".hidden" / "f").mkdir(parents=True)
    folder_frame(tmp_path / ".hidden" / "f")  # hidden folders are skipped
    (tmp_path / "not_a_frame").mkdir()
    write_rgb(tmp_path / "not_a_frame" / "rgb.png", make_rgb())  # no depth.png: not a frame
    refs = find_frames(tmp_path)
    assert [r.name for r in refs] == ["more/deep/x/f", "ycbv/0000_000001", "ycbv/0000_000005"]
    assert {r.layout for r in refs} == {"folder"}
    assert find_frames(tmp_path) == refs  # stable
    # root = the frame folder itself: named after the folder
    assert only(find_frames(tmp_path / "ycbv" / "0000_000001")).name == "0000_000001"


def test_folder_values_rgb_order_depth_intrinsics(tmp_path):
    frame = load_frame(only(find_frames(folder_frame(tmp_path / "f"))))
    assert isinstance(frame, Frame) and frame.layout == "folder"
    assert frame.color.shape == (H, W, 3) and frame.color.dtype == np.uint8
    assert frame.color[3, 5].tolist() == [255, 0, 0]
    assert frame.depth.shape == (H, W) and frame.depth.dtype == np.float32
    assert math.isnan(frame.depth[0, 0])
    assert frame.depth[1, 2] == pytest.approx(0.5)
    assert frame.depth[4, 4] == pytest.approx(1.234)
    assert np.isnan(frame.depth).sum() == 1
    assert frame.K == Intrinsics(60.0, 61.0, 31.5, 23.5, W, H)
    assert frame.visible is None and frame.amodal is None and frame.gt_ids == []
    # depth_scale: e.g. 0.1 mm units
    assert load_frame(only(find_frames(tmp_path / "f")), depth_scale=1e-4).depth[1, 2] == pytest.approx(0.05)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_folder_labels_to_masks(tmp_path, dtype):
    label = make_label(dtype=dtype)
    if dtype == np.uint16:
        label[0:3, 60:64] = 1000
    frame = load_frame(only(find_frames(folder_frame(tmp_path / "f", label=label))))
    ids = [2, 5] + ([1000] if dtype == np.uint16 else [])
    assert frame.gt_ids == ids
    assert frame.visible.shape == (len(ids), H, W) and frame.visible.dtype == bool
    for g, i in enumerate(ids):
        assert np.array_equal(frame.visible[g], label == i)
    assert frame.amodal is None


def test_folder_palette_label_reads_indices(tmp_path):
    d = folder_frame(tmp_path / "f")
    im = Image.fromarray(make_label(), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9, 200, 100, 50] + [0] * (256 * 3 - 18))
    im.save(d / "label.png")
    assert load_frame(only(find_frames(d))).gt_ids == [2, 5]


def test_empty_label_gives_zero_masks(tmp_path):
    frame = load_frame(only(find_frames(folder_frame(tmp_path / "f", label=np.zeros((H, W), np.uint8)))))
    assert frame.visible.shape == (0, H, W) and frame.visible.dtype == bool
    assert frame.gt_ids == [] and frame.amodal is None


def test_amodal_union_missing_and_unknown_ids(tmp_path):
    label = make_label()
    a2 = np.zeros((H, W), bool)
    a2[8:20, 8:16] = True  # extends id 2 up/left but misses its right part: union must keep the visible pixels
    stray = np.zeros((H, W), bool)
    stray[0:2, 0:2] = True
    d = folder_frame(tmp_path / "f", label=label, amodal={"inst_02.png": a2, "inst_09.png": stray})
    (d / "amodal" / "notes.png").write_bytes(b"")  # a badly named file: ignored with a note
    frame = load_frame(only(find_frames(d)))
    assert frame.gt_ids == [2, 5]
    assert frame.amodal.shape == (2, H, W) and frame.amodal.dtype == bool
    assert np.array_equal(frame.amodal[0], a2 | (label == 2))
    assert np.array_equal(frame.amodal[1], label == 5)  # no file for id 5: its visible mask
    assert np.all(frame.amodal >= frame.visible)
    notes = "\n".join(frame.notes)
    assert "inst_09.png" in notes and "no instance 9" in notes
    assert "no amodal mask for instance 5" in notes
    assert "notes.png" in notes


def test_amodal_three_digit_id_and_no_label(tmp_path):
    label = np.zeros((H, W), np.uint16)
    label[1:5, 1:5] = 123
    m = np.zeros((H, W), bool)
    m[0:6, 0:6] = True
    frame = load_frame(only(find_frames(folder_frame(tmp_path / "a", label=label, amodal={"inst_123.png": m}))))
    assert frame.gt_ids == [123] and np.array_equal(frame.amodal[0], m)
    frame = load_frame(only(find_frames(folder_frame(tmp_path / "b", amodal={"inst_01.png": m}))))
    assert frame.visible is None and frame.amodal is None
    assert any("no label image" in n for n in frame.notes)


def test_missing_k_json_uses_override(tmp_path):
    d = folder_frame(tmp_path / "f", k=None)
    with pytest.raises(FramesError, match=r"K\.json: file is missing.*pass intrinsics"):
        load_frame(only(find_frames(d)))
    K = Intrinsics(70.0, 70.0, 32.0, 24.0, W, H)
    assert load_frame(only(find_frames(d, intrinsics=K))).K == K
    # a frame's own K.json wins over the override
    d2 = folder_frame(tmp_path / "g")
    assert load_frame(only(find_frames(d2, intrinsics=K))).K.fx == 60.0


# ------------------------------------------------------------------------------------------------ OSD
def test_osd_layout_defaults_and_labels(tmp_path):
    osd_root(tmp_path / "osd")
    refs = find_frames(tmp_path)
    assert [r.name for r in refs] == ["osd/learn0", "osd/test1"]
    assert {r.layout for r in refs} == {"osd"}
    frame = load_frame(refs[0])
    assert frame.K == DEFAULT_INTRINSICS["osd"] == Intrinsics(525.0, 525.0, 319.5, 239.5, 640, 480)
    assert frame.color.shape == (480, 640, 3) and frame.color[3, 5].tolist() == [255, 0, 0]
    assert frame.depth[1, 2] == pytest.approx(0.5) and math.isnan(frame.depth[0, 0])  # "disparity" read as mm
    assert frame.gt_ids == [2, 5]  # OSD: only 0 is background
    assert np.array_equal(frame.visible[1], make_label(480, 640) == 5)
    # DIR = the OSD root itself: names are the stems
    assert [r.name for r in find_frames(tmp_path / "osd")] == ["learn0", "test1"]


def test_osd_amodal_annotation(tmp_path):
    d = osd_root(tmp_path / "OSD", stems=("learn0", "learn1"))
    a = np.zeros((480, 640), np.uint8)
    a[5:25, 5:25] = 255
    write_gray(d / "amodal_annotation" / "learn0_2.png", a)
    write_gray(d / "amodal_annotation" / "learn1_5.png", a)
    write_gray(d / "occlusion_annotation" / "learn0_2.png", a)  # not read
    f0, f1 = (load_frame(r) for r in find_frames(d))
    assert np.array_equal(f0.amodal[0], (a > 0) | (make_label(480, 640) == 2))
    assert np.array_equal(f0.amodal[1], f0.visible[1])
    assert np.array_equal(f1.amodal[1], (a > 0) | f1.visible[1])


def test_osd_without_annotation_and_override(tmp_path):
    d = osd_root(tmp_path / "osd", stems=("learn0",), h=H, w=W, labels=False)
    ref = only(find_frames(d))
    with pytest.raises(FramesError, match=r"learn0\.png: image is 64x48 but the default OSD intrinsics are for "
                                          r"640x480; pass intrinsics"):
        load_frame(ref)
    K = Intrinsics(50.0, 50.0, 32.0, 24.0, W, H)
    frame = load_frame(only(find_frames(d, intrinsics=K)))
    assert frame.K == K and frame.visible is None and frame.gt_ids == []
    with pytest.raises(FramesError, match="the intrinsics passed to find_frames are for 640x480"):
        load_frame(only(find_frames(d, intrinsics=DEFAULT_INTRINSICS["osd"].scaled(1.0, 1.0))))


def test_osd_missing_depth_names_file(tmp_path):
    d = osd_root(tmp_path / "osd", stems=("learn0",))
    (d / "disparity" / "learn0.png").unlink()
    with pytest.raises(FramesError, match=r"disparity/learn0\.png: file is missing"):
        load_frame(only(find_frames(d)))


# ------------------------------------------------------------------------------------------------ OCID
def test_ocid_nested_sequences_and_table_rule(tmp_path):
    root = tmp_path / "OCID-dataset"
    ocid_seq(root / "ARID20" / "table" / "top" / "seq05")
    ocid_seq(root / "YCB10" / "floor" / "bottom" / "cuboid" / "seq01")
    refs = find_frames(tmp_path)
    assert [r.name for r in refs] == [
        "OCID-dataset/ARID20/table/top/seq05/result_2018-08-20-10-00-00",
        "OCID-dataset/YCB10/floor/bottom/cuboid/seq01/result_2018-08-20-10-00-00",
    ]
    assert {r.layout for r in refs} == {"ocid"}
    table, floor = (load_frame(r) for r in refs)
    assert table.gt_ids == [3, 4]  # 0 background, 1 floor, 2 table
    assert floor.gt_ids == [2, 3, 4]  # floor sequence: 2 is an object
    assert table.K == DEFAULT_INTRINSICS["ocid"]
    assert table.color[3, 5].tolist() == [255, 0, 0]
    assert table.depth[1, 2] == pytest.approx(0.5) and math.isnan(table.depth[0, 0])
    assert table.visible.shape == (2, 480, 640)
    # the rule follows the path, also when DIR is the sequence itself
    assert load_frame(only(find_frames(root / "ARID20" / "table" / "top" / "seq05"))).gt_ids == [3, 4]
    # a root folder merely containing "table" in its name does not make floor sequences table sequences
    ocid_seq(tmp_path / "tabletop_runs" / "floor" / "seq02")
    assert load_frame(only(find_frames(tmp_path / "tabletop_runs"))).gt_ids == [2, 3, 4]


def test_ocid_intrinsics_override(tmp_path):
    K = Intrinsics(540.0, 541.0, 320.0, 240.0, 640, 480)
    ocid_seq(tmp_path / "ARID10" / "table" / "top" / "box" / "seq03")
    assert load_frame(only(find_frames(tmp_path, intrinsics=K))).K == K


# ------------------------------------------------------------------------------------------------ mixed roots
def test_auto_detects_each_subtree_and_layout_filter(tmp_path):
    folder_frame(tmp_path / "ours" / "ycbv" / "0000_000001", label=make_label())
    osd_root(tmp_path / "osd", stems=("learn0",))
    ocid_seq(tmp_path / "ocid" / "ARID20" / "floor" / "top" / "seq01")
    refs = find_frames(tmp_path)
    assert [(r.name, r.layout) for r in refs] == [
        ("ocid/ARID20/floor/top/seq01/result_2018-08-20-10-00-00", "ocid"),
        ("osd/learn0", "osd"),
        ("ours/ycbv/0000_000001", "folder"),
    ]
    for layout in ("folder", "osd", "ocid"):
        assert [r.layout for r in find_frames(tmp_path, layout=layout)] == [layout]
    for r in refs:
        f = load_frame(r)
        assert f.color.dtype == np.uint8 and f.depth.dtype == np.float32 and f.visible is not None


# ------------------------------------------------------------------------------------------------ errors
def test_frames_error_is_value_error():
    assert issubclass(FramesError, ValueError)


def test_root_missing_or_empty_names_the_layouts(tmp_path):
    with pytest.raises(FramesError, match="no such folder") as e:
        find_frames(tmp_path / "nope")
    assert "image_color" in str(e.value) and "rgb.png" in str(e.value) and "rgb/*.png" in str(e.value)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FramesError, match="no RGB-D frames found") as e:
        find_frames(tmp_path / "empty")
    assert "folder" in str(e.value) and "OSD" in str(e.value) and "OCID" in str(e.value)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FramesError, match="not a folder"):
        find_frames(tmp_path / "file.txt")
    folder_frame(tmp_path / "one")
    with pytest.raises(FramesError, match="layout 'osd' was requested"):
        find_frames(tmp_path / "one", layout="osd")
    with pytest.raises(FramesError, match="unknown frames layout 'coco'"):
        find_frames(tmp_path / "one", layout="coco")
    with pytest.raises(FramesError, match="fx = 0.0 must be a finite positive"):
        find_frames(tmp_path / "one", intrinsics=Intrinsics(0.0, 1.0, 1.0, 1.0, W, H))


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("rgb_garbage", r"rgb\.png: not a readable image"),
        ("rgb_truncated", r"rgb\.png: not a readable image"),
        ("rgb_empty", r"rgb\.png: not a readable image"),
        ("rgb_gray", r"rgb\.png: color image has 1 channel\(s\); it must be 3-channel RGB"),
        ("rgb_16bit", r"rgb\.png: color image is uint16; it must be 8-bit RGB"),
        ("depth_8bit", r"depth\.png: depth image is uint8; it must be 16-bit \(uint16\) millimetres"),
        ("depth_color", r"depth\.png: depth image has 3 channels"),
        ("depth_size", r"depth\.png: depth is 32x48 but the color image rgb\.png is 64x48"),
        ("label_size", r"label\.png: label is 64x24 but the color image rgb\.png is 64x48"),
        ("label_color", r"label\.png: label image has mode RGB"),
        ("label_garbage", r"label\.png: not a readable label image"),
        ("amodal_size", r"inst_02\.png: amodal mask is 32x24 but the color image"),
        ("k_missing_keys", r"K\.json: missing key\(s\) cx, height"),
        ("k_nan", r"K\.json: fx = nan is not finite"),
        ("k_inf", r"K\.json: cy = inf is not finite"),
        ("k_zero_fx", r"K\.json: fx = 0 must be a positive focal length"),
        ("k_negative_fy", r"K\.json: fy = -5 must be a positive focal length"),
        ("k_string", r"K\.json: fx = '60' is not a number"),
        ("k_size", r"K\.json: describes a 640x480 image but rgb\.png is 64x48"),
        ("k_fraction_width", r"K\.json: width = 64\.5 must be a positive whole number"),
        ("k_principal_point", r"K\.json: principal point \(cx, cy\) = \(640, 23\.5\) lies outside"),
        ("k_bad_json", r"K\.json: not valid JSON"),
        ("k_list", r"K\.json: must hold a JSON object"),
        ("amodal_duplicate", r"a second amodal mask for instance 2"),
    ],
)
def test_load_errors_name_file_and_problem(tmp_path, case, pattern):
    d = folder_frame(tmp_path / "f", label=make_label())
    k = dict(K_SMALL)
    if case == "rgb_garbage":
        (d / "rgb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    elif case == "rgb_truncated":
        data = (d / "rgb.png").read_bytes()
        (d / "rgb.png").write_bytes(data[: len(data) // 3])
    elif case == "rgb_empty":
        (d / "rgb.png").write_bytes(b"")
    elif case == "rgb_gray":
        write_gray(d / "rgb.png", np.zeros((H, W), np.uint8))
    elif case == "rgb_16bit":
        write_gray(d / "rgb.png", np.zeros((H, W, 3), np.uint16))
    elif case == "depth_8bit":
        write_gray(d / "depth.png", np.zeros((H, W), np.uint8))
    elif case == "depth_color":
        write_gray(d / "depth.png", np.zeros((H, W, 3), np.uint16))
    elif case == "depth_size":
        write_gray(d / "depth.png", np.zeros((H, W // 2), np.uint16))
    elif case == "label_size":
        write_gray(d / "label.png", np.zeros((H // 2, W), np.uint8))
    elif case == "label_color":
        write_rgb(d / "label.png", np.zeros((H, W, 3), np.uint8))
    elif case == "label_garbage":
        (d / "label.png").write_bytes(b"not a png at all")
    elif case == "amodal_size":
        write_gray(d / "amodal" / "inst_02.png", np.zeros((H // 2, W // 2), np.uint8))
    elif case == "amodal_duplicate":
        write_gray(d / "amodal" / "inst_02.png", np.zeros((H, W), np.uint8))
        write_gray(d / "amodal" / "inst_2.png", np.zeros((H, W), np.uint8))
    elif case == "k_missing_keys":
        del k["cx"], k["height"]
    elif case == "k_nan":
        k["fx"] = float("nan")
    elif case == "k_inf":
        k["cy"] = float("inf")
    elif case == "k_zero_fx":
        k["fx"] = 0
    elif case == "k_negative_fy":
        k["fy"] = -5
    elif case == "k_string":
        k["fx"] = "60"
    elif case == "k_size":
        k.update(width=640, height=480)
    elif case == "k_fraction_width":
        k["width"] = 64.5
    elif case == "k_principal_point":
        k["cx"] = 640
    if case.startswith("k_"):
        text = json.dumps(k)  # NaN / Infinity literals, as numpy-minded writers produce
        if case == "k_bad_json":
            text = '{"fx": 60,'
        elif case == "k_list":
            text = "[60, 61, 31.5, 23.5, 64, 48]"
        (d / "K.json").write_text(text)
    ref = only(find_frames(tmp_path))
    with pytest.raises(FramesError, match=pattern) as e:
        load_frame(ref)
    assert str(d) in str(e.value)  # the full path of the offending file


def test_bad_depth_scale(tmp_path):
    ref = only(find_frames(folder_frame(tmp_path / "f")))
    for bad in (0, -0.001, float("nan")):
        with pytest.raises(FramesError, match="depth_scale"):
            load_frame(ref, depth_scale=bad)


# ------------------------------------------------------------------------------------------------ real data
def test_realdata_frames_match_meta():
    if not REALDATA.is_dir():
        pytest.skip(f"{REALDATA} is absent (the shared real frames are not checked out next to the repository)")
    refs = find_frames(REALDATA)
    assert len(refs) == 10
    assert all(r.layout == "folder" and r.name.startswith("ycbv/") for r in refs)
    for ref in refs:
        frame = load_frame(ref)
        meta = json.loads((ref.color.parent / "meta.json").read_text())
        assert frame.color.shape == (480, 640, 3) and frame.depth.shape == (480, 640)
        assert (frame.K.width, frame.K.height) == (640, 480)
        ids = [inst["instance_id"] for inst in meta["instances"]]
        assert frame.gt_ids == ids, ref.name
        assert frame.visible.shape == (len(ids), 480, 640)
        assert frame.amodal is not None and np.all(frame.amodal >= frame.visible)
        for g, inst in enumerate(meta["instances"]):
            assert int(frame.visible[g].sum()) == inst["visible_px"], (ref.name, inst["instance_id"])
        valid = np.isfinite(frame.depth)
        assert valid.mean() == pytest.approx(meta["depth_stats"]["valid_frac"], abs=1e-6)
        assert np.median(frame.depth[valid]) * 1000 == pytest.approx(meta["depth_stats"]["median_mm"], abs=0.6)
        assert frame.notes == [], frame.notes
