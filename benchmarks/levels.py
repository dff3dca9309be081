"""Quality benchmark per noise level: noisy, the v2 recipe with the right preset, and auto.

Over a folder laid out like ``shared/data/fmd`` (``raw/<group>_<k>.png``, k = 1..4, and
``gt/<group>.png``), it builds the noise levels of the FMD data set: ``avg1`` is capture 1,
``avg2`` the mean of captures 1-2 and ``avg4`` of captures 1-4 (rounded to 8 bits, as FMD
publishes them). Each image is denoised by two whole commands:

- the reference: ``--recipe v2 --microscope <type>[-avgN]``, the FM2S authors' preset for
  the group's microscope (the name's first word) at that level; ``--reference fast`` runs
  the default recipe with that preset instead (it matches v2 within 0.02 dB at avg1,
  benchmarks/RESULTS.md, in a tenth of v2's time on a CPU);
- ``auto``: the default command, no ``--recipe``, no ``--microscope`` (``--microscope
  measured`` runs that side with the measured synthesis alone, without the comparison).

It prints a table (PSNR in dB against the ground truth, data range 255; wall time of the
auto command) and, per level, the means and the checks of the auto noise calibration.

    python benchmarks/levels.py                         # v2 reference (about 5 min per
                                                        # image on 2 CPU cores; a GPU helps)
    python benchmarks/levels.py --reference fast --levels 2,4
    python benchmarks/levels.py --reference none --microscope measured
    python benchmarks/levels.py --device cuda --jobs 4  # a GPU, four images at a time
                                                        # (then the seconds overlap)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA, groups_in, microscope_of, psnr
from PIL import Image


def level_image(data: Path, group: str, level: int) -> np.ndarray:
    """The mean of captures 1..``level`` of ``group``, rounded to 8 bits."""
    captures = [np.asarray(Image.open(data / "raw" / f"{group}_{k}.png"), np.float64)
                for k in range(1, level + 1)]
    return np.clip(np.round(np.mean(captures, axis=0)), 0, 255).astype(np.uint8)


def preset(group: str, level: int) -> str:
    """The authors' preset of ``group``'s microscope at ``level``."""
    name = microscope_of(group)
    return name if level == 1 else f"{name}-avg{level}"


def denoise(exe: list[str], src: Path, out: Path, options: list[str], seed: int,
            device: str) -> tuple[np.ndarray, float, str]:
    """Run one train-and-apply command; the output, its wall time and its printout."""
    cmd = [*exe, "train-and-apply", str(src), "-o", str(out), "--seed", str(seed),
           "--device", device, "--quiet", *options]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    wall = time.perf_counter() - start
    return np.asarray(Image.open(out)), wall, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--levels", default="1,2,4")
    ap.add_argument("--groups", default="", help="comma-separated subset of groups")
    ap.add_argument("--reference", default="v2", choices=["v2", "fast", "none"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="images denoised at a time")
    ap.add_argument("--microscope", default="",
                    help="the auto side's --microscope (default: none, the default command)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    auto_options = ["--microscope", args.microscope] if args.microscope else []
    if not (args.data / "raw").is_dir():
        sys.exit(f"no FMD-like folder at {args.data}: pass --data")
    # the installed command, else the package on PYTHONPATH (the GPU machine)
    installed = shutil.which("fm2s-tile")
    exe = [installed] if installed else [sys.executable, "-m", "fm2s.cli"]
    groups = args.groups.split(",") if args.groups else groups_in(args.data)
    levels = [int(v) for v in args.levels.split(",")]
    print(f"{'image':20s} {'level':5s} {'noisy':>6s} {'ref':>6s} {'auto':>6s} {'auto-ref':>8s}"
          f" {'auto-noisy':>10s} {'auto s':>6s}  decision", flush=True)
    with tempfile.TemporaryDirectory() as tmp:

        def one(group: str, level: int) -> dict:
            noisy = level_image(args.data, group, level)
            src = Path(tmp) / f"{group}_avg{level}.png"
            Image.fromarray(noisy).save(src)
            truth = np.asarray(Image.open(args.data / "gt" / f"{group}.png"))
            auto, wall, text = denoise(exe, src, src.with_suffix(".auto.png"), auto_options,
                                       args.seed, args.device)
            decision = next((line.strip() for line in text.splitlines()
                             if line.strip().startswith("auto:")), "")
            ref = None
            if args.reference != "none":
                ref_img, _, _ = denoise(exe, src, src.with_suffix(".ref.png"),
                                        ["--recipe", args.reference, "--microscope",
                                         preset(group, level)], args.seed, args.device)
                ref = psnr(ref_img, truth)
            row = dict(image=group, level=level, noisy=psnr(noisy, truth), reference=ref,
                       auto=psnr(auto, truth), auto_seconds=wall, decision=decision)
            ref_txt = f"{ref:6.2f}" if ref is not None else "     -"
            diff = f"{row['auto'] - ref:+8.2f}" if ref is not None else "       -"
            print(f"{group:20s} avg{level:<2d} {row['noisy']:6.2f} {ref_txt} "
                  f"{row['auto']:6.2f} {diff} {row['auto'] - row['noisy']:+10.2f} "
                  f"{wall:6.1f}  {decision[:160]}", flush=True)
            return row

        todo = []
        for level in levels:
            for group in groups:
                if (args.data / "raw" / f"{group}_{level}.png").is_file():
                    todo.append((group, level))
                else:
                    print(f"{group}: no capture {level}, level avg{level} skipped")
        with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
            rows = list(pool.map(lambda job: one(*job), todo))
    for level in levels:
        sel = [r for r in rows if r["level"] == level]
        if not sel:
            continue
        mean = statistics.mean(r["auto"] for r in sel)
        line = (f"avg{level}: mean noisy {statistics.mean(r['noisy'] for r in sel):.2f}, "
                f"auto {mean:.2f} dB")
        refs = [r["reference"] for r in sel if r["reference"] is not None]
        if len(refs) == len(sel):
            line += (f", {args.reference} with the right preset {statistics.mean(refs):.2f} dB;"
                     f" worst auto - reference "
                     f"{min(r['auto'] - r['reference'] for r in sel):+.2f} dB")
        line += (f"; least gain over the input {min(r['auto'] - r['noisy'] for r in sel):+.2f}"
                 f" dB; slowest auto command {max(r['auto_seconds'] for r in sel):.1f} s")
        print(line)
    if args.json:
        args.json.write_text(json.dumps(dict(reference=args.reference, device=args.device,
                                             seed=args.seed, jobs=args.jobs, rows=rows),
                                        indent=2))
        os.sync()


if __name__ == "__main__":
    main()
