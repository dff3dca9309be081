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


def test_default_settings_denoise_small_spots(fmd):
    """Confocal_FISH_1 (sparse spots, few photons): the preset's median target blurred them
    (30.36 dB); the calibrated noise keeps them (31.8 dB here; Noise2Void 31.57)."""
    raw, gt = _load(fmd, "Confocal_FISH")
    out = fm2s.denoise(raw, device="cpu", seed=11)
    assert out.dtype == np.uint8
    assert psnr(out, gt, 255) > 30.8, f"{psnr(out, gt, 255):.2f} dB"


def test_16_bit_versions_denoise_as_well_as_the_8_bit_image(fmd):
    raw, gt = _load(fmd, "Confocal_BPAE_G")
    versions = {
        "8-bit": (raw, gt, 255.0),
        "x257": ((raw.astype(np.uint32) * 257).astype(np.uint16), gt * 257, 255.0 * 257),
        "x16+100": ((raw.astype(np.uint32) * 16 + 100).astype(np.uint16), gt * 16 + 100,
                    255.0 * 16),
    }
    scores, decisions = {}, {}
    for name, (img, truth, data_range) in versions.items():
        # a quarter of the schedule (CI time): the versions are compared with each other
        model = fm2s.train(img, device="cpu", seed=5, samples=20)  # auto noise calibration
        out = fm2s.apply(model, img)
        assert out.dtype == img.dtype
        scores[name] = psnr(out, truth, data_range)
        decisions[name] = model.noise_record()["decision"]
    assert scores["8-bit"] > psnr(raw, gt, 255) + 2
    for name in ("x257", "x16+100"):
        assert abs(scores[name] - scores["8-bit"]) <= 0.1, scores
        assert decisions[name] == decisions["8-bit"], decisions
