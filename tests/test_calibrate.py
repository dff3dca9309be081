"""Noise calibration (``--microscope auto``): measurement, decision, robustness."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from fm2s.calibrate import (
    DIAGONAL,
    QUIET_BLOCKS,
    NoiseEstimate,
    NoiseMeasurement,
    _blur_unit,
    calibrated_config,
    choose,
    estimate_noise,
)
from fm2s.model import decision
from fm2s.noise import add_noise
from fm2s.normalize import fit_normalization
from fm2s.recipes import CalibratedNoise, make_config
from fm2s.selection import ScoreNoise


def _scene(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A smooth positive scene in [0.02, 0.6]: blobs on a ramp."""
    y, x = np.mgrid[:size, :size] / size
    scene = 0.05 + 0.2 * x
    for cy, cx, r in rng.uniform(0, 1, (12, 3)):
        scene += 0.3 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (0.01 + 0.02 * r))
    return np.clip(scene, 0.02, 0.6)


@pytest.mark.parametrize("seed", [0, 1])
def test_poisson_gaussian_model_is_recovered(seed):
    rng = np.random.default_rng(seed)
    scene = _scene(rng)
    gain, read = 0.01, 4e-4  # 100 photons per unit, read noise s.d. 0.02
    noisy = rng.poisson(scene / gain) * gain + rng.normal(0, read ** 0.5, scene.shape)
    est = estimate_noise(noisy)
    assert not est.correlated
    assert est.gain == pytest.approx(gain, rel=0.2)
    true_var = gain * scene.mean() + read
    assert est.variance(scene.mean()) == pytest.approx(true_var, rel=0.15)


def test_correlated_noise_is_seen_and_measured():
    rng = np.random.default_rng(3)
    scene = _scene(rng)
    white = rng.normal(0, 1, scene.shape)
    smooth = ndimage.gaussian_filter(white, 0.8)
    smooth *= 0.03 / smooth.std()  # correlated noise, s.d. 0.03
    est = estimate_noise(scene + smooth)
    assert est.correlated
    assert est.variance(scene.mean()) == pytest.approx(0.03 ** 2, rel=0.35)
    plain = estimate_noise(scene + 0.03 * white)
    assert not plain.correlated and plain.fine_ratio > 0.8


def test_decision_and_figures_do_not_change_with_gain_and_offset():
    """The same image as 16-bit counts (gain 16, offset 100) gets the same measurement."""
    rng = np.random.default_rng(4)
    img8 = np.clip(rng.poisson(_scene(rng) * 200), 0, 255).astype(np.uint8)
    img16 = img8.astype(np.uint16) * 16 + 100
    a = estimate_noise(fit_normalization(img8, "minmax").forward(img8))
    b = estimate_noise(fit_normalization(img16, "minmax").forward(img16))
    assert a.correlated == b.correlated
    assert b.gain == pytest.approx(a.gain, rel=1e-3)
    assert b.fine_ratio == pytest.approx(a.fine_ratio, rel=1e-3)


def test_constant_and_tiny_images_give_a_choice():
    est = estimate_noise(np.full((32, 32), 0.3))
    noise = choose(est)
    assert isinstance(noise, CalibratedNoise) and noise.offset > 0
    assert estimate_noise(np.zeros((16, 16))).gain == 0


def test_stack_is_measured_over_its_planes():
    rng = np.random.default_rng(5)
    scene = _scene(rng, 128)
    planes = np.stack([rng.poisson(scene * 50) / 50 for _ in range(3)])
    est = estimate_noise(planes)
    assert est.gain == pytest.approx(0.02, rel=0.25)


def test_calibrated_config_per_kind():
    config = make_config("fast", "auto", seed=3)
    assert not config.calibrated
    white = estimate_noise(np.random.default_rng(0).poisson(np.full((64, 64), 20)) / 40)
    chosen = calibrated_config(config, white)
    assert chosen.calibrated and chosen.seed == 3 and chosen.noise.median == 3
    assert chosen.noise.amplification == 2
    paper = make_config("paper", "auto")
    assert calibrated_config(paper, white) == paper  # the published recipe stays as it is


