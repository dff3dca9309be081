"""Quality benchmark: PSNR/SSIM and wall time of the whole command on FMD-like data.

Runs ``fm2s-tile train-and-apply`` on ``raw/<group>_<k>.png`` of a folder laid out like
``shared/data/fmd``, with the preset named by each file's first word, and compares the
output to ``gt/<group>.png`` (data range 255) and to the reference figures.

    python benchmarks/quality.py --recipe fast --device cpu
    python benchmarks/quality.py --recipe paper --groups Confocal_FISH
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA, REFERENCE, groups_in, microscope_of, psnr, ssim
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--recipe", default="fast", choices=["fast", "paper", "v2"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--capture", type=int, default=1, help="which raw capture k to denoise")
    ap.add_argument("--groups", default="", help="comma-separated subset of groups")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if not (args.data / "raw").is_dir():
        sys.exit(f"no FMD-like folder at {args.data}: pass --data")
    groups = args.groups.split(",") if args.groups else groups_in(args.data)
    exe = shutil.which("fm2s-tile") or sys.exit("fm2s-tile is not installed")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for group in groups:
            src = args.data / "raw" / f"{group}_{args.capture}.png"
            out = Path(tmp) / f"{group}.png"
            cmd = [exe, "train-and-apply", str(src), "-o", str(out), "--recipe", args.recipe,
                   "--microscope", microscope_of(group), "--device", args.device,
                   "--seed", str(args.seed), "--quiet"]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            gt = np.asarray(Image.open(args.data / "gt" / f"{group}.png"))
            noisy = np.asarray(Image.open(src))
            den = np.asarray(Image.open(out))
            ref = REFERENCE.get(group, {})
            row = dict(image=f"{group}_{args.capture}", noisy=psnr(noisy, gt), psnr=psnr(den, gt),
                       ssim=ssim(den, gt), wall_s=wall,
                       ref=ref.get(args.recipe if args.recipe != "fast" else "v2"))
            rows.append(row)
            ref_txt = f"{row['ref']:.2f}" if row["ref"] else "  -  "
            print(f"{row['image']:22s} noisy {row['noisy']:6.2f}  {args.recipe} "
                  f"{row['psnr']:6.2f} dB"
                  f"  SSIM {row['ssim']:.4f}  ref {ref_txt}  {wall:6.1f} s", flush=True)
    mean = statistics.mean(r["psnr"] for r in rows)
    refs = [r["ref"] for r in rows if r["ref"]]
    print(f"mean PSNR {mean:.2f} dB (noisy {statistics.mean(r['noisy'] for r in rows):.2f}"
          + (f", reference {statistics.mean(refs):.2f}" if len(refs) == len(rows) else "")
          + f"), mean SSIM {statistics.mean(r['ssim'] for r in rows):.4f}, "
          f"median wall {statistics.median(r['wall_s'] for r in rows):.1f} s per image")
    if refs and len(refs) == len(rows):
        worst = min(r["psnr"] - r["ref"] for r in rows)
        print(f"worst image vs reference: {worst:+.2f} dB")
    if args.json:
        args.json.write_text(json.dumps(dict(recipe=args.recipe, device=args.device,
                                             rows=rows), indent=2))


if __name__ == "__main__":
    main()
