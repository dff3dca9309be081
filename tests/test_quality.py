"""Behaviour on real FMD micrographs (../shared/data/fmd); skipped when they are absent."""

import numpy as np
import pytest
from PIL import Image

import fm2s
from fm2s.sample import psnr

pytestmark = pytest.mark.slow


def _load(fmd, group):
    raw = np.asarray(Image.open(fmd / "raw" / f"{group}_1.png"))
    gt = np.asarray(Image.open(fmd / "gt" / f"{group}.png")).astype(np.float64)
    return raw, gt


def test_fast_recipe_denoises_a_real_micrograph(fmd):
    raw, gt = _load(fmd, "TwoPhoton_MICE")
    out = fm2s.denoise(raw, microscope="twophoton", device="cpu", seed=11)
    assert out.dtype == np.uint8
    gain = psnr(out, gt, 255) - psnr(raw, gt, 255)
    assert gain > 5.0, f"only {gain:.2f} dB gained"


def test_16_bit_versions_denoise_as_well_as_the_8_bit_image(fmd):
    raw, gt = _load(fmd, "Confocal_BPAE_G")
    versions = {
        "8-bit": (raw, gt, 255.0),
        "x257": ((raw.astype(np.uint32) * 257).astype(np.uint16), gt * 257, 255.0 * 257),
        "x16+100": ((raw.astype(np.uint32) * 16 + 100).astype(np.uint16), gt * 16 + 100,
                    255.0 * 16),
    }
    scores = {}
    for name, (img, truth, data_range) in versions.items():
        # a quarter of the schedule (CI time): the versions are compared with each other
        out = fm2s.denoise(img, microscope="confocal", device="cpu", seed=5, samples=20)
        assert out.dtype == img.dtype
        scores[name] = psnr(out, truth, data_range)
    assert scores["8-bit"] > psnr(raw, gt, 255) + 2
    for name in ("x257", "x16+100"):
        assert abs(scores[name] - scores["8-bit"]) <= 0.1, scores
