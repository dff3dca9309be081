"""Many models at once on this machine: N models trained batched (:mod:`fm2s.grouped`)
against the same N trained one at a time, alternating, in one warm process.

Prints JSON: seconds per round of each way, models per minute, and the ratio
(batched over one at a time, > 1: batched is faster). Used to decide whether the CPU
batches (:func:`fm2s.grouped.batching_pays`); see benchmarks/RESULTS.md.

    python benchmarks/grouped_speed.py --models 3 --samples 20 --rounds 2 --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from fm2s.grouped import train_grouped
from fm2s.normalize import fit_normalization
from fm2s.recipes import make_config
from fm2s.sample import synthetic_image
from fm2s.training import Sampler, train_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20, help="noisy samples per model "
                        "(the fast recipe's 80 by default in a run; fewer here to keep it short)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    images = [synthetic_image((args.size, args.size), rng)[0] for _ in range(args.models)]
    configs = [make_config("fast", "confocal", seed=s, samples=args.samples)
               for s in range(args.models)]
    planes = [fit_normalization(i, c.normalization).forward(i) for i, c in zip(images, configs)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def alone() -> None:
        for p, c in zip(planes, configs):
            train_network(p, c, device)
        sync()

    def batched() -> None:
        train_grouped([Sampler(p, c, device) for p, c in zip(planes, configs)])
        sync()

    alone()  # warm-up: allocators, kernels
    batched()
    times: dict[str, list[float]] = {"alone": [], "batched": []}
    for _ in range(args.rounds):
        for name, fn in (("alone", alone), ("batched", batched)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    print(json.dumps({
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "device": str(device), "models": args.models, "samples": args.samples,
        "steps": configs[0].total_steps, "size": args.size, "seconds": times,
        "models_per_minute": {k: round(60 * args.models / v, 2) for k, v in best.items()},
        "ratio_batched_over_alone": round(best["alone"] / best["batched"], 3)}, indent=1))


if __name__ == "__main__":
    main()
