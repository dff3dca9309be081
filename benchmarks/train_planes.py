"""How many planes should a channel's model train on? PSNR and training time against K.

A synthetic timelapse z-stack (``fm2s.sample.synthetic_stack``: structures that drift and
bleach, t x z planes) is denoised by a model trained on K planes spread evenly over it (as
``train-and-apply --train-planes K`` does); every plane is then denoised and compared with
the ground truth. Training time should not depend on K (a fixed number of steps); quality
does, when the planes differ.

    python benchmarks/train_planes.py
    python benchmarks/train_planes.py --ks 1,4,8 --seeds 0,1 --shape 8,1,6,256,256
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fm2s
from fm2s.jobs import training_planes
from fm2s.sample import psnr, synthetic_stack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="1,2,4,8,16,48")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--shape", default="8,1,6,256,256", help="t,c,z,y,x of the stack")
    args = ap.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    print(f"stack {shape}; columns: K, seed, train s, mean / min plane PSNR (dB), "
          "mean noisy PSNR")
    table: dict[int, list[tuple[float, float, float]]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        noisy, truth = synthetic_stack(shape, np.random.default_rng(100 + seed))
        planes, truths = noisy[:, 0].reshape(-1, *shape[-2:]), truth[:, 0].reshape(-1, *shape[-2:])
        rng = float(truths.max() - truths.min())
        base = np.mean([psnr(p, t, rng) for p, t in zip(planes, truths)])
        for k in (int(k) for k in args.ks.split(",")):
            index = training_planes(len(planes), k)
            start = time.perf_counter()
            model = fm2s.train(planes[index], device="cpu", seed=seed)
            seconds = time.perf_counter() - start
            out = fm2s.apply(model, planes.reshape(-1, *shape[-2:])[0])  # warm-up
            run = model.runtime("cpu")
            scores = [psnr(np.clip(np.rint(run(p)), 0, 65535), t, rng)
                      for p, t in zip(planes, truths)]
            del out
            table.setdefault(k, []).append((seconds, float(np.mean(scores)), float(min(scores))))
            print(f"K={k:3d} seed {seed}: {seconds:5.1f} s  {np.mean(scores):.2f} / "
                  f"{min(scores):.2f}  (noisy {base:.2f})", flush=True)
    print("mean over seeds: K, train s, mean PSNR, min PSNR")
    for k, rows in table.items():
        s, m, lo = (float(np.mean(c)) for c in zip(*rows))
        print(f"  {k:3d}  {s:5.1f}  {m:.2f}  {lo:.2f}")


if __name__ == "__main__":
    main()