@pytest.mark.parametrize("shape", [(512, 512), (128, 300)])
def test_low_white_noise_gets_the_finer_schedule(shape):
    """Relative noise 0.27 (FMD two-photon averaged 4 times): half-side crops, about three
    times the steps; recorded in the choice."""
    config = make_config("fast", "auto")
    low = NoiseEstimate(gain=0.0094, offset=-0.000143, fine_ratio=0.96, mean=0.107)
    assert low.relative_noise < 0.4
    chosen = calibrated_config(config, low, shape)
    assert chosen.noise.low_noise_schedule and chosen.crop == config.crop // 2
    assert chosen.samples == 2 * config.samples
    assert chosen.steps_per_sample == 13 and config.steps_per_sample == 9
    assert 2.8 < chosen.total_steps / config.total_steps < 3  # 2085 against 725
    assert "low noise: 64-pixel crops, 2085 steps" in decision(chosen, low)


@pytest.mark.parametrize("estimate, shape", [
    (NoiseEstimate(0.0808, -0.00144, 0.89, 0.072), (512, 512)),  # noisy: relative 0.92
    (NoiseEstimate(0.0022, 0.000528, 0.20, 0.19), (512, 512)),  # correlated (wide-field)
    (NoiseEstimate(0.0094, -0.000143, 0.96, 0.107), (100, 512)),  # planes below a crop
])
def test_other_data_keep_the_default_schedule(estimate, shape):
    config = make_config("fast", "auto")
    chosen = calibrated_config(config, estimate, shape)
    assert not chosen.noise.low_noise_schedule
    assert (chosen.crop, chosen.samples, chosen.steps_per_sample) == (
        config.crop, config.samples, config.steps_per_sample)
    v2 = make_config("v2", "auto")  # whole-image recipes keep their schedule
    assert calibrated_config(v2, estimate, shape).total_steps == v2.total_steps


def test_synthetic_noise_follows_the_measured_variance():
    noise = CalibratedNoise(amplification=1, median=3, gain=0.01, offset=1e-4,
                            factor=(3.0, 3.0))
    clean = torch.full((1, 1, 256, 256), 0.3)
    gen = torch.Generator().manual_seed(0)
    sample = add_noise(clean, None, noise, gen)
    assert float(sample.var()) == pytest.approx(3 * (0.01 * 0.3 + 1e-4), rel=0.1)
    assert float(sample.mean()) == pytest.approx(0.3, abs=0.01)
    assert 0 <= float(sample.min()) and float(sample.max()) <= 1
    again = add_noise(clean, None, noise, torch.Generator().manual_seed(0))
    assert torch.equal(sample, again)


def test_dark_level_gets_no_noise():
    """A negative offset is a dark level: pixels below it stay as they are."""
    noise = CalibratedNoise(amplification=1, median=3, gain=0.02, offset=-0.001,
                            factor=(2.0, 2.0))
    clean = torch.full((1, 1, 64, 64), 0.04)  # below x0 = 0.05
    sample = add_noise(clean, None, noise, torch.Generator().manual_seed(1))
    assert torch.equal(sample, clean)


@pytest.mark.parametrize("offset", [0.0, -0.0002])
def test_a_ceiling_holds_the_synthetic_noise_of_bright_pixels(offset):
    """Up to the ceiling the variance is the factor's; above it, it stays at its value
    there until the measured variance (factor 1) is larger; the mean is kept."""
    gain, ceiling, r = 0.01, 0.1, 3.0
    x0 = max(-offset / gain, 0.0)
    noise = CalibratedNoise(amplification=1, median=3, gain=gain, offset=offset,
                            factor=(r, r), ceiling=ceiling)
    levels = (0.08, 0.2, 0.6)  # below the ceiling, between it and x0 + r (c - x0), above
    clean = torch.tensor(levels).repeat_interleave(20000).reshape(1, 1, -1, 200)
    sample = add_noise(clean, None, noise, torch.Generator().manual_seed(3))
    plain = add_noise(clean, None, CalibratedNoise(amplification=1, median=3, gain=gain,
                                                   offset=offset, factor=(r, r)),
                      torch.Generator().manual_seed(3))
    for level in levels:
        inside = clean == level
        signal = level - x0
        expected = gain * max(r * min(signal, ceiling - x0), signal)
        assert float(sample[inside].var()) == pytest.approx(expected, rel=0.1), level
        assert float(sample[inside].mean()) == pytest.approx(level, abs=0.01)
        if level > ceiling:  # less than without a ceiling
            assert float(sample[inside].var()) < 0.8 * float(plain[inside].var())
    with pytest.raises(ValueError):
        CalibratedNoise(amplification=1, median=3, gain=gain, offset=0.0, factor=(r, r),
                        ceiling=0.0)


