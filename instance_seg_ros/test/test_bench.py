"""``isr bench``: a smoke run of the CLI (every stage and the baseline ratio in its JSON), its config handling,
statistics, table, and the node-level mode. No timing assertions: the figures live in docs/benchmarks.md."""

from __future__ import annotations

import json

import numpy as np
import pytest

from instance_seg_ros.tools import bench
from instance_seg_ros.tools.cli import main

SMALL = ["--set", "model.weights=none", "--set", "model.backbone=mobilenet_v3_large_fpn", "--set", "model.threads=1",
         "--width", "128", "--height", "96", "--instances", "2"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    assert main(["bench", *SMALL, "--runs", "2", "--warmup", "0", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_json_has_every_stage_and_the_baseline_ratio(report):
    for side in ("ours", "baseline"):
        r = report[side]
        assert set(r["stages"]) == set(bench.STAGES)
        for s in bench.STAGES:
            st = r["stages"][s]
            assert st["median"] >= 0 and st["p99"] >= st["median"] - 1e-9, (side, s, st)
        assert r["end_to_end"]["median"] > 0 and r["fps"] > 0
        assert r["peak_rss_mb"] > 0 and r["cuda_peak_mb"] is None
        assert 0 < r["outside_network_fraction"] < 1
        assert r["instances"] >= 1
    assert set(report["ratio"]) == {*bench.STAGES, "end_to_end", "outside_network"}
    assert report["ratio"]["end_to_end"] > 0
    a = report["agreement"]
    assert a["instances"] == a["reference_instances"] == a["matched_iou_0.99"]
    assert a["max_centroid_mm"] <= 1.0
    assert report["frame"] == {"width": 128, "height": 96, "instances": 2, "seed": 0,
                               "visible_objects": report["frame"]["visible_objects"]}
    assert report["config"]["model.max_instances"] == 2 and report["config"]["model.score_threshold"] == 0.0
    assert report["model"]["network_input"] == [96, 128]
    assert report["node"] is None
    assert report["machine"]["torch_threads"] >= 1


def test_table_lists_every_stage(report):
    text = bench.format_report(report)
    for s in (*bench.STAGES, "end_to_end", "fps", "outside net", "peak RSS MB", "fast vs reference"):
        assert s in text
    assert "ours/base" in text


def test_json_only_output_and_bad_arguments(capsys):
    assert main(["bench", *SMALL, "--width", "8", "--json"]) == 2
    assert "--width/--height must be within 16..4096" in capsys.readouterr().err
    assert main(["bench", "--set", "model.backbone"]) == 2
    assert "--set expects KEY=VALUE" in capsys.readouterr().err
    assert main(["bench", "--set", "model.nonsense=1"]) == 2
    assert "Unknown parameter" in capsys.readouterr().err


def test_build_config_for_untrained_weights():
    cfg, notes = bench.build_config(None, {"model.weights": "none", "model.mask_threshold": 0.4}, device="cpu",
                                    instances=7)
    assert cfg.model.score_threshold == 0.0 and cfg.model.mask_threshold == 0.4
    assert cfg.model.max_instances == 7 and cfg.model.device == "cpu"
    assert any("score_threshold=0" in n for n in notes) and not any("mask_threshold" in n for n in notes)
    trained, notes = bench.build_config(None, {"model.weights": "/some/model.pt"})
    assert trained.model.score_threshold == 0.5 and notes == []


def test_stats_median_and_p99():
    s = bench.stats(list(range(1, 101)))
    assert s["median"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01)
    assert s["min"] == 1 and s["max"] == 100
    assert np.isnan(bench.stats([])["median"])


def test_node_mode_skips_cleanly_without_the_node(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "instance_seg_ros.ros.node" else real(name, *a))
    cfg, _ = bench.build_config(None, {"model.weights": "none"})
    out = bench.node_bench(cfg, None, frame=None, runs=1, warmup=0)
    assert "skipped" in out and "instance_seg_ros.ros.node" in out["skipped"]


@pytest.mark.ros
@pytest.mark.slow
def test_node_mode_measures_publish_to_receive(tmp_path):
    path = tmp_path / "node.json"
    assert main(["bench", *SMALL, "--runs", "2", "--warmup", "1", "--no-baseline", "--no-check", "--node",
                 "--json", str(path)]) == 0
    r = json.loads(path.read_text())
    node = r["node"]
    assert "skipped" not in node, node.get("skipped")
    assert node["frames"] == 2 and node["latency"]["median"] > 0
    assert node["overhead_vs_in_process_ms"] is not None
    assert r["baseline"] is None and r["ratio"] is None and "agreement" not in r
