"""``isr replay``: a recorded bag played into a real instance_seg_node process at twice its rate, the node's
InstanceArray outputs recorded beside the bag's ground truth and scored with identities.

The replay publishes and subscribes reliably (what the tool does, because best-effort 640x480 images are lost
between processes here); the node runs in its own process under this test's ROS_DOMAIN_ID (conftest) and is
always stopped by the tool. Bad arguments end with a message before any node starts.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from instance_seg_ros.tools.bagio import open_bag, topics
from instance_seg_ros.tools.cli import main
from instance_seg_ros.tools.record import GT_TOPIC
from instance_seg_ros.tools.replay import PREDICTIONS_TOPIC

ISR = [sys.executable, "-m", "instance_seg_ros.tools.cli"]


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory):
    bag = tmp_path_factory.mktemp("replay") / "bag"
    assert main(["record", "--out", str(bag), "--frames", "16", "--width", "320", "--height", "240",
                 "--min-objects", "3", "--max-objects", "5", "--seed", "5", "--quiet"]) == 0
    return bag


@pytest.mark.slow
def test_replay_at_twice_the_rate_records_and_scores_the_node(small_bag, tmp_path):
    out = tmp_path / "rep"
    r = subprocess.run([*ISR, "replay", str(small_bag), "--rate", "2", "--out", str(out), "--settle", "4"],
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "published 16 frames" in r.stderr
    m = json.loads((out / "eval" / "metrics.json").read_text())
    rep = m["replay"]
    assert rep["rate"] == 2.0 and rep["frames_published"] == 16
    assert 1 <= rep["outputs"] <= 16  # the node answers the frames it is free for, never more
    assert m["mode"] == "predictions" and m["frames"]["evaluated"] == rep["outputs"]
    assert m["tracking"]["status"] == "ok"  # the node's own track ids against the simulator's object ids
    assert 0.0 <= m["tracking"]["idf1"] <= 1.0
    with open_bag(out / "bag") as reader:
        t = topics(reader)
    assert t[PREDICTIONS_TOPIC][1] == rep["outputs"] and t[GT_TOPIC][1] == 16
    assert (out / "logs" / "instance_seg_node.log").is_file()


def test_replay_names_the_bags_topics_when_one_is_missing(small_bag, tmp_path, capsys):
    assert main(["replay", str(small_bag), "--image-topic", "/nope", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "/nope" in err and GT_TOPIC in err
    assert main(["replay", str(small_bag), "--rate", "0", "--out", str(tmp_path / "r2")]) == 1
    assert "--rate must be > 0" in capsys.readouterr().err