def test_low_noise_gets_a_ceiling_and_noisy_data_none():
    from fm2s.calibrate import CEILING_BELOW, ceiling, variance_factor

    # relative noise sqrt(gain / 0.1): 0.27, 0.55, 0.71
    low, mid, noisy = (NoiseEstimate(gain, 0.0, 0.9, 0.1) for gain in (0.0074, 0.03, 0.05))
    assert low.relative_noise < mid.relative_noise <= CEILING_BELOW < noisy.relative_noise
    config = make_config("fast", "auto")
    # at r times the mean intensity, r the variance factor: higher for noisier data
    assert variance_factor(low) < variance_factor(mid) and ceiling(low) < ceiling(mid)
    for estimate, text in ((low, "up to intensity 0.2, falling to x1 at 0.4"),
                           (mid, "up to intensity 0.4, falling to x1 at 1.6")):
        chosen = calibrated_config(config, estimate)
        assert chosen.noise.ceiling == pytest.approx(variance_factor(estimate) * 0.1)
        assert text in decision(chosen, estimate)
    assert ceiling(noisy) is None and calibrated_config(config, noisy).noise.ceiling is None
    assert ceiling(NoiseEstimate(0.0074, 0.0, 0.2, 0.1)) is None  # correlated: none
    assert "up to intensity" not in decision(calibrated_config(config, noisy), noisy)


def test_noisier_data_get_a_stronger_synthetic_noise():
    from fm2s.calibrate import FACTOR_MAX, FACTOR_MIN, NoiseEstimate, variance_factor

    factors = [variance_factor(NoiseEstimate(gain, 0.0, 0.9, 0.1))
               for gain in (1e-4, 0.01, 0.02, 0.05, 1.0)]
    assert factors == sorted(factors)
    assert factors[0] == FACTOR_MIN and factors[-1] == FACTOR_MAX
    est = NoiseEstimate(0.02, 0.0, 0.9, 0.1)
    assert choose(est).factor == (variance_factor(est),) * 2


def test_low_noise_keeps_some_detail_in_the_target():
    """The median target keeps up to DETAIL_MAX of the image's detail at low relative
    noise, none from DETAIL_NONE up; recorded with the choice and printed."""
    from fm2s.calibrate import DETAIL_MAX, detail_kept

    # relative noise sqrt(gain / 0.1): 0.03, 0.27, 0.32, 0.45, 0.71
    estimates = [NoiseEstimate(gain, 0.0, 0.9, 0.1) for gain in (1e-4, 0.0074, 0.01, 0.02, 0.05)]
    kept = [detail_kept(est) for est in estimates]
    assert kept == sorted(kept, reverse=True)
    assert kept[0] == DETAIL_MAX[False] and 0 < kept[2] < kept[1] and kept[3] == kept[4] == 0
    # correlated noise (wide-field, lag-1/lag-2 ratio 0.2) keeps half as much
    assert detail_kept(NoiseEstimate(1e-4, 0.0, 0.2, 0.1)) == DETAIL_MAX[True] == kept[0] / 2
    config = make_config("fast", "auto")
    low = calibrated_config(config, estimates[1])
    assert low.noise.detail == pytest.approx(kept[1])
    assert f"keeping {kept[1]:.0%} of the image's detail" in decision(low, estimates[1])
    noisy = calibrated_config(config, estimates[4])
    assert noisy.noise.detail == 0 and "detail" not in decision(noisy, estimates[4])
    with pytest.raises(ValueError):
        CalibratedNoise(amplification=2, median=3, gain=0.01, offset=0.0, factor=(2.0, 2.0),
                        detail=1.0)


