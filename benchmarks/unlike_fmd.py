"""Data unlike the FMD microscopes: what ``auto`` chooses, against the confocal preset.

Synthetic 256 x 256 scenes of blurred spots with known truth, at three kinds of noise: a
nearly noise-free image (10000 photons at the peak), very low photon counts (3 at the peak)
and an sCMOS-like camera (30 photons, read noise 2, offset 100). Prints the decision and the
PSNR (data range of the truth) of the noisy image, ``auto`` and the ``confocal`` preset
(``--compare every``: ``measured`` and every named preset, and ``auto`` less the best named
preset).

Then two stacks, trained as ``train-and-apply`` trains a channel (8 planes spread over the
stack, the default schedule) and applied to every plane: a calcium-imaging-like timelapse
(40 frames of cells whose brightness jumps and decays, 3 photons per pixel at rest, a
photomultiplier's 20 counts per photon) and a light-sheet-like z-stack (30 planes, sCMOS
camera, dark stripes of the illumination, light lost with depth). Prints the mean PSNR over
the planes, each plane's gain over its input (least, most) and that of the brightest plane.

    python benchmarks/unlike_fmd.py [--samples 80] [--stacks-only] [--compare every]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

import fm2s
from fm2s.jobs import training_planes
from fm2s.recipes import DEFAULT_TRAIN_PLANES
from fm2s.sample import psnr
from fm2s.selection import SELECTION


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


def calcium(rng: np.random.Generator, frames: int = 40, size: int = 256,
            cells: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """A calcium-imaging-like timelapse: (noisy uint16 frames, truth)."""
    y, x = np.mgrid[:size, :size]
    shapes = np.zeros((cells, size, size))
    for i, (cy, cx, r) in enumerate(rng.uniform((0, 0, 4), (size, size, 8), (cells, 3))):
        shapes[i] = ((y - cy) ** 2 + (x - cx) ** 2 < r ** 2) * rng.uniform(0.5, 1.5)
    shapes = ndimage.gaussian_filter(shapes, (0, 1.2, 1.2))
    activity = np.ones((frames, cells))  # transients: a jump of 1-4 x, decaying over 3 frames
    for i in range(cells):
        for start in np.flatnonzero(rng.random(frames) < 0.08):
            activity[start:, i] += rng.uniform(1, 4) * np.exp(-np.arange(frames - start) / 3)
    neuropil = ndimage.gaussian_filter(rng.random((size, size)), 8)
    photons = 3.0 * (np.einsum("tc,cyx->tyx", activity, shapes) + 0.3 * neuropil / neuropil.mean())
    counts = 20.0  # per photon, as a photomultiplier's
    noisy = rng.poisson(photons) * counts + rng.normal(0, 5, photons.shape) + 50
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16), photons * counts + 50


def light_sheet(rng: np.random.Generator, planes: int = 30,
                size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A light-sheet-like z-stack: (noisy uint16 planes, truth)."""
    volume = np.zeros((planes + 6, size, size))
    for z, y, x in rng.uniform((0, 0, 0), volume.shape, (400, 3)).astype(int):
        volume[z, y, x] += rng.uniform(0.5, 1)
    volume = ndimage.gaussian_filter(volume, (2.5, 4, 4))[3:-3]
    volume /= volume.max()
    stripes = 1 - 0.5 * (ndimage.gaussian_filter1d(rng.random(size), 1.5) > 0.55)
    depth = np.exp(-np.arange(planes) / 25)[:, None, None]
    photons = (200 * volume * stripes[None, :, None] + 20) * depth
    noisy = rng.poisson(photons) + rng.normal(100, 1.6, photons.shape)
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16), photons + 100


PRESETS = SELECTION.presets  # the named presets auto compares
COMPARE = {"confocal": ("confocal",), "every": ("measured", *PRESETS)}


def auto_and_preset(noisy: np.ndarray, training: np.ndarray, seed: int,
                    compared: tuple[str, ...] = ("confocal",),
                    **train) -> tuple[dict[str, np.ndarray], str]:
    """``noisy`` denoised by models trained on ``training`` with ``auto`` and with each
    of ``compared``, and auto's printed decision."""
    outs, decision = {}, ""
    for microscope in ("auto", *compared):
        model = fm2s.train(training, microscope=microscope, device="cpu", seed=seed, **train)
        outs[microscope] = fm2s.apply(model, noisy, dtype="float32")
        if microscope == "auto":
            decision = model.noise_record()["decision"]
    return outs, decision


def versus_best(means: dict[str, float]) -> str:
    """``auto`` less the best named preset, where more than one was trained."""
    named = {m: v for m, v in means.items() if m in PRESETS}
    if len(named) < 2:
        return ""
    best = max(named, key=named.get)
    return f" | auto - best preset ({best}): {means['auto'] - named[best]:+.2f} dB"


def stack_figures(noisy: np.ndarray, truth: np.ndarray, seed: int,
                  compared: tuple[str, ...] = ("confocal",)) -> None:
    """Print auto against each of ``compared`` on a stack, trained as a channel's model."""
    span = float(truth.max() - truth.min())
    index = training_planes(len(noisy), DEFAULT_TRAIN_PLANES)
    before = np.array([psnr(n, t, span) for n, t in zip(noisy, truth)])
    brightest = int(np.argmax(truth.mean(axis=(1, 2))))
    outs, decision = auto_and_preset(noisy, noisy[index], seed, compared)
    figures, means = [], {}
    for microscope, out in outs.items():
        gain = np.array([psnr(o, t, span) for o, t in zip(out, truth)]) - before
        means[microscope] = float((before + gain).mean())
        figures.append(f"{microscope} {means[microscope]:.2f} (per plane {gain.min():+.2f} "
                       f"to {gain.max():+.2f}, brightest {gain[brightest]:+.2f})")
    print(f"  noisy {before.mean():.2f} dB | {' | '.join(figures)}{versus_best(means)}\n"
          f"  {decision}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=80, help="noisy samples of the training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stacks-only", action="store_true", help="only the two stacks")
    ap.add_argument("--compare", choices=sorted(COMPARE), default="confocal",
                    help="what auto is compared with: the confocal preset, or measured and "
                    "every named preset")
    args = ap.parse_args()
    compared = COMPARE[args.compare]
    rng = np.random.default_rng(args.seed)
    for name, (noisy, truth) in ({} if args.stacks_only else scenes(rng)).items():
        span = float(truth.max() - truth.min())
        outs, decision = auto_and_preset(noisy, noisy, args.seed, compared,
                                         samples=args.samples)
        means = {microscope: psnr(out, truth, span) for microscope, out in outs.items()}
        figures = [f"{microscope} {v:.2f}" for microscope, v in means.items()]
        print(f"{name}: noisy {psnr(noisy, truth, span):.2f} dB | {' | '.join(figures)} dB"
              f"{versus_best(means)}\n  {decision}", flush=True)
    rng = np.random.default_rng(args.seed)
    for name, make in (("calcium-imaging-like timelapse", calcium),
                       ("light-sheet-like z-stack", light_sheet)):
        noisy, truth = make(rng)
        print(f"{name} {noisy.shape}, PSNR over the planes:", flush=True)
        stack_figures(noisy, truth, args.seed, compared)


if __name__ == "__main__":
    main()
