"""What the test-time views are worth: PSNR of 1, 2 and 4 views of the same trained model.

Trains the default recipe once per FMD image (captures and seeds as given) and scores the
model's inference with 1 view, 2 views (the image and its 180-degree rotation: the
default), 2 views with one flip (y or x) and 4 views (the image and its flips: the default
before), against the ground truth (uint8 output, data range 255). Prints every run, the
mean difference to 4 views per microscope and overall, and the cost of each variant in
multiply-adds per pixel.

    python benchmarks/views.py
    python benchmarks/views.py --captures 1 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from common import DEFAULT_DATA, groups_in, microscope_of, psnr
from PIL import Image

from fm2s.export import multiply_adds
from fm2s.model import train_model
from fm2s.network import FM2SNet
from fm2s.recipes import config_for

#: variant -> flips (dims of N x C x H x W) averaged
VARIANTS = {"1 view": [()], "2 views (180 deg)": [(), (2, 3)], "2 views (y flip)": [(), (2,)],
            "2 views (x flip)": [(), (3,)], "4 views": [(), (2,), (3,), (2, 3)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--captures", default="1,2")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not (args.data / "raw").is_dir():
        sys.exit(f"no FMD-like folder at {args.data}: pass --data")
    rows = []
    for seed in map(int, args.seeds.split(",")):
        for cap in map(int, args.captures.split(",")):
            for group in groups_in(args.data):
                raw = np.asarray(Image.open(args.data / "raw" / f"{group}_{cap}.png"))
                gt = np.asarray(Image.open(args.data / "gt" / f"{group}.png"))
                model = train_model(raw, config_for("fast", microscope_of(group), seed, 1),
                                    "cpu")
                net, norm = model.net.eval(), model.normalization
                x = torch.from_numpy(norm.forward(raw).astype(np.float32))[None, None]
                x = x.repeat(1, net.conv1.in_channels, 1, 1)
                outs = {}
                with torch.no_grad():
                    for dims in VARIANTS["4 views"]:
                        y = net(x.flip(dims) if dims else x).clamp(0, 1).mean(1, keepdim=True)
                        outs[dims] = (y.flip(dims) if dims else y)[0, 0].numpy()
                row = {"image": f"{group}_{cap}", "microscope": microscope_of(group),
                       "seed": seed}
                for name, views in VARIANTS.items():
                    den = norm.inverse(sum(outs[d] for d in views) / len(views))
                    row[name] = psnr(np.clip(np.rint(den), 0, 255).astype(np.uint8), gt)
                rows.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                  for k, v in row.items()}), flush=True)
    for amp, which in ((2, "confocal, two-photon"), (1, "wide-field")):
        net = FM2SNet(amp, *config_for("fast", "confocal", 0, 1).kernels)
        print(f"multiply-adds per pixel ({which}, amplification {amp}): 1 view "
              f"{multiply_adds(net, 1)}, 2 views {multiply_adds(net, 2)}, 4 views "
              f"{multiply_adds(net, 4)}; 4 views before folding the repeat "
              f"{multiply_adds(net, 4, folded=False)}")
    print("difference to 4 views, dB (mean / worst run):")
    summary = {}
    for name in VARIANTS:
        line = {}
        for scope in sorted({r["microscope"] for r in rows}) + ["all"]:
            sel = [r for r in rows if scope in ("all", r["microscope"])]
            diffs = [r[name] - r["4 views"] for r in sel]
            line[scope] = (statistics.mean(diffs), min(diffs))
        summary[name] = line
        print(f"  {name:<20}" + "  ".join(f"{k} {m:+.3f} / {w:+.3f}" for k, (m, w) in
                                          line.items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