def test_the_detail_kept_changes_what_the_network_learns():
    from dataclasses import replace

    from fm2s.training import train_network

    rng = np.random.default_rng(2)
    image = np.clip(_scene(rng, 64) + rng.normal(0, 0.02, (64, 64)), 0, 1).astype(np.float32)
    config = calibrated_config(make_config("fast", "auto", samples=2, steps_per_sample=2),
                               estimate_noise(image))
    nets = [train_network(image, replace(config, noise=replace(config.noise, detail=d)))
            for d in (0.0, 0.0, 0.5)]
    same = [torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters())]
    other = [torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[2].parameters())]
    assert all(same) and not any(other)


def test_very_low_photon_counts_get_a_sensible_choice():
    """Data unlike FMD (3 photons at the peak): auto gains where the confocal preset,
    tuned for brighter data, barely does (benchmarks/unlike_fmd.py)."""
    import fm2s
    from fm2s.sample import psnr

    rng = np.random.default_rng(7)
    truth = _scene(rng, 128) * 5
    noisy = rng.poisson(truth).astype(np.uint16)
    span = float(truth.max() - truth.min())
    scores = {}
    for microscope in ("auto", "confocal"):
        model = fm2s.train(noisy, microscope=microscope, device="cpu", seed=0, samples=15)
        scores[microscope] = psnr(fm2s.apply(model, noisy, dtype="float32"), truth, span)
    assert scores["auto"] > psnr(noisy, truth, span) + 5, scores
    assert scores["auto"] > scores["confocal"] + 1, scores


def test_a_nearly_noise_free_image_gains_from_the_detail_kept(monkeypatch):
    """10000 photons at the peak (benchmarks/unlike_fmd.py): the plain median target teaches
    the network to flatten the spots' fine shape; keeping detail (step 5) does better
    (+1.4 to +5.1 dB over seeds 0-2 when measured) and improves on the input."""
    import fm2s
    import fm2s.calibrate as calibrate
    from fm2s.model import train_model
    from fm2s.normalize import fit_normalization
    from fm2s.sample import psnr

    rng = np.random.default_rng(0)
    y, x = np.mgrid[:128, :128]
    scene = np.zeros((128, 128))
    for cy, cx, r in rng.uniform(0, 128, (30, 3)):
        scene += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (1 + r / 40) ** 2))
    truth = scene / scene.max() * 10000 + 500
    noisy = rng.poisson(truth).astype(np.uint16)
    span = float(truth.max() - truth.min())
    scores = {}
    for kept in (True, False):
        if not kept:  # the same run with FM2S's plain median target
            monkeypatch.setattr(calibrate, "detail_kept", lambda estimate: 0.0)
        # the measured synthesis alone (auto compares it with the presets: test_selection)
        config = make_config("fast", "auto", seed=0, samples=40)
        normalized = fit_normalization(noisy, config.normalization).forward(noisy)
        config = calibrate.calibrated_config(config, estimate_noise(normalized), noisy.shape)
        model = train_model(noisy, config, "cpu")
        assert (model.config.noise.detail > 0) == kept
        scores[kept] = psnr(fm2s.apply(model, noisy, dtype="float32"), truth, span)
    assert scores[True] > scores[False] + 0.5, scores
    assert scores[True] > psnr(noisy, truth, span) + 1, scores


def _spots(rng: np.random.Generator, size: int = 256, count: int = 60) -> np.ndarray:
    """Sparse blobs (s.d. 1.5 pixels) on a black background, peak 0.9."""
    image = np.zeros((size, size))
    ys, xs = rng.integers(0, size, (2, count))
    image[ys, xs] = rng.uniform(0.3, 1.0, count)
    image = ndimage.gaussian_filter(image, 1.5)
    return 0.9 * image / image.max()


