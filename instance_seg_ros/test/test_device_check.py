"""``scripts/device_check.sh``: the CPU dry run (``--quick --cpu``) reports every step and fails none; a step that
crashes or hangs is reported as failed, the others still run, and the exit status says so. The GPU run itself needs
a GPU (see the script's header)."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device_check.sh"
STEPS = ["environment", "cuda_tests",
         *(f"bench_{m}_{p}" for m in ("default", "r50x30") for p in ("fp32", "fp16", "bf16")),
         "oom_recovery", "release", "train_smoke"]


def _check(out: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 240.0):
    proc = subprocess.run(["bash", str(SCRIPT), str(out), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    report = json.loads((out / "device_check.json").read_text())
    return proc, report


def test_cpu_dry_run_reports_every_step_and_fails_none(tmp_path):
    out = tmp_path / "check"
    proc, report = _check(out, "--quick", "--cpu")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "CPU DRY RUN" in proc.stdout
    assert report["mode"] == "cpu" and report["cuda"] is False and report["exit_status"] == 0
    steps = report["steps"]
    assert list(steps) == STEPS
    for name, r in steps.items():
        assert r["status"] in ("pass", "skipped"), (name, r)
        assert r["seconds"] >= 0 and "figures" in r, name
        if r["status"] == "skipped":
            assert r["reason"], name
    assert steps["cuda_tests"]["status"] == "skipped" and steps["cuda_tests"]["figures"]["collected"] >= 4
    assert steps["oom_recovery"]["status"] == "skipped" and "CUDA" in steps["oom_recovery"]["reason"]
    bench = steps["bench_default_fp32"]
    assert bench["status"] == "pass" and bench["figures"]["device"] == "cpu"
    assert bench["figures"]["e2e_median_ms"] > 0 and bench["figures"]["baseline_e2e_median_ms"] > 0
    assert all(steps[f"bench_{m}_{p}"]["status"] == "skipped" for m, p in
               [("default", "fp16"), ("default", "bf16"), ("r50x30", "fp32"), ("r50x30", "fp16"), ("r50x30", "bf16")])
    assert steps["release"]["status"] == "pass"
    train = steps["train_smoke"]["figures"]
    assert steps["train_smoke"]["status"] == "pass" and train["iterations"] == 3
    assert math.isfinite(train["first_loss"]) and math.isfinite(train["last_loss"]) and train["checkpoint_mb"] > 0
    md = (out / "device_check.md").read_text()
    assert "CPU dry run" in md and all(f"| {name} |" in md for name in STEPS)
    assert sorted(p.name for p in out.iterdir()) == ["device_check.json", "device_check.log", "device_check.md"]


def test_a_crashed_and_a_hung_step_fail_and_the_rest_still_runs(tmp_path):
    out = tmp_path / "check"
    proc, report = _check(out, "--cpu", "--only", "cuda_tests,release,oom_recovery", "--timeout", "release=3",
                          env={"ISR_DEVICE_CHECK_FAULT": "cuda_tests=crash,release=hang"}, timeout=120.0)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    steps = report["steps"]
    assert list(steps) == STEPS and report["exit_status"] == 1
    assert steps["environment"]["status"] == "pass"
    assert steps["cuda_tests"]["status"] == "fail" and "without a result" in steps["cuda_tests"]["error"]
    assert steps["release"]["status"] == "fail" and "timed out after 3 s" in steps["release"]["error"]
    assert steps["oom_recovery"]["status"] == "skipped"
    assert steps["train_smoke"] == {**steps["train_smoke"], "status": "skipped", "reason": "not selected (--only)"}
    md = (out / "device_check.md").read_text()
    assert "## Errors and warnings" in md and "timed out after 3 s" in md
    assert "failed: cuda_tests, release" in proc.stdout


def test_bad_arguments_exit_2(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage" in proc.stderr
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "--only", "nonsense"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unknown step 'nonsense'" in proc.stderr
