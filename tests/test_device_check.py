"""benchmarks/device_check.sh, the one script of GPU checks: its dry run on the CPU runs every
step and writes every figure (the CUDA parts are tested where a GPU is lent)."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _device_check():
    spec = importlib.util.spec_from_file_location("device_check",
                                                  ROOT / "benchmarks" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_run_where_no_test_passed_fails():
    """All gpu tests skipped (no CUDA) is a failure of the device check, not a pass."""
    verdict = _device_check().tests_verdict
    assert verdict(0, {"passed": 11}) is None
    assert verdict(0, {"passed": 3, "skipped": 8}) is None
    assert "no test passed" in verdict(0, {"skipped": 11})
    assert "no test passed" in verdict(0, {})
    assert "1 failed" in verdict(1, {"passed": 10, "failed": 1})
    assert "2 errors" in verdict(1, {"passed": 1, "errors": 2})
    assert "exited 124" in verdict(124, {"passed": 2})


@pytest.mark.slow
def test_cpu_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--cpu"],
                          env={**os.environ, "OUT": str(out)}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    names = {p.name for p in out.iterdir()}
    assert names == {"env.json", "gpu_tests.json", "tiling.json", "many.json", "train.json",
                     "bench.json", "bench.txt", "device_check.log"}  # the tool returns 8
    tests = json.loads((out / "gpu_tests.json").read_text())
    # the gpu tests skip here; the CPU twin of the batched check runs, so something passed
    assert tests["ok"] and tests["counts"]["passed"] >= 1 and tests["counts"]["skipped"] >= 1
    env = json.loads((out / "env.json").read_text())
    assert env["conv_search"]["DEFAULT"]["result"]["fp32"]["mvox_s"] > 0
    tiling = json.loads((out / "tiling.json").read_text())
    assert len(tiling["tiles"]) == 10
    assert all(row["equal"] for row in tiling["tiles"])  # on the CPU: bit for bit
    assert all(row["shapes"] == 1 for row in tiling["tiles"] if row["uniform"])
    many = json.loads((out / "many.json").read_text())
    assert len(many["rows"]) == 2 and many["models_per_minute"]["batched"] > 0
    assert many["batch_sizes"] == [2] and many["largest_abs_db"] < 0.05
    assert many["command_failed"] == [] and many["command_largest_abs_db"] == 0  # CPU: alone
    bench = json.loads((out / "bench.json").read_text())
    assert {r["mode"] for r in bench} >= {"session", "pipeline"}
    assert all("provider_options" in r and r["tf32"] is False for r in bench)
    train = json.loads((out / "train.json").read_text())
    (row,) = train["rows"]
    assert row["exit_code"] == 0 and row["train_s"] > 0 and row["psnr"] > 20
    options = train["options"]  # benchmarks/gpu_options.py, CUDA-graph steps included
    assert options["exit_code"] == 0, options
    runs = {(r["image"], r["run"]) for r in options["rows"]}
    assert {("capture", "warm1"), ("capture", "graph1"), ("low-noise", "graph1")} <= runs
