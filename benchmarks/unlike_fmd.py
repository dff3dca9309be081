"""Data unlike the FMD microscopes: what ``auto`` chooses, against the confocal preset.

Synthetic 256 x 256 scenes of blurred spots with known truth, at three kinds of noise: a
nearly noise-free image (10000 photons at the peak), very low photon counts (3 at the peak)
and an sCMOS-like camera (30 photons, read noise 2, offset 100). Prints the decision and the
PSNR (data range of the truth) of the noisy image, ``auto`` and the ``confocal`` preset.

    python benchmarks/unlike_fmd.py [--samples 80]
"""

from __future__ import annotations

import argparse

import numpy as np

import fm2s
from fm2s.sample import psnr


def scenes(rng: np.random.Generator, size: int = 256) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (noisy uint16 image, truth)."""
    y, x = np.mgrid[:size, :size]
    scene = np.zeros((size, size))
    for cy, cx, r in rng.uniform(0, size, (60, 3)):
        scene += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (1 + r / 40) ** 2))
    scene /= scene.max()
    bright, dim, cam = scene * 10000 + 500, scene * 3 + 0.2, scene * 30 + 2
    return {
        "nearly noise-free (10000 photons)": (rng.poisson(bright).astype(np.uint16), bright),
        "very low photon counts (3 photons)": (rng.poisson(dim).astype(np.uint16), dim),
        "sCMOS (30 photons, read noise 2, offset 100)": (
            (rng.poisson(cam) + rng.normal(100, 2, scene.shape)).clip(0).astype(np.uint16),
            cam + 100),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=80, help="noisy samples of the training")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for name, (noisy, truth) in scenes(np.random.default_rng(args.seed)).items():
        span = float(truth.max() - truth.min())
        figures = []
        for microscope in ("auto", "confocal"):
            model = fm2s.train(noisy, microscope=microscope, device="cpu", seed=args.seed,
                               samples=args.samples)
            out = fm2s.apply(model, noisy, dtype="float32")
            figures.append(f"{microscope} {psnr(out, truth, span):.2f}")
            if microscope == "auto":
                decision = model.noise_record()["decision"]
        print(f"{name}: noisy {psnr(noisy, truth, span):.2f} dB | {' | '.join(figures)} dB\n"
              f"  {decision}", flush=True)


if __name__ == "__main__":
    main()
