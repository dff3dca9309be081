"""benchmarks/device_check.sh, the one script of GPU checks: its dry run on the CPU runs every
step and writes every figure (the CUDA parts are tested where a GPU is lent)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--cpu"],
                          env={**os.environ, "OUT": str(out)}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    names = {p.name for p in out.iterdir()}
    assert {"env.json", "gpu_tests.json", "tiling.json", "bench.json", "train.json",
            "device_check.log"} <= names
    assert not [n for n in names if n.endswith("_error.json")], names
    tests = json.loads((out / "gpu_tests.json").read_text())
    assert tests["exit_code"] == 0 and tests["counts"].get("failed", 0) == 0
    tiling = json.loads((out / "tiling.json").read_text())
    assert all(row["equal"] for row in tiling["tiles"])  # on the CPU: bit for bit
    bench = json.loads((out / "bench.json").read_text())
    assert {r["mode"] for r in bench} >= {"session", "pipeline"}
    train = json.loads((out / "train.json").read_text())
    (row,) = train["rows"]
    assert row["exit_code"] == 0 and row["train_s"] > 0 and row["psnr"] > 20
    options = train["options"]  # benchmarks/gpu_options.py, CUDA-graph steps included
    assert options["exit_code"] == 0, options
    runs = {(r["image"], r["run"]) for r in options["rows"]}
    assert {("capture", "warm1"), ("capture", "graph1"), ("low-noise", "graph1")} <= runs
