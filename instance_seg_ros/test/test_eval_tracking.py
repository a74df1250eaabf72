"""``isr eval``'s tracking figures: hand-computed sequences through :class:`EvalRun`, recorded track ids scored as
they are, and the tracker run over a short simulated bag (an untrained model), every frame and every other frame.

Ground truth and predictions are built from disks, so every figure follows by counting: ids that stay with their
objects give IDF1 = MOTA = 1 and no switch whatever the numbers; one object taking a new track id halfway is one
switch; ground truth without identities gives no figures, and says so.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from instance_seg_ros.core.config import Config
from instance_seg_ros.core.eval_metrics import FrameScorer
from instance_seg_ros.core.masks import box_and_crop
from instance_seg_ros.core.types import FrameResult, InstanceResult
from instance_seg_ros.tools import bagio
from instance_seg_ros.tools.cli import main
from instance_seg_ros.tools.eval_errors import EvalError
from instance_seg_ros.tools.eval_replay import NO_GT_IDS, EvalRun, mot_summary
from instance_seg_ros.tools.eval_report import format_markdown
from instance_seg_ros.tools.evaluate import evaluate
from instance_seg_ros.tools.record import GT_TOPIC, record

H, W = 60, 80
CONFIG = Path(__file__).resolve().parents[1] / "config" / "test_untrained.yaml"
DISKS = [(15, 15, 8), (40, 30, 6), (65, 45, 7)]  # (cx, cy, r) of three objects, ground-truth ids 1, 2, 3


def disk(cx: int, cy: int, r: int, track_id: int) -> InstanceResult:
    v, u = np.mgrid[0:H, 0:W]
    bbox, mask = box_and_crop((u - cx) ** 2 + (v - cy) ** 2 <= r * r)
    return InstanceResult(index=0, class_id=1, class_name="object", score=0.9, bbox=bbox, mask=mask,
                          amodal_bbox=bbox, amodal_mask=mask.copy(), occlusion=0.0, is_occluded=False,
                          track_id=track_id)


def frame(ids: list[int]) -> FrameResult:
    insts = [disk(*d, track_id=t) for d, t in zip(DISKS, ids, strict=True)]
    label = np.zeros((H, W), np.uint16)
    for k, inst in enumerate(insts, start=1):
        inst.index = k
        label[inst.full_mask(H, W)] = k
    return FrameResult(width=W, height=H, instances=insts, label_image=label)


def scored_run(pred_ids: list[list[int]], gt_ids: list[int], *, frame_step: int = 1) -> EvalRun:
    """An EvalRun fed frame t (stamp t s) with predictions carrying ``pred_ids[t]`` and ground truth ``gt_ids``;
    ground truth and predictions arrive shuffled, as results can pair out of stamp order."""
    run = EvalRun(FrameScorer(), Config(), frame_step=frame_step)
    stamps = [(t + 1) * 1_000_000_000 for t in range(len(pred_ids))]
    taken = {s for s in stamps if run.take(s)}
    items = [("gt", s, frame(gt_ids)) for s in stamps] + [("pred", s, frame(p)) for s, p in zip(stamps, pred_ids,
                                                                                              strict=True)]
    random.Random(0).shuffle(items)
    for kind, s, fr in items:
        if kind == "gt":
            run.add_gt(s, fr)
        elif s in taken:
            run.add_pred(s, fr, {})
    run.finish()
    return run


def test_ids_that_stay_with_their_objects_score_one():
    run = scored_run([[7, 8, 9]] * 6, [1, 2, 3])
    t = mot_summary(run.id_frames, 0.5)
    assert t["status"] == "ok" and not t["notes"]
    assert (t["frames"], t["gt_objects"], t["gt_ids"], t["predictions"], t["pred_ids"]) == (6, 18, 3, 18, 3)
    assert (t["idf1"], t["mota"], t["id_switches"], t["id_switches_per_100"]) == (1.0, 1.0, 0, 0.0)
    assert t["motp"] == pytest.approx(1.0)


def test_one_object_taking_a_new_id_halfway_is_one_switch():
    # object 1 is track 7 in frames 0-2 and track 70 in frames 3-5; objects 2 and 3 keep 8 and 9
    run = scored_run([[7, 8, 9]] * 3 + [[70, 8, 9]] * 3, [1, 2, 3])
    t = mot_summary(run.id_frames, 0.5)
    assert t["id_switches"] == 1 and t["pred_ids"] == 4
    assert t["mota"] == pytest.approx(1 - 1 / 18)
    assert t["id_switches_per_100"] == pytest.approx(100 / 18)
    # IDF1: object 1 pairs with 7 or 70 (3 frames), 2 and 3 with 8 and 9 (6 each): IDTP 15 of 18 and 18
    assert (t["idtp"], t["idfp"], t["idfn"]) == (15, 3, 3)
    assert t["idf1"] == pytest.approx(15 / 18)


def test_untracked_predictions_and_ground_truth_without_ids():
    # track id 0 (tentative) is left out: object 3 untracked in every frame = 6 misses, no false positive
    t = mot_summary(scored_run([[7, 8, 0]] * 6, [1, 2, 3]).id_frames, 0.5)
    assert (t["misses"], t["false_positives"], t["id_switches"]) == (6, 0, 0)
    assert t["mota"] == pytest.approx(1 - 6 / 18) and t["idf1"] == pytest.approx(2 * 12 / (2 * 12 + 6))
    # object 3 is detected (an untracked prediction covers it): the identity on detected objects still counts it
    assert (t["gt_detected"], t["predictions_on_gt"]) == (18, 12) and t["idf1_detected"] == pytest.approx(24 / 30)
    # ground truth with one instance unidentified: left out and counted
    t = mot_summary(scored_run([[7, 8, 9]] * 2, [1, 2, 0]).id_frames, 0.5)
    assert t["gt_objects"] == 4 and t["false_positives"] == 2
    assert t["notes"] == {"ground-truth instances without an identity (left out)": 2}
    t = mot_summary(scored_run([[7, 8, 9]] * 2, [0, 0, 0]).id_frames, 0.5)
    assert t["status"] == NO_GT_IDS and math.isnan(t["idf1"])


def test_frame_step_skips_frames_and_their_ground_truth():
    run = scored_run([[7, 8, 9]] * 3 + [[70, 8, 9]] * 3, [1, 2, 3], frame_step=2)
    assert sorted(f.stamp_ns // 10**9 for f in run.id_frames) == [1, 3, 5]
    assert len(run.skipped_stamps) == 3 and not run.pending_gt and not run.notes
    t = mot_summary(run.id_frames, 0.5)
    assert (t["frames"], t["id_switches"]) == (3, 1)  # frames 0, 2 (track 7) and 4 (track 70)


# ---------------------------------------------------------------------------------------- bags
@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "orbit"
    record(path, 4, width=160, height=120, min_objects=3, max_objects=4, seed=5)
    return path


def test_recorded_track_ids_are_scored_as_they_are(bag, tmp_path):
    """The ground-truth topic as predictions: ids equal to the truth score 1; then one object's id changes from the
    third frame on (a rewritten copy of the bag): one switch, IDF1 as counted from the ground truth."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import Writer

    rep = evaluate(bag, predictions_topic=GT_TOPIC, config=Config())
    t = rep["tracking"]
    assert t["status"] == "ok" and t["ids_from"].startswith("the recorded track_id")
    assert (t["idf1"], t["mota"], t["id_switches"]) == (1.0, 1.0, 0) and t["tracker"] is None
    with pytest.raises(EvalError, match="frame-step"):
        evaluate(bag, predictions_topic=GT_TOPIC, config=Config(), frame_step=0)

    gts = [bagio.frame_result_from_instance_array(m) for _, _, m in bagio.read_messages(bag, [GT_TOPIC])]
    victim = gts[0].instances[0].track_id
    before = sum(victim in {i.track_id for i in g.instances} for g in gts[:2])
    after = sum(victim in {i.track_id for i in g.instances} for g in gts[2:])
    total = sum(len(g.instances) for g in gts)
    assert before and after  # seen on both sides of the change
    ts = bagio.typestore()
    out = tmp_path / "renamed"
    with AnyReader([bag], default_typestore=ts) as reader, Writer(out, version=9) as writer:
        conns: dict[str, object] = {}

        def put(topic: str, msgtype: str, t_ns: int, data: bytes) -> None:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(conns[topic], t_ns, data)

        n_gt = 0
        for conn, t_ns, raw in reader.messages():
            put(conn.topic, conn.msgtype, t_ns, bytes(raw))
            if conn.topic == GT_TOPIC:
                msg = reader.deserialize(raw, conn.msgtype)
                for m in msg.instances:
                    if n_gt >= 2 and m.track_id == victim:
                        m.track_id = 9999
                n_gt += 1
                put("/pred", conn.msgtype, t_ns, bytes(ts.serialize_cdr(msg, conn.msgtype)))
    t = evaluate(out, predictions_topic="/pred", config=Config())["tracking"]
    assert t["id_switches"] == 1 and t["pred_ids"] == t["gt_ids"] + 1
    assert t["idtp"] == total - min(before, after)
    assert t["idf1"] == pytest.approx((total - min(before, after)) / total)


