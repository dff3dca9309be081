"""``auto`` against every named preset on synthetic images with known ground truth.

Clean sources (the six ground truths of shared/data/fmd when present, the demo's truth,
sparse spots on a dark background, a dense texture), 256 x 256, scaled to grey levels
0-250, are made noisy at every combination of:

- photons per grey level {0.25, 1, 4, 16} (Poisson shot noise),
- read noise {0, 4} grey levels (Gaussian),
- white or spatially correlated noise (the noise blurred by a Gaussian of sigma 0.8,
  then rescaled to its variance),
- 8-bit (grey levels rounded) or 16-bit (16 counts per grey level over an offset of 100).

Each case trains, with the default recipe and seed: the four named presets (``confocal``,
``twophoton``, ``widefield``, ``generic``) and ``--microscope auto`` (the default),
which compares its candidates
(fm2s.selection: the synthesis derived from the measured noise and the four presets,
each trained briefly and scored on the image) and trains the winner's full schedule,
which is the same run, bit for bit, as that candidate trained alone
(tests/test_selection.py): so each candidate trains in full once, and auto's figure is
its winner's. ``measured`` is the synthesis derived from the measured noise alone (``--microscope
measured``). PSNR in dB, data range 255 (grey levels).

Prints one row per case and the summary: the mean of each column, the oracle (best
preset per case), the cases where auto is more than 0.3 dB below the best preset, and
auto's mean against the best single preset's mean.

    python benchmarks/synthetic.py                  # all 288 cases (hours on 2 CPU cores)
    python benchmarks/synthetic.py --quick          # 32 cases: 4 sources, photons 0.25 / 4,
                                                    # 8-bit only
    python benchmarks/synthetic.py --sources spots,texture --photons 1 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA, groups_in, psnr
from PIL import Image
from scipy import ndimage

from fm2s.api import apply
from fm2s.calibrate import estimate_noise
from fm2s.model import TrainedModel
from fm2s.normalize import fit_normalization, stack_stats
from fm2s.recipes import config_for
from fm2s.runtime import OnnxDenoiser
from fm2s.sample import synthetic_stack
from fm2s.selection import SELECTION, ScoreNoise, candidates, score, scored_planes
from fm2s.training import train_network

SIZE = 256
PHOTONS = (0.25, 1.0, 4.0, 16.0)
READ = (0.0, 4.0)
CORRELATED = (False, True)
DEPTHS = (8, 16)
GAIN16, OFFSET16 = 16.0, 100.0
BLUR = 0.8
PRESETS = SELECTION.presets
#: the opt-in masked score (white noise; recorruption for correlated noise), reported beside
MASKED = replace(SELECTION, score="masked")


def _scaled(source: np.ndarray) -> np.ndarray:
    source = np.asarray(source, np.float64)
    source = source - source.min()
    return 250.0 * source / source.max()


def sources(data: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """name -> clean 256 x 256 image in grey levels (0-250)."""
    out = {}
    if (data / "gt").is_dir():
        for group in groups_in(data):
            gt = np.asarray(Image.open(data / "gt" / f"{group}.png"), np.float64)
            y0, x0 = (gt.shape[0] - SIZE) // 2, (gt.shape[1] - SIZE) // 2
            out[group] = _scaled(gt[y0:y0 + SIZE, x0:x0 + SIZE])
    _, truth = synthetic_stack((1, 1, 1, SIZE, SIZE), np.random.default_rng(0))
    out["demo"] = _scaled(truth[0, 0, 0])
    spots = np.zeros((SIZE, SIZE))
    ys, xs = rng.integers(0, SIZE, (2, 40))
    spots[ys, xs] = rng.uniform(0.3, 1.0, 40)
    out["spots"] = _scaled(ndimage.gaussian_filter(spots, 1.5) + 0.002)
    texture = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 2.0)
    texture = np.abs(texture) + 0.5 * ndimage.gaussian_filter(rng.random((SIZE, SIZE)), 16)
    out["texture"] = _scaled(texture)
    return out


def noisy_case(clean: np.ndarray, photons: float, read: float, correlated: bool, depth: int,
               rng: np.random.Generator) -> np.ndarray:
    """The noisy image of one case (uint8 grey levels, or uint16 counts)."""
    grey = rng.poisson(clean * photons) / photons + rng.normal(0, read, clean.shape) \
        if read else rng.poisson(clean * photons) / photons
    if correlated:
        noise = grey - clean
        delta = np.zeros((9, 9))
        delta[4, 4] = 1
        norm = np.sqrt(np.sum(ndimage.gaussian_filter(delta, BLUR) ** 2))
        grey = clean + ndimage.gaussian_filter(noise, BLUR) / norm
    if depth == 8:
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return np.clip(np.rint(grey * GAIN16 + OFFSET16), 0, 65535).astype(np.uint16)


def grey(image: np.ndarray, depth: int) -> np.ndarray:
    image = np.asarray(image, np.float64)
    return image if depth == 8 else (image - OFFSET16) / GAIN16


def true_noise(normalization, photons: float, read: float, correlated: bool,
               depth: int) -> ScoreNoise:
    """The case's own noise in the normalized units of the run (what the score would
    draw with a perfect noise measurement)."""
    zero, one = (0.0, 1.0) if depth == 8 else (OFFSET16, OFFSET16 + GAIN16)
    x0, x1 = normalization.forward(np.array([zero, one]))
    s = float(x1 - x0)  # normalized units per grey level
    gain = s / photons  # variance = s^2 (I_grey / photons + read^2), I_grey = (I - x0) / s
    return ScoreNoise(gain, s * s * read * read - gain * float(x0), BLUR if correlated else 0.0)


def run_case(noisy: np.ndarray, clean: np.ndarray, depth: int, seed: int,
             truth: tuple[float, float, bool]) -> dict:
    """Every candidate's PSNR (full schedule), auto's choice, its PSNR and its seconds.

    auto's steps as :func:`fm2s.model.select_and_train` takes them (each candidate's
    comparison run, scored by :func:`fm2s.selection.score`), then every candidate's full
    run (auto's is its winner's). Each comparison run and full run is also scored with
    the case's true noise model (``truth``: photons, read noise, correlated), by the opt-in
    masked score (:data:`MASKED`, which needs no noise model on white noise) and with the
    per-pixel Laplacian measurement of the rules (:data:`fm2s.calibrate.LAPLACIAN`, the
    score's until 2026-12-05), to tell the score's errors from the noise measurement's:
    ``chosen_true`` is what the selection would choose with a perfect measurement,
    ``variance_ratio`` the measured model's mean variance over the true one (over the
    clean image's pixels).
    """
    config = config_for("fast", "auto", seed, 1)
    normalization = fit_normalization(noisy, config.normalization)
    normalized = normalization.forward(noisy)
    stats = (float(stack_stats(noisy)[2]), float(stack_stats(noisy)[3]))
    start = time.perf_counter()
    estimate = estimate_noise(normalized)
    planes = scored_planes(normalized[None], SELECTION.max_planes)
    exact = true_noise(normalization, *truth, depth)
    measured = ScoreNoise.of(estimate_noise(normalized, SELECTION.noise))
    laplacian = ScoreNoise.of(estimate)  # the rules' measurement (LAPLACIAN)
    level = normalization.forward(clean if depth == 8 else clean * GAIN16 + OFFSET16)
    compared = candidates(config, estimate, normalized.shape)
    scores, true_scores, laplacian_scores, masked = {}, {}, {}, {}
    for name, full in compared:
        net = train_network(normalized, SELECTION.screening(full), "cpu")
        scores[name] = score(net, planes, measured, full)
        masked[name] = score(net, planes, measured, full, MASKED)
        true_scores[name] = score(net, planes, exact, full)
        laplacian_scores[name] = score(net, planes, laplacian, full)
    chosen = min(scores, key=scores.get)
    row = {"noisy": psnr(grey(noisy, depth), clean), "chosen": chosen, "scores": scores,
           "true_scores": true_scores, "chosen_true": min(true_scores, key=true_scores.get),
           "laplacian_scores": laplacian_scores,
           "chosen_laplacian": min(laplacian_scores, key=laplacian_scores.get),
           "masked_scores": masked, "chosen_masked": min(masked, key=masked.get),
           "screen_s": time.perf_counter() - start,
           "variance_ratio": float(np.mean(np.maximum(measured.gain * level + measured.offset, 0))
                                   / np.mean(exact.gain * level + exact.offset)),
           "measured_width": measured.width, "true_width": exact.width,
           "relative_noise": estimate.relative_noise, "ratio": estimate.fine_ratio,
           "gain": estimate.gain, "offset": estimate.offset}

    def quality(net, cfg) -> float:
        model = TrainedModel(net, normalization, cfg, stats, 0.0, "cpu")
        out = apply(OnnxDenoiser(model.to_bytes(), provider="cpu"), noisy, "cpu")
        return psnr(grey(out, depth), clean)

    row["full_scores"], row["full_true_scores"] = {}, {}
    for name, full in compared:
        net = train_network(normalized, full, "cpu")
        row[name] = quality(net, full)
        # the same scores on the full runs: would scoring full runs choose better?
        row["full_scores"][name] = score(net, planes, measured, full)
        row["full_true_scores"][name] = score(net, planes, exact, full)
    row["auto"] = row[chosen]
    row["auto_true"] = row[row["chosen_true"]]
    row["auto_laplacian"] = row[row["chosen_laplacian"]]
    row["auto_masked"] = row[row["chosen_masked"]]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sources", default="", help="comma-separated source names")
    parser.add_argument("--photons", default="", help="comma-separated photons per grey level")
    parser.add_argument("--depths", default="", help="8, 16 or 8,16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    clean = sources(args.data, np.random.default_rng(1))
    names = list(clean)
    photons, depths = PHOTONS, DEPTHS
    if args.quick:
        names = [n for n in ("demo", "spots", "texture", "Confocal_FISH") if n in clean]
        photons, depths = (0.25, 4.0), (8,)
    if args.sources:
        names = args.sources.split(",")
    if args.photons:
        photons = tuple(float(p) for p in args.photons.split(","))
    if args.depths:
        depths = tuple(int(d) for d in args.depths.split(","))
    columns = ["measured", *PRESETS, "auto"]
    print(f"{'case':42s} {'noisy':>6s} " + " ".join(f"{c[:9]:>9s}" for c in columns)
          + "  chosen     oracle", flush=True)
    rows = []
    for name, p, r, corr, depth in itertools.product(names, photons, READ, CORRELATED, depths):
        case_rng = np.random.default_rng([args.seed, names.index(name), PHOTONS.index(p),
                                          READ.index(r), corr, depth])
        noisy = noisy_case(clean[name], p, r, corr, depth, case_rng)
        row = run_case(noisy, clean[name], depth, args.seed, (p, r, corr))
        label = f"{name} p{p:g} r{r:g} {'corr' if corr else 'white'} {depth}-bit"
        row.update(case=label, oracle=max(row[c] for c in PRESETS))
        rows.append(row)
        print(f"{label:42s} {row['noisy']:6.2f} " + " ".join(f"{row[c]:9.2f}" for c in columns)
              + f"  {row['chosen']:10s} {row['oracle']:6.2f}  true model: {row['chosen_true']:10s}"
              f" {row['auto_true']:6.2f}  variance x{row['variance_ratio']:.2f}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    means = {c: statistics.mean(r[c] for r in rows) for c in ["noisy", *columns, "oracle"]}
    best_single = max(PRESETS, key=lambda c: means[c])
    short = [r for r in rows if r["auto"] < r["oracle"] - 0.3]
    print(f"\n{len(rows)} cases; means: " + ", ".join(f"{c} {v:.2f}" for c, v in means.items()))
    print(f"auto - best single preset ({best_single}): {means['auto'] - means[best_single]:+.2f} "
          f"dB (goal >= +0.3); auto - oracle: {means['auto'] - means['oracle']:+.2f} dB")
    worst = min(rows, key=lambda r: r["auto"] - r["oracle"])
    print(f"cases with auto > 0.3 dB below the best preset: {len(short)} of {len(rows)}; worst "
          f"{worst['case']} {worst['auto'] - worst['oracle']:+.2f} dB")
    print(f"scored by the masked score (opt-in; white noise only): mean "
          f"{statistics.mean(r['auto_masked'] for r in rows):.2f} dB, "
          f"{sum(r['auto_masked'] < r['oracle'] - 0.3 for r in rows)} cases > 0.3 dB below")
    print(f"scored with the rules' per-pixel Laplacian noise: mean "
          f"{statistics.mean(r['auto_laplacian'] for r in rows):.2f} dB, "
          f"{sum(r['auto_laplacian'] < r['oracle'] - 0.3 for r in rows)} cases > 0.3 dB below")
    print(f"with the true noise model: mean {statistics.mean(r['auto_true'] for r in rows):.2f}"
          f" dB, {sum(r['auto_true'] < r['oracle'] - 0.3 for r in rows)} cases > 0.3 dB below"
          " the best preset")
    print(f"auto picked the oracle's preset (or within 0.1 dB) in "
          f"{sum(r['auto'] >= r['oracle'] - 0.1 for r in rows)} of {len(rows)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
