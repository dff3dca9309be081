"""Training-speed benchmark: seconds per 512 x 512 image for each recipe, and where they go.

Trains on a synthetic 512 x 512 image. The default recipe runs in full; for ``paper`` and
``v2`` (minutes on a CPU) only ``--fraction`` of the steps is run and the total is
extrapolated (marked "extrapolated").

    python benchmarks/train_speed.py --device cpu
    python benchmarks/train_speed.py --device cuda --recipes fast --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from fm2s import train
from fm2s.api import apply
from fm2s.recipes import make_config
from fm2s.sample import synthetic_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--recipes", default="fast,paper,v2")
    ap.add_argument("--microscope", default="confocal")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    noisy, _ = synthetic_image((args.size, args.size), np.random.default_rng(0))
    noisy = np.clip(noisy.astype(np.int64) - 100, 0, 255).astype(np.uint8)
    train(noisy, "fast", device=args.device, samples=2, steps_per_sample=1)  # warm-up
    for recipe in args.recipes.split(","):
        full = make_config(recipe, args.microscope)
        if recipe == "fast":
            over, scale, note = {}, 1.0, ""
        else:
            samples = max(1, round(full.samples * args.fraction))
            over = dict(samples=samples)
            scale = full.total_steps / (full.warmup_steps + samples * full.steps_per_sample)
            note = f" (extrapolated from {1 / scale:.0%} of the steps)"
        train_s, apply_s, export_s = [], [], []
        for rep in range(args.repeat):
            model = train(noisy, recipe, args.microscope, seed=rep, device=args.device, **over)
            train_s.append(model.seconds * scale)
            t = time.perf_counter()
            runtime = model.runtime()
            export_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            apply(runtime, noisy)
            apply_s.append(time.perf_counter() - t)
        steps = full.total_steps
        med = statistics.median(train_s)
        print(f"{recipe:6s} {args.size}x{args.size} on {model.device}: train {med:7.1f} s "
              f"({steps} steps, {med / steps * 1000:.1f} ms/step){note}; export+session "
              f"{statistics.median(export_s):.2f} s; apply {statistics.median(apply_s):.2f} s",
              flush=True)


if __name__ == "__main__":
    main()