def _modelled_over_true(estimate: NoiseEstimate, clean: np.ndarray, photons: float) -> float:
    """The model's mean variance over the clean image's pixels, over the true one (the
    noise's own per-pixel variance: correlated estimates are converted as the score does)."""
    noise = ScoreNoise.of(estimate)
    modelled = np.maximum(noise.gain * clean + noise.offset, 0)
    return float(np.mean(modelled) / np.mean(clean / photons))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_sparse_image_with_white_noise_is_not_called_correlated(seed):
    # most bins of the local mean are black background, without residuals at either lag:
    # they say nothing of the correlation (a ratio of 0 / x once called this correlated)
    rng = np.random.default_rng(seed)
    clean = _spots(rng, 192, 30)
    noisy = rng.poisson(clean * 15) / 15
    assert not estimate_noise(noisy).correlated


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_diagonal_measurement_reads_white_noise_under_fine_texture(seed):
    # fine texture at low noise: the Laplacian takes the texture for noise, and for
    # correlated noise; the diagonal residual leaves most of it out
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.standard_normal((192, 192)), 2.0)
    clean = 0.05 + 0.8 * (texture - texture.min()) / np.ptp(texture)
    noisy = rng.poisson(clean * 4000) / 4000
    rules, scored = estimate_noise(noisy), estimate_noise(noisy, DIAGONAL)
    assert not scored.correlated
    assert _modelled_over_true(scored, clean, 4000) == pytest.approx(1.0, abs=0.15)
    assert rules.correlated or _modelled_over_true(rules, clean, 4000) > 2


def test_the_diagonal_measurement_sees_the_noise_of_sparse_spots():
    # the signal (and the photon noise) of sparse spots lies above the 98th percentile
    # that the Laplacian's bins stop at; the diagonal measurement adds bins up to the 99.9th.
    # Over ten images (the fit is at the mercy of where the spots fall): the median
    rules, scored = [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        clean = _spots(rng)
        noisy = rng.poisson(clean * 5) / 5
        rules.append(_modelled_over_true(estimate_noise(noisy), clean, 5))
        scored.append(_modelled_over_true(estimate_noise(noisy, DIAGONAL), clean, 5))
    assert 0.5 < np.median(scored) < 2, scored
    assert np.median(rules) < 0.3, rules


@pytest.mark.parametrize("width", [0.0, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
def test_quiet_squares_read_white_and_correlated_noise_without_bias(width, seed):
    # the quietest squares of pure noise hold less than its variance: the bias divided
    # out (quiet_share) must give the variance back, and the blur width, for both kinds
    rng = np.random.default_rng(seed)
    clean = _scene(rng)
    noisy = clean + np.sqrt(clean / 200) * _blur_unit(rng.standard_normal(clean.shape), width)
    estimate = estimate_noise(noisy, QUIET_BLOCKS)
    assert _modelled_over_true(estimate, clean, 200) == pytest.approx(1.0, abs=0.12)
    assert ScoreNoise.of(estimate).width == pytest.approx(width, abs=0.1)


def test_quiet_squares_see_past_texture_in_part_of_the_image():
    # fine texture over half the image, stronger than the noise: the per-pixel bins read
    # it as noise (3.5-4.3 times the variance); the quietest squares of each brightness
    # bin mostly lie outside it (1.2-2.3 times: bins that the texture fills stay biased)
    quiet, per_pixel = [], []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        texture = ndimage.gaussian_filter(rng.standard_normal((256, 256)), 1.0)
        texture[:, :128] = 0
        clean = np.clip(_scene(rng) + 0.2 * texture / texture.std(), 0.02, None)
        noisy = rng.poisson(clean * 500) / 500
        quiet.append(_modelled_over_true(estimate_noise(noisy, QUIET_BLOCKS), clean, 500))
        per_pixel.append(_modelled_over_true(estimate_noise(noisy), clean, 500))
    assert 0.8 < np.median(quiet) < 2.0, quiet
    assert all(q < p / 1.5 for q, p in zip(quiet, per_pixel)), (quiet, per_pixel)


def test_planes_smaller_than_a_square_are_measured_per_pixel():
    rng = np.random.default_rng(0)
    noisy = 0.3 + 0.05 * rng.standard_normal((20, 20))
    assert estimate_noise(noisy, NoiseMeasurement(block=32)) == estimate_noise(noisy)
    small = estimate_noise(noisy[:16, :16], QUIET_BLOCKS)  # two squares a side: one bin
    assert 0.3 < np.sqrt(small.variance(0.3)) / 0.05 < 3


def test_a_measurement_is_validated():
    with pytest.raises(ValueError, match="residual"):
        NoiseMeasurement("wavelet")
    with pytest.raises(ValueError, match="tail_bins"):
        NoiseMeasurement(tail_bins=-1)
    with pytest.raises(ValueError, match="block"):
        NoiseMeasurement(block=2)
    with pytest.raises(ValueError, match="quiet"):
        NoiseMeasurement(block=8, quiet=0)
