"""``auto``'s comparison of noise syntheses on the image itself (fm2s.selection)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

import fm2s
from fm2s.calibrate import (
    DIAGONAL,
    LAPLACIAN,
    QUIET_BLOCKS,
    NoiseEstimate,
    estimate_noise,
)
from fm2s.export import Denoiser
from fm2s.network import FM2SNet
from fm2s.normalize import Normalization
from fm2s.recipes import as_preset, config_for, make_config
from fm2s.sample import synthetic_image
from fm2s.selection import (
    ScoreNoise,
    SelectionConfig,
    _blur_unit,
    candidates,
    correlation_width,
    masked_predictions,
    masked_score,
    recorruption_score,
    score,
    select,
    thinned,
)
from fm2s.training import train_network

TINY = dict(samples=4, warmup_steps=1)


def _blurred_noise(width: float, seed: int, shape=(256, 256)) -> np.ndarray:
    return _blur_unit(np.random.default_rng(seed).standard_normal(shape), width)


@pytest.mark.parametrize("measurement", [LAPLACIAN, DIAGONAL], ids=["laplacian", "diagonal"])
@pytest.mark.parametrize("width", [0.0, 0.8, 1.2])
def test_correlation_width_and_variance_are_recovered_from_the_measurement(width, measurement):
    """Gaussian-blurred white noise of known width and variance over a flat image: the
    measured lag ratio gives the width back, and the corrected variance the true one,
    with either residual."""
    sd = 0.05
    image = 0.3 + sd * _blurred_noise(width, seed=3)
    assert abs(image.std() / sd - 1) < 0.05  # _blur_unit keeps the variance
    estimate = estimate_noise(image, measurement)
    got, scale = correlation_width(estimate)
    if width == 0.0:
        assert not estimate.correlated and got == 0.0 and scale == 1.0
    else:
        assert estimate.correlated and abs(got - width) < 0.15, got
    variance = estimate.variance(0.3) * scale
    assert abs(variance / sd**2 - 1) < 0.1, variance / sd**2


def _smoothing_net(strength: float) -> FM2SNet:
    """A hand-set network: amplification 1, output = (1 - s) x + s * (3 x 3 mean of x)."""
    net = FM2SNet(1, 3, 1, 1)
    with torch.no_grad():
        for conv in (net.conv1, net.conv2, net.conv3):
            conv.weight.zero_()
            conv.bias.zero_()
        net.conv1.weight[0, 0] = strength / 9
        net.conv1.weight[0, 0, 1, 1] += 1 - strength
        net.conv2.weight[0, 0, 0, 0] = 1.0
        net.conv3.weight[0, 0, 0, 0] = 1.0
    return net.eval()


def test_recorruption_score_ranks_denoisers_as_their_true_error():
    """Smoothers of several strengths on a noisy image with known truth: the score orders
    them as their error against the truth does (it is that error plus one constant)."""
    rng = np.random.default_rng(0)
    truth = 0.2 + 0.5 * ndimage.gaussian_filter(rng.random((192, 192)), 6)
    truth = (truth - truth.min()) / np.ptp(truth) * 0.6 + 0.2
    noisy = (truth + 0.08 * rng.standard_normal(truth.shape)).astype(np.float32)
    estimate = estimate_noise(noisy)
    selection = SelectionConfig(draws=4)
    strengths = [0.0, 0.3, 0.6, 1.0]
    true, scores = [], []
    for s in strengths:
        net = _smoothing_net(s)
        with torch.no_grad():
            out = net(torch.from_numpy(noisy)[None, None])[0, 0].clamp(0, 1).numpy()
        true.append(float(np.mean((out - truth) ** 2)))
        scores.append(recorruption_score(net, noisy[None], estimate, 1, selection,
                                         np.random.default_rng(1)))
    assert np.argsort(scores).tolist() == np.argsort(true).tolist(), (scores, true)


def test_recorruption_score_fails_to_rank_with_a_wrong_noise_model():
    """The score needs the noise's own variance: told half of it, it prefers keeping
    noise (the identity over a 3 x 3 mean), the reverse of the truth."""
    rng = np.random.default_rng(2)
    truth = np.full((128, 128), 0.4)
    noisy = (truth + 0.1 * rng.standard_normal(truth.shape)).astype(np.float32)
    estimate = estimate_noise(noisy)
    halved = type(estimate)(estimate.gain / 4, estimate.offset / 4, estimate.fine_ratio,
                            estimate.mean)
    sel = SelectionConfig(draws=2)

    def ranks(est):
        return [recorruption_score(_smoothing_net(s), noisy[None], est, 1, sel,
                                   np.random.default_rng(1)) for s in (0.0, 1.0)]

    right, wrong = ranks(estimate), ranks(halved)
    assert right[1] < right[0] and wrong[0] < wrong[1]


def _box_net(size: int) -> FM2SNet:
    """A hand-set network: amplification 1, output = the size x size mean of its input."""
    net = FM2SNet(1, size, 1, 1)
    with torch.no_grad():
        for conv in (net.conv1, net.conv2, net.conv3):
            conv.weight.zero_()
            conv.bias.zero_()
        net.conv1.weight[0, 0] = 1.0 / size**2
        net.conv2.weight[0, 0, 0, 0] = 1.0
        net.conv3.weight[0, 0, 0, 0] = 1.0
    return net.eval()


def _true_error(net: FM2SNet, noisy: np.ndarray, truth: np.ndarray) -> float:
    with torch.no_grad():
        out = net(torch.from_numpy(noisy.astype(np.float32))[None, None])[0, 0].numpy()
    return float(np.mean((out - truth) ** 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_score_ranks_smoothers_as_their_true_error(seed):
    """Box means of several sizes on a noisy image with known truth (structure at a scale
    where a middle size is best): the masked score, which is given no noise model,
    orders them as their error against the truth does."""
    rng = np.random.default_rng(seed)
    truth = ndimage.gaussian_filter(rng.random((192, 192)), 3)
    truth = (truth - truth.min()) / np.ptp(truth) * 0.6 + 0.2
    noisy = truth + 0.1 * rng.standard_normal(truth.shape)
    sizes = [3, 5, 9, 15]
    true = [_true_error(_box_net(k), noisy, truth) for k in sizes]
    assert 0 < int(np.argmin(true)) < len(sizes) - 1  # the best is not at either end
    scores = [masked_score(_box_net(k), noisy[None], 1, SelectionConfig(),
                           np.random.default_rng(seed)) for k in sizes]
    assert np.argsort(scores).tolist() == np.argsort(true).tolist(), (scores, true)


def test_masked_score_needs_no_noise_variance_where_recorruption_does():
    """Flat image, white noise: told a quarter of the variance, recorruption prefers the
    3 x 3 mean to the 7 x 7 one, the reverse of the truth; the masked score, which draws
    no noise, ranks them right."""
    rng = np.random.default_rng(4)
    truth = np.full((128, 128), 0.4)
    noisy = (truth + 0.1 * rng.standard_normal(truth.shape)).astype(np.float32)
    true = [_true_error(_box_net(k), noisy, truth) for k in (3, 7)]
    quarter = ScoreNoise(0.0, 0.01 / 4)
    wrong = [recorruption_score(_box_net(k), noisy[None], quarter, 1, SelectionConfig(),
                                np.random.default_rng(1)) for k in (3, 7)]
    masked = [masked_score(_box_net(k), noisy[None], 1, SelectionConfig(),
                           np.random.default_rng(1)) for k in (3, 7)]
    assert true[1] < true[0] and wrong[0] < wrong[1] and masked[1] < masked[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_masked_score_is_unbiased_on_white_noise_only(seed):
    """The masked score is the masked network's error against the truth plus the noise
    variance when the fill holds none of the masked pixel's noise: so on white noise. With
    spatially correlated noise (white noise blurred by a Gaussian of width 0.8) the 8
    neighbours hold much of it, and on an identity network score - error falls far below
    the variance: why ``masked`` scores correlated noise by recorruption."""
    rng = np.random.default_rng(seed)
    truth = 0.3 + 0.2 * ndimage.gaussian_filter(rng.random((192, 192)), 4)
    identity = Denoiser(_box_net(1), Normalization(0.0, 1.0), views=1).eval()

    def bias(noise: np.ndarray) -> float:
        noisy, out = truth + noise, []
        for offset in [(0, 0), (1, 2), (3, 1)]:
            predicted, centre = masked_predictions(identity, noisy, offset, 4)
            score = np.mean((predicted - noisy[centre]) ** 2)
            out.append(score - np.mean((predicted - truth[centre]) ** 2))
        return float(np.mean(out)) / float(np.var(noise)) - 1  # 0: unbiased

    white = 0.05 * np.random.default_rng(seed + 10).standard_normal(truth.shape)
    assert abs(bias(white)) < 0.05
    assert bias(0.05 * _blurred_noise(0.8, seed, truth.shape)) < -0.8


def test_masked_selection_scores_correlated_noise_by_recorruption():
    """``score="masked"``: white noise is scored by the masked score, correlated noise by
    recorruption (the same value as the recorruption score)."""
    rng = np.random.default_rng(5)
    noisy = (0.4 + 0.05 * rng.standard_normal((96, 96)))[None]
    config = config_for("fast", "auto", 0, 1)
    masked = SelectionConfig(score="masked")
    net = _box_net(3)
    white, correlated = ScoreNoise(0.0, 0.0025), ScoreNoise(0.0, 0.0025, 0.8)
    assert score(net, noisy, white, config, masked) == masked_score(
        net, noisy, config.views, masked, np.random.default_rng([0, 7]))
    assert score(net, noisy, correlated, config, masked) == score(net, noisy, correlated,
                                                                  config)
    assert score(net, noisy, white, config, masked) != score(net, noisy, white, config)


def test_candidates_are_the_measured_synthesis_and_the_named_presets():
    image, _ = synthetic_image((96, 96), np.random.default_rng(1))
    config = config_for("fast", "auto", 3, planes=4)  # a stack: twice the samples
    estimate = estimate_noise(image / 4000.0)
    got = dict(candidates(config, estimate, (96, 96)))
    assert list(got) == ["measured", "confocal", "twophoton", "widefield", "generic"]
    assert got["measured"].microscope == "auto" and got["measured"].calibrated
    for name in ("confocal", "twophoton", "widefield", "generic"):
        assert got[name].noise == make_config("fast", name).noise
        assert got[name].seed == 3
    # the preset's own schedule change (widefield: 120 of 80 samples) keeps its proportion
    assert got["widefield"].samples == config.samples * 120 // 80
    assert got["confocal"].samples == config.samples
    with pytest.raises(fm2s.ParameterError):
        as_preset(config, "auto")


def test_auto_trains_the_winner_as_it_would_train_alone():
    """auto's network is the winner's full schedule trained alone, bit for bit
    (benchmarks/synthetic.py relies on it); the decision names what was compared."""
    image, _ = synthetic_image((80, 96), np.random.default_rng(4))
    model = fm2s.train(image, device="cpu", seed=2, **TINY)  # the default: auto
    winner = model.selection.winner
    assert model.config == winner.config
    alone = train_network(model.normalization.forward(image), winner.config, "cpu")
    for a, b in zip(model.net.parameters(), alone.parameters()):
        assert torch.equal(a, b)
    record = model.noise_record()
    assert record["chosen_name"] == winner.name
    assert set(record["compared"]) == {c.name for c in model.selection.candidates}
    assert f"chose {winner.name}" in record["decision"]
    assert min(record["compared"].values()) == record["compared"][winner.name]


def test_selection_is_reproducible_and_follows_the_seed():
    image, _ = synthetic_image((80, 80), np.random.default_rng(6))
    config = make_config("fast", "auto", seed=1, **TINY)
    normalized = (image / float(image.max())).astype(np.float32)
    estimate = estimate_noise(normalized)

    def train(p, c):
        return train_network(p, c, "cpu")

    a = select(normalized, config, estimate, train)
    b = select(normalized, config, estimate, train)
    assert [c.score for c in a.candidates] == [c.score for c in b.candidates]
    assert a.chosen == b.chosen
    # the score draws the noise of its own measurement (quiet squares by default), and
    # says so; the rules' per-pixel measurement can be asked for
    assert a.noise == ScoreNoise.of(estimate_noise(normalized, QUIET_BLOCKS))
    assert "drawn as white noise of variance" in a.describe()
    per_pixel = SelectionConfig(noise=LAPLACIAN)
    c = select(normalized, config, estimate, train, per_pixel)
    assert c.noise == ScoreNoise.of(estimate) != a.noise


def test_a_named_preset_and_measured_train_without_comparison():
    image, _ = synthetic_image((64, 64), np.random.default_rng(2))
    model = fm2s.train(image, microscope="confocal", device="cpu", **TINY)
    assert model.selection is None and model.noise_record() is None
    measured = fm2s.train(image, microscope="measured", device="cpu", **TINY)
    assert measured.selection is None and measured.config.microscope == "measured"
    decision = measured.noise_record()["decision"]
    assert decision.startswith("measured: ") and "compared" not in decision
    # the comparison's own measured candidate is that same synthesis and schedule
    auto = fm2s.train(image, device="cpu", **TINY)
    assert auto.selection is not None and auto.noise_record()["decision"].startswith("auto: ")
    assert replace(auto.selection.candidates[0].config, microscope="measured") \
        == measured.config


def test_screening_trains_every_step_on_smaller_crops():
    config = make_config("fast", "confocal")
    short = SelectionConfig().screening(config)
    assert short.crop == round(config.crop * 0.375) and short.total_steps == config.total_steps
    assert SelectionConfig(screen_crop=0.5).screening(config).crop == config.crop // 2
    whole = make_config("v2", "confocal")  # whole-image recipes: a quarter of the samples
    assert SelectionConfig().screening(whole).samples == -(-whole.samples // 4)


def test_selection_config_is_validated():
    with pytest.raises(ValueError):
        SelectionConfig(screen_crop=0)
    with pytest.raises(ValueError):
        SelectionConfig(alpha=-1)


@pytest.mark.parametrize("photons,read", [(0.3, 0.0), (3.0, 0.0), (3.0, 1.5)])
def test_thinning_gives_independent_input_and_target_at_any_count(photons, read):
    """Poisson counts (plus Gaussian read noise) over a flat image: the thinned input and
    target carry 1 + alpha^2 and 1 + 1 / alpha^2 times the image's noise variance and are
    uncorrelated; without read noise they are independent (uncorrelated in their squares
    too: with read noise the split counts hold some of it, so only the moments hold), where
    recorrupting the same counts with Gaussian noise of the right variance leaves their
    squares correlated at low counts."""
    rng = np.random.default_rng(4)
    gain, shape, alpha = 0.01, (512, 512), 0.5
    clean = np.full(shape, photons * gain)
    noisy = rng.poisson(photons, shape) * gain + read * gain * rng.standard_normal(shape)
    variance = gain * clean[0, 0] + (read * gain) ** 2
    estimate = NoiseEstimate(gain, (read * gain) ** 2, 1.0, clean[0, 0])
    noisier, target = thinned(noisy, estimate, alpha, rng)
    a, b = noisier - clean, target - clean
    assert abs(a.var() / variance - (1 + alpha**2)) < 0.05 * (1 + alpha**2)
    assert abs(b.var() / variance - (1 + 1 / alpha**2)) < 0.05 * (1 + 1 / alpha**2)

    def dependence(x, y):  # correlation of x^2 with y: 0 for independent noises
        return abs(np.corrcoef(x**2, y)[0, 1])

    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01
    if not read:
        assert dependence(a.ravel(), b.ravel()) < 0.01
    z = np.sqrt(variance) * rng.standard_normal(shape)
    gaussian = dependence((noisy + alpha * z - clean).ravel(), (noisy - z / alpha - clean).ravel())
    if photons < 1 and not read:
        assert gaussian > 0.05, gaussian  # why thinning: Gaussian draws fail at low counts


def test_thinning_score_ranks_denoisers_on_few_photons():
    """Sparse bright spots on a dark background, 0.5 photons per unit at most: the
    thinning score orders smoothers as their error against the truth does."""
    rng = np.random.default_rng(2)
    spots = np.zeros((192, 192))
    ys, xs = rng.integers(0, 192, (2, 60))
    spots[ys, xs] = 1.0
    truth = ndimage.gaussian_filter(spots, 2.0)
    truth = 0.6 * truth / truth.max() + 0.01
    gain = 0.05  # 20 photons at 1.0: 0.2 in the background
    noisy = (rng.poisson(truth / gain) * gain).astype(np.float32)
    estimate = NoiseEstimate(gain, 0.0, 1.0, float(noisy.mean()))
    selection = SelectionConfig(draws=4, split="thinning")
    true, scores = [], []
    for s in [0.0, 0.3, 0.6, 1.0]:
        net = _smoothing_net(s)
        with torch.no_grad():
            out = net(torch.from_numpy(noisy)[None, None])[0, 0].numpy()
        true.append(float(np.mean((out - truth) ** 2)))
        scores.append(recorruption_score(net, noisy[None], estimate, 1, selection,
                                         np.random.default_rng(1)))
    assert np.argsort(scores).tolist() == np.argsort(true).tolist(), (scores, true)
