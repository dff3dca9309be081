"""Helpers shared by the benchmarks: the FMD folder layout, reference figures, PSNR/SSIM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from fm2s.sample import psnr as _psnr

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fmd"

#: PSNR (dB) of the public FM2S code on the ``_1`` captures (shared/data/fmd/README.md)
REFERENCE = {
    "Confocal_BPAE_G": {"noisy": 28.12, "paper": 31.24, "v2": 31.24},
    "Confocal_FISH": {"noisy": 22.88, "paper": 30.26, "v2": 29.89},
    "TwoPhoton_BPAE_B": {"noisy": 24.70, "paper": 32.60, "v2": 32.65},
    "TwoPhoton_MICE": {"noisy": 24.32, "paper": 31.54, "v2": 31.84},
    "WideField_BPAE_G": {"noisy": 23.90, "paper": 30.61, "v2": 32.04},
    "WideField_BPAE_R": {"noisy": 26.24, "paper": 30.43, "v2": 34.00},
}


def microscope_of(group: str) -> str:
    """The preset named by the group's first word: ``TwoPhoton_MICE`` -> ``twophoton``."""
    return group.split("_")[0].lower()


def groups_in(data: Path) -> list[str]:
    """Groups that have a ground truth in ``data/gt``."""
    return sorted(p.stem for p in (data / "gt").glob("*.png"))


def psnr(image: np.ndarray, truth: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB with the FMD convention: data range 255 unless given."""
    return _psnr(image, truth, data_range)


def ssim(image: np.ndarray, truth: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM (Wang et al. 2004): Gaussian window sigma 1.5, K1 0.01, K2 0.03."""
    x, y = np.asarray(image, np.float64), np.asarray(truth, np.float64)

    def blur(a):
        return ndimage.gaussian_filter(a, 1.5, truncate=3.5)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())
