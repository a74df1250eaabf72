"""``isr eval``: rosbag replay evaluation on bags written here (``isr record`` plus rewritten copies).

Predictions equal to the ground truth score perfectly, a removed instance lowers recall by exactly one object,
every storage / color / depth format replays through the real pipeline (an untrained model), a missing topic is
named, corrupt images are rejected with reasons while the rest is evaluated, stamps offset within slop still pair
every frame, the COCO JSON ground truth agrees with the topic, and the CLI writes report.md, metrics.json and PNGs.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer

from instance_seg_ros.core.coco_eval import encode_masks
from instance_seg_ros.tools import bagio
from instance_seg_ros.tools.bagio import MissingTopicError
from instance_seg_ros.tools.cli import main
from instance_seg_ros.tools.eval_replay import R_COLOR
from instance_seg_ros.tools.eval_report import to_json
from instance_seg_ros.tools.evaluate import evaluate
from instance_seg_ros.tools.record import COLOR_TOPIC, COMPRESSED_TOPIC, DEPTH_TOPIC, GT_TOPIC, record

W, H, N = 160, 120, 4
PRED = "/predictions"
CONFIG = Path(__file__).resolve().parents[1] / "config" / "test_untrained.yaml"
FORMATS = [("mcap", False, "16UC1"), ("mcap", True, "32FC1"), ("sqlite3", False, "32FC1"), ("sqlite3", True, "16UC1")]
FORMAT_IDS = [f"{s}-{'jpeg' if c else 'raw'}-{d}" for s, c, d in FORMATS]


# ---------------------------------------------------------------------------------------- bags
@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[tuple[str, bool, str], Path]:
    root = tmp_path_factory.mktemp("bags")
    out = {}
    for storage, compressed, depth in FORMATS:
        path = root / f"{storage}_{int(compressed)}_{depth}"
        record(path, N, storage=storage, compressed=compressed, depth_encoding=depth, width=W, height=H,
               min_objects=4, max_objects=6, seed=3)
        out[storage, compressed, depth] = path
    return out


@pytest.fixture(scope="module")
def segmenter():
    """One untrained model (the test_untrained.yaml parameters), seeded, shared by the pipeline runs."""
    import torch

    from instance_seg_ros.core.pipeline import Segmenter
    from instance_seg_ros.tools.cli_config import build_config

    cfg, _ = build_config(CONFIG)
    torch.manual_seed(0)
    seg = Segmenter(cfg, log=lambda m: None)
    seg.load()
    yield seg
    seg.release()


Edit = Callable[[str, int, Any], Any]
Extra = Callable[[str, int, Any], list[tuple[str, str, Any]]]


def rewrite(src: Path, dst: Path, *, drop: tuple[str, ...] = (), edit: Edit | None = None,
            extra: Extra | None = None) -> Path:
    """Copy a bag message by message (same storage, same receive times): ``drop`` topics, ``edit(topic, i, msg)``
    returns the message to write (a message, raw ``bytes``, or None to skip), ``extra(topic, i, msg)`` returns
    ``(topic, type, message)`` items to write beside it."""
    ts = bagio.typestore()
    storage = yaml.safe_load((src / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["storage_identifier"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    counts: Counter[str] = Counter()
    with AnyReader([src], default_typestore=ts) as reader, Writer(dst, version=9, storage_plugin=plugin) as writer:
        conns: dict[str, Any] = {}

        def put(topic: str, msgtype: str, t: int, data: bytes) -> None:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(conns[topic], t, data)

        for conn, t, raw in reader.messages():
            if conn.topic in drop:
                continue
            i = counts[conn.topic]
            counts[conn.topic] += 1
            msg = reader.deserialize(raw, conn.msgtype)
            out = edit(conn.topic, i, msg) if edit else msg
            if out is msg:
                put(conn.topic, conn.msgtype, t, bytes(raw))
            elif isinstance(out, bytes):
                put(conn.topic, conn.msgtype, t, out)
            elif out is not None:
                put(conn.topic, conn.msgtype, t, bytes(ts.serialize_cdr(out, conn.msgtype)))
            for topic, msgtype, m in (extra(conn.topic, i, msg) if extra else []):
                put(topic, msgtype, t, bytes(ts.serialize_cdr(m, msgtype)))
    return dst


def with_predictions(src: Path, dst: Path, transform: Callable[[int, Any], Any] = lambda i, m: m) -> Path:
    """``src`` plus a predictions topic holding (a transform of) each ground-truth message."""
    return rewrite(src, dst, extra=lambda topic, i, msg: [(PRED, bagio.INSTANCE_ARRAY, transform(i, msg))]
                   if topic == GT_TOPIC else [])


def ground_truth(bag: Path) -> dict[int, Any]:
    return {bagio.stamp_ns(m): bagio.frame_result_from_instance_array(m)
            for _, _, m in bagio.read_messages(bag, [GT_TOPIC])}


def strict_json(path: Path) -> dict[str, Any]:
    def refuse(c: str) -> None:
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(path.read_text(), parse_constant=refuse)


AP_KEYS = ("mask_ap", "mask_ap50", "mask_ap75", "amodal_ap", "amodal_ap50", "amodal_ap75")


# ---------------------------------------------------------------------------------------- predictions mode
@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_predictions_equal_to_ground_truth_score_perfectly(bags, tmp_path, fmt):
    bag = with_predictions(bags[fmt], tmp_path / "bag")
    r = evaluate(bag, predictions_topic=PRED, config=_config())
    assert r["mode"] == "predictions" and r["bag"]["storage"] == fmt[0]
    assert r["frames"]["evaluated"] == r["frames"]["messages"] == N and r["frames"]["rejected"] == 0
    for k in AP_KEYS:
        assert r["coco"][k] == pytest.approx(1.0), k
    g = sum(len(f.instances) for f in ground_truth(bags[fmt]).values())
    assert g >= N and r["matching"]["num_gt"] == r["matching"]["matched"] == g
    assert r["matching"]["recall"] == r["matching"]["precision"] == 1.0
    assert r["centroid_error_mm"]["count"] == g and r["centroid_error_mm"]["max"] == 0.0
    assert r["cloud_precision"]["mean"] == r["cloud_precision"]["pointwise"] == 1.0
    assert r["occlusion"]["mae"] == 0.0 and r["occlusion"]["mae_coco"] == 0.0
    assert r["occlusion"]["is_occluded_accuracy"] == 1.0
    assert r["latency_ms"]["recorded"]["count"] == N  # isr record stamps = bag times: 0 ms
    assert r["fps"] == pytest.approx(10.0)  # the recorder's rate


def test_ground_truth_scored_against_itself_is_perfect(bags, tmp_path, capsys):
    """``--predictions-topic`` naming the ground-truth topic is a sanity check: every frame pairs with itself."""
    bag = bags["mcap", False, "16UC1"]
    r = evaluate(bag, predictions_topic=GT_TOPIC, gt_topic=GT_TOPIC, config=_config())
    assert r["frames"]["evaluated"] == N and r["frames"]["rejected"] == 0
    for k in AP_KEYS:
        assert r["coco"][k] == pytest.approx(1.0), k
    assert r["matching"]["recall"] == r["matching"]["precision"] == 1.0
    out = tmp_path / "self"
    assert main(["eval", str(bag), "--predictions-topic", GT_TOPIC, "--gt-topic", GT_TOPIC, "--out", str(out),
                 "--quiet"]) == 0
    assert f"{N} of {N} frames evaluated, 0 rejected; mask AP 100.0" in capsys.readouterr().out


def test_one_removed_instance_lowers_recall_by_one_object(bags, tmp_path):
    src = bags["mcap", False, "16UC1"]
    bag = with_predictions(src, tmp_path / "bag", lambda i, m: dataclasses.replace(m, instances=m.instances[1:])
                           if i == 0 else m)
    r = evaluate(bag, predictions_topic=PRED, config=_config())
    g = sum(len(f.instances) for f in ground_truth(src).values())
    expected = (g - 1) / g
    assert r["matching"]["matched"] == g - 1 and r["matching"]["recall"] == pytest.approx(expected)
    assert r["matching"]["precision"] == 1.0
    # COCO's recall is the same at every IoU threshold; its AP keeps precision 1 up to that recall, then 0
    assert r["coco"]["mask_ar100"] == pytest.approx(expected)
    assert r["coco"]["amodal_ar100"] == pytest.approx(expected)
    for k in AP_KEYS:
        assert expected - 0.02 <= r["coco"][k] < 1.0, k
    assert r["per_frame"][0]["matched"] == r["per_frame"][0]["gt"] - 1
    assert all(f["matched"] == f["gt"] for f in r["per_frame"][1:])


def test_predictions_pair_with_the_nearest_ground_truth_within_slop(bags, tmp_path):
    src = bags["sqlite3", True, "16UC1"]

    def late(i: int, m: Any) -> Any:  # 0.6 ms after the ground truth (slop 1 ms); the last one 5 ms (too late)
        dt = 5_000_000 if i == N - 1 else 600_000
        return dataclasses.replace(m, header=bagio.header(bagio.stamp_ns(m) + dt, m.header.frame_id))

    r = evaluate(with_predictions(src, tmp_path / "bag", late), predictions_topic=PRED, config=_config())
    fr = r["frames"]
    assert fr["evaluated"] == N - 1 and r["coco"]["mask_ap"] == 1.0
    assert list(fr["rejected_by_reason"].values()) == [1] and "ground truth" in next(iter(fr["rejected_by_reason"]))
    assert fr["notes"] == {"ground truth without a frame": 1}


def test_gt_json_keyed_by_stamp_matches_the_topic(bags, tmp_path, segmenter):
    src = bags["sqlite3", False, "32FC1"]
    gts = ground_truth(src)
    images, anns = [], []
    for k, (stamp, fr) in enumerate(sorted(gts.items()), start=1):
        images.append({"id": k, "width": fr.width, "height": fr.height, "stamp_ns": stamp})
        vis = encode_masks(np.stack([i.full_mask(H, W) for i in fr.instances]))
        amo = encode_masks(np.stack([i.full_mask(H, W, amodal=True) for i in fr.instances]))
        for inst, v, a in zip(fr.instances, vis, amo, strict=True):
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": 1, "iscrowd": 0, "segmentation": v,
                         "amodal_segmentation": a, "occlusion": inst.occlusion, "centroid": inst.centroid.tolist()})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}))

    bag = with_predictions(src, tmp_path / "bag")
    r = evaluate(bag, predictions_topic=PRED, gt_json=path, config=_config())
    assert r["frames"]["evaluated"] == N and r["coco"]["mask_ap"] == 1.0 and r["coco"]["amodal_ap"] == 1.0
    assert r["centroid_error_mm"]["max"] == 0.0

    # pipeline mode: JSON without centroids (lifted from the bag's depth) scores the masks as the topic does
    for a in anns:
        del a["centroid"]
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    by_json = evaluate(src, gt_json=path, segmenter=segmenter)
    by_topic = evaluate(src, segmenter=segmenter)
    assert by_json["frames"]["evaluated"] == by_topic["frames"]["evaluated"] == N
    assert to_json(by_json["coco"]) == to_json(by_topic["coco"])  # NaN (no medium/large objects) as None
    assert by_json["matching"] == by_topic["matching"]


# ---------------------------------------------------------------------------------------- pipeline mode
@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_every_format_replays_through_the_pipeline(bags, segmenter, fmt):
    storage, compressed, depth = fmt
    r = evaluate(bags[fmt], segmenter=segmenter)
    assert r["inputs"]["image"] == (COMPRESSED_TOPIC if compressed else COLOR_TOPIC)  # found without being asked
    assert r["inputs"]["image_format"] == ("compressed" if compressed else "raw")
    assert r["frames"] == {"messages": N, "frame_step": 1, "skipped": 0, "evaluated": N, "rejected": 0,
                           "rejected_by_reason": {}, "rejected_examples": {}, "notes": {}}
    assert r["model"]["backbone"] == "resnet18_fpn" and r["model"]["frame"].startswith(f"{W}x{H}")
    for stage in ("decode", "preprocess", "inference", "postprocess", "lift", "geometry", "tracking", "end_to_end"):
        d = r["latency_ms"][stage]
        assert d["count"] == N and 0 <= d["p50"] <= d["p90"] <= d["p99"] <= d["max"], stage
    assert r["fps"] > 0
    assert r["matching"]["num_pred"] == N * segmenter.config.model.max_instances  # score threshold 0
    assert [f["stamp_ns"] for f in r["per_frame"]] == sorted(ground_truth(bags[fmt]))


def test_replay_is_deterministic_and_max_frames_stops_early(bags, segmenter):
    bag = bags["mcap", False, "16UC1"]
    a, b = evaluate(bag, segmenter=segmenter), evaluate(bag, segmenter=segmenter)
    assert to_json(a["coco"]) == to_json(b["coco"]) and to_json(a["matching"]) == to_json(b["matching"])
    r = evaluate(bag, segmenter=segmenter, max_frames=2)
    assert r["frames"]["messages"] == r["frames"]["evaluated"] == 2


def test_stamps_offset_within_slop_pair_every_frame(bags, segmenter, tmp_path):
    """Depth 0.4 ms before and camera_info 0.3 ms after the color stamp (slop 1 ms): the synchronizer waits for
    a later message, and the last frame is released by the end-of-bag flush; none is dropped."""
    offsets = {DEPTH_TOPIC: -400_000, "/camera/color/camera_info": 300_000}

    def shift(topic: str, i: int, msg: Any) -> Any:
        if topic not in offsets:
            return msg
        return dataclasses.replace(msg, header=bagio.header(bagio.stamp_ns(msg) + offsets[topic],
                                                            msg.header.frame_id))

    bag = rewrite(bags["mcap", False, "16UC1"], tmp_path / "bag", edit=shift)
    r = evaluate(bag, segmenter=segmenter)
    assert segmenter.config.sync.slop == 0.001
    assert r["frames"]["evaluated"] == N and r["frames"]["rejected"] == 0


def test_corrupt_color_messages_are_rejected_and_the_rest_evaluated(bags, segmenter, tmp_path):
    def corrupt_raw(topic: str, i: int, msg: Any) -> Any:
        if topic == COLOR_TOPIC and i == 1:
            return dataclasses.replace(msg, data=msg.data[:-7])  # truncated buffer
        if topic == COLOR_TOPIC and i == 2:
            return dataclasses.replace(msg, encoding="yuv422_odd")  # unknown encoding
        return msg

    def corrupt_jpeg(topic: str, i: int, msg: Any) -> Any:
        if topic == COMPRESSED_TOPIC and i in (0, 3):
            return dataclasses.replace(msg, data=np.frombuffer(b"not a jpeg at all", np.uint8))
        return msg

    for fmt, edit, bad in ((("mcap", False, "16UC1"), corrupt_raw, {1, 2}),
                           (("sqlite3", True, "16UC1"), corrupt_jpeg, {0, 3})):
        bag = rewrite(bags[fmt], tmp_path / f"bag_{fmt[0]}", edit=edit)
        r = evaluate(bag, segmenter=segmenter)
        fr = r["frames"]
        assert fr["messages"] == N and fr["evaluated"] == N - 2 and fr["rejected"] == 2
        assert fr["rejected_by_reason"] == {R_COLOR: 2}
        assert fr["notes"] == {}  # their ground truth is not reported as orphaned
        stamps = sorted(ground_truth(bags[fmt]))
        assert [f["stamp_ns"] for f in r["per_frame"]] == [s for k, s in enumerate(stamps) if k not in bad]
    assert "bytes" in r["frames"]["rejected_examples"][R_COLOR] or "decod" in r["frames"]["rejected_examples"][R_COLOR]


def test_a_frame_without_depth_is_rejected_as_unmatched(bags, segmenter, tmp_path):
    bag = rewrite(bags["mcap", True, "32FC1"], tmp_path / "bag",
                  edit=lambda topic, i, msg: None if topic == DEPTH_TOPIC and i == 1 else msg)
    r = evaluate(bag, segmenter=segmenter)
    fr = r["frames"]
    assert fr["evaluated"] == N - 1 and fr["rejected_by_reason"] == {"no depth message within sync.slop": 1}
    assert fr["notes"] == {"unused camera_info messages": 1}


# ---------------------------------------------------------------------------------------- errors and CLI
def test_missing_depth_topic_names_it_and_lists_the_bag(bags, tmp_path, capsys):
    bag = rewrite(bags["mcap", False, "16UC1"], tmp_path / "bag", drop=(DEPTH_TOPIC,))
    assert main(["eval", str(bag), "--out", str(tmp_path / "out"), "--quiet", "--params", str(CONFIG)]) == 2
    err = capsys.readouterr().err
    assert f"Topic {DEPTH_TOPIC} (--depth-topic) is not in the bag" in err
    for topic in (COLOR_TOPIC, "/camera/color/camera_info", GT_TOPIC):
        assert topic in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(MissingTopicError) as info:
        evaluate(bag, predictions_topic="/nope", config=_config())
    assert info.value.topic == "/nope" and COLOR_TOPIC in info.value.available
    with pytest.raises(MissingTopicError, match="--gt-json"):
        evaluate(bag, gt_topic="/no_gt", config=_config())


def test_cli_runs_the_real_pipeline_and_writes_the_report(bags, tmp_path, capsys):
    out = tmp_path / "out"
    bag = bags["sqlite3", True, "16UC1"]
    assert main(["eval", str(bag), "--params", str(CONFIG), "--out", str(out), "--quiet"]) == 0
    assert "4 of 4 frames evaluated" in capsys.readouterr().out
    m = strict_json(out / "metrics.json")
    assert m["command"].startswith(f"isr eval {bag} ") and "--params" in m["command"]
    assert m["frames"]["evaluated"] == N and m["model"]["weights"] == "none"
    assert m["config"]["model.backbone"] == "resnet18_fpn" and m["config"]["sync.slop"] == 0.001
    assert set(m["coco"]) >= {"mask_ap", "mask_ap50", "mask_ap75", "amodal_ap", "amodal_ap50", "amodal_ap75"}
    assert len(m["pr_curves"]["recall"]) == 101
    text = (out / "report.md").read_text()
    for needle in (m["command"], "mask AP50 (visible)", "amodal AP75", "occlusion MAE", "is_occluded accuracy",
                   "3D centroid error", "point-cloud precision", "| inference |", "Frames per second",
                   "model.score_threshold", "resnet18_fpn", "pr_visible.png"):
        assert needle in text, needle
    for name in ("pr_visible.png", "pr_amodal.png", "latency_hist.png", "occlusion_error.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def _config():
    from instance_seg_ros.tools.cli_config import build_config

    return build_config(CONFIG)[0]