def test_tracker_over_a_sim_bag_every_frame_and_every_other(bag, tmp_path, capsys):
    """The untrained model's detections tracked (every detection starts a track, confirmed at once): numeric MOTA,
    IDF1 and switches in metrics.json and a Tracking section in report.md; --frame-step 2 evaluates half."""
    args = ["eval", str(bag), "--params", str(CONFIG), "--set", "tracking.low_score=0",
            "--set", "tracking.high_score=0", "--set", "tracking.min_hits=1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "all")]) == 0
    assert "IDF1" in capsys.readouterr().out
    rep = json.loads((tmp_path / "all" / "metrics.json").read_text())
    t = rep["tracking"]
    assert t["status"] == "ok" and t["ids_from"].startswith("the tracker")
    assert t["frames"] == 4 and t["gt_ids"] >= 3 and t["predictions"] > 0
    for k in ("mota", "idf1", "id_switches_per_100"):  # MOTP is NaN (null) when nothing matched: untrained masks
        assert isinstance(t[k], float) and math.isfinite(t[k]), k
    assert isinstance(t["id_switches"], int) and t["tracker"]["frames"] == 4
    assert t["tracker_update_ms"]["count"] == 4 and t["tracker_update_ms"]["p50"] > 0
    assert all(f["track_ids"] and all(f["track_ids"]) for f in rep["per_frame"])
    md = (tmp_path / "all" / "report.md").read_text()
    assert "## Tracking" in md and "| IDF1 |" in md and "Tracker update per frame: median" in md

    assert main([*args, "--frame-step", "2", "--out", str(tmp_path / "half")]) == 0
    rep = json.loads((tmp_path / "half" / "metrics.json").read_text())
    assert (rep["frames"]["skipped"], rep["frames"]["evaluated"], rep["tracking"]["frames"]) == (2, 2, 2)
    assert "--frame-step 2" in rep["command"] and "one frame in 2 evaluated" in format_markdown(rep)
