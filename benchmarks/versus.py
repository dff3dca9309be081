"""This checkout against an earlier commit, side by side in one run: CPU ``apply`` throughput
on the same volume at default settings, and ``train-and-apply`` quality on the FMD images.

Each version runs from its own source tree (``git archive`` of the base commit) with the
same Python environment. Throughput: each version saves an untrained network of its
default recipe (throughput does not depend on the weights), then the two ``apply`` commands
alternate on the same synthetic OME-Zarr (``fm2s.bench.write_volume``); reported are the
whole command's wall time and the Mvoxel/s the command itself prints. Quality: the default
``train-and-apply`` of each FMD ``_1`` capture with its microscope's preset, PSNR against
the ground truth.

    python benchmarks/versus.py --base f404fe5
    python benchmarks/versus.py --base f404fe5 --skip-quality --shape 1,16,2048,2048
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA, groups_in, microscope_of, psnr
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

MAKE_MODEL = """
import sys, torch
from fm2s.model import TrainedModel
from fm2s.network import FM2SNet
from fm2s.normalize import Normalization
from fm2s.recipes import make_config
cfg = make_config("fast", "confocal", seed=0)
torch.manual_seed(0)
net = FM2SNet(cfg.noise.amplification, *cfg.kernels)
TrainedModel(net, Normalization(100.0, 800.0), cfg, (150.0, 700.0), 0.0, "cpu").save(sys.argv[1])
"""


def source_tree(commit: str, folder: Path) -> Path:
    """The ``fm2s`` package of ``commit`` unpacked under ``folder``."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "fm2s"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def run(tree: Path, *args: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, *args], env=env, check=True, capture_output=True,
                         text=True).stdout
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the earlier commit")
    ap.add_argument("--shape", default="1,16,2048,2048", help="T,Z,Y,X of the volume")
    ap.add_argument("--repeats", type=int, default=2, help="apply runs per version")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result: dict = {"base": args.base, "head": subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
        text=True).stdout.strip() + (" (+ uncommitted changes)" if subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "fm2s"], capture_output=True,
            text=True).stdout.strip() else "")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {"base": source_tree(args.base, tmp / "base"), "head": ROOT}
        if not args.skip_throughput:
            from fm2s.bench import write_volume

            shape = tuple(int(s) for s in args.shape.split(","))
            volume = write_volume(tmp / "volume.ome.zarr", shape)
            voxels = int(np.prod(shape))
            walls: dict[str, list[float]] = {"base": [], "head": []}
            reported: dict[str, list[float]] = {"base": [], "head": []}
            for name, tree in trees.items():
                run(tree, "-c", MAKE_MODEL, str(tmp / f"{name}.onnx"))
            for i in range(args.repeats):
                for name, tree in trees.items():
                    out = tmp / f"{name}{i}.ome.zarr"
                    wall, text = run(tree, "-m", "fm2s.cli", "apply", str(tmp / f"{name}.onnx"),
                                     str(volume), "-o", str(out), "--quiet")
                    walls[name].append(voxels / wall / 1e6)
                    reported[name].append(float(re.search(r"\(([\d.]+) Mvoxel/s\)",
                                                          text).group(1)))
                    subprocess.run(["rm", "-rf", str(out)], check=True)
                    print(f"{name} run {i}: {walls[name][-1]:.2f} Mvoxel/s whole command, "
                          f"{reported[name][-1]:.2f} reported", flush=True)
            med = {k: statistics.median(v) for k, v in walls.items()}
            rep = {k: statistics.median(v) for k, v in reported.items()}
            result["throughput"] = {
                "shape": list(shape), "whole_command_mvox_s": med, "reported_mvox_s": rep,
                "ratio_whole_command": med["head"] / med["base"],
                "ratio_reported": rep["head"] / rep["base"], "runs": walls}
            print(f"apply, {args.shape} uint16: whole command {med['base']:.2f} -> "
                  f"{med['head']:.2f} Mvoxel/s (x{med['head'] / med['base']:.2f}); as reported "
                  f"{rep['base']:.2f} -> {rep['head']:.2f} (x{rep['head'] / rep['base']:.2f})")
        if not args.skip_quality:
            if not (args.data / "raw").is_dir():
                sys.exit(f"no FMD-like folder at {args.data}: pass --data or --skip-quality")
            rows = []
            for group in groups_in(args.data):
                src = args.data / "raw" / f"{group}_1.png"
                gt = np.asarray(Image.open(args.data / "gt" / f"{group}.png"))
                row = {"image": f"{group}_1"}
                for name, tree in trees.items():
                    out = tmp / f"{group}.{name}.png"
                    wall, _ = run(tree, "-m", "fm2s.cli", "train-and-apply", str(src), "-o",
                                  str(out), "--microscope", microscope_of(group), "--device",
                                  "cpu", "--seed", "0", "--quiet")
                    row[name] = psnr(np.asarray(Image.open(out)), gt)
                    row[f"{name}_wall_s"] = round(wall, 1)
                row["diff"] = row["head"] - row["base"]
                rows.append(row)
                print(f"{row['image']:<22} base {row['base']:.2f}  head {row['head']:.2f}  "
                      f"({row['diff']:+.3f} dB)", flush=True)
            mean = {k: statistics.mean(r[k] for r in rows) for k in ("base", "head", "diff")}
            result["quality"] = {"rows": rows, "mean": mean}
            print(f"mean: base {mean['base']:.3f}  head {mean['head']:.3f}  "
                  f"({mean['diff']:+.3f} dB)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
