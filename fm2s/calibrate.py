"""Noise calibration from the data alone, for ``--microscope measured`` and ``auto``.

One channel's noise is measured on the (normalized) planes its model trains on:

- its Poisson-Gaussian model, variance = ``gain`` * intensity + ``offset`` (Foi et al.,
  IEEE TIP 2008, "Practical Poissonian-Gaussian noise modeling and fitting for
  single-image raw-data"): pixels are binned by their local mean, the noise variance of
  each bin is taken from a high-pass residual (a Laplacian, unit gain on white noise) over
  the bin's quieter 90 % (edges and texture excluded), and a line is fitted to the bins;
- whether the noise is spatially correlated: the same residual at lag 1 and at lag 2
  (taps two pixels away) has the same variance for white noise, and a much smaller one
  at lag 1 when neighbouring pixels share their noise (the FMD wide-field captures: 0.2,
  against 0.5-0.96 for the confocal and two-photon ones at every noise level).

The comparison's score (:mod:`fm2s.selection`) reads the same model on the quietest
squares of each brightness bin instead (:data:`QUIET_BLOCKS`), which leaves out more of
the image's structure; correlated noise is modelled as white noise blurred by a Gaussian
whose width reproduces the lag ratio (:func:`correlation_width`).

:func:`choose` turns the measurement into the noise synthesis of the run (a
:class:`fm2s.recipes.CalibratedNoise`): the synthetic noise follows the measured model,
its variance 2-4 times the measured one (more for noisier data,
:func:`variance_factor`); correlated noise gets the wide-field treatment of the FM2S
authors (11 x 11 median target, no amplification), its variance measured at lag 2; low
noise keeps part of the image's own detail in the median target (:func:`detail_kept`),
and holds the synthetic noise of bright structures down (:func:`ceiling`).
No file name or metadata is looked at.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy import ndimage, special

from .recipes import CalibratedNoise, TrainConfig

#: below this ratio of lag-1 to lag-2 residual variance, the noise counts as correlated
CORRELATED_BELOW = 0.35
#: the synthetic noise's variance, as a multiple of the measured one: it rises with the
#: relative noise s (noise s.d. / mean intensity), from FACTOR_MIN at s <= S_LOW by
#: FACTOR_SLOPE per unit of s, up to FACTOR_MAX (noisier data need a stronger synthetic
#: noise; measured on the FMD captures, README "Automatic noise calibration")
FACTOR_MIN, FACTOR_MAX, FACTOR_SLOPE, S_LOW = 2.0, 4.0, 20.0, 0.4
#: white noise at most S_LOW relative noise (the variance factor at its floor) trains on
#: crops of half the side, with twice the noisy samples and 1.45 times the steps per
#: sample (``fast``: 64-pixel crops, 9 -> 13 steps per sample): about three times the
#: steps over three quarters of the pixels, in a little less CPU time (a finer fit:
#: +0.16 dB on average over the 7 such FMD images at avg1/2/4, none worse; no gain on
#: correlated noise: README "Automatic noise calibration"). Recipes that train on whole
#: images (``crop`` 0) keep their schedule.
LOW_NOISE_SCHEDULE = {"crop": 0.5, "samples": 2, "steps_per_sample": 1.45}
#: low noise keeps some of the image's own detail in the training target: the median
#: target with DETAIL_MAX (white, correlated noise) of (image - median) put back at a
#: relative noise of at most DETAIL_FULL, none from DETAIL_NONE up, linear between. At
#: low noise the median takes away more of the image's fine structure than of its noise,
#: and a network trained to reproduce the median learns to flatten that structure; the
#: noise put back with it is small there. Correlated noise gets half: what an 11 x 11
#: median takes away holds more of it (README "Automatic noise calibration", step 5)
DETAIL_MAX = {False: 0.3, True: 0.15}
DETAIL_FULL, DETAIL_NONE = 0.27, 0.36
#: white noise up to a relative noise of CEILING_BELOW: the variance factor r applies in
#: full only up to r times the mean intensity (the ceiling: 2 x the mean for low noise,
#: up to 4 x for noisier data, where the factor is higher); above it the synthetic
#: variance stays at its value there until the measured variance grows past it (never
#: less than the measured noise). Bright structures then train on less than the
#: factor's noise, and the network learns to smooth them less (README "Automatic noise
#: calibration", step 6). Noisier images keep the factor everywhere (Confocal_FISH_1
#: lost 1.9 dB with a ceiling at 2 x its mean), and so does correlated (wide-field)
#: noise, on which the ceiling changed nothing (-0.04 to +0.03 dB)
CEILING_BELOW = 0.6
#: median window and amplification (white, correlated)
MEDIAN = {False: 3, True: 11}
AMPLIFICATION = {False: 2, True: 1}
#: the smallest noise variance synthesized (normalized units): an image with no
#: measurable noise is left almost as it is
MIN_VARIANCE = 1e-6
#: most pixels looked at per plane, and bins of local mean
MAX_PIXELS = 1 << 20
BINS = 12
#: fewest pixels a bin is read from
MIN_BIN = 64
#: fraction of each bin's squared residuals kept (its quieter part): for the variance
#: fit, and for the lag-1/lag-2 ratio (which edges and texture would bias more)
KEEP_VARIANCE = 0.9
KEEP_RATIO = 0.5


def _kept_mean(keep: float) -> float:
    """Mean of the lowest ``keep`` fraction of chi-square(1) draws (Gaussian residuals):
    what the kept mean is divided by to give the variance back."""
    c = float(special.ndtri((1 + keep) / 2))  # the normal quantile (scipy.stats: 0.3 s to import)
    return (keep - 2 * c * math.exp(-c * c / 2) / math.sqrt(2 * math.pi)) / keep


def _trimmed(values: np.ndarray, keep: float) -> float:
    n = max(int(values.size * keep), 1)
    return float(np.partition(values, n - 1)[:n].mean()) / _kept_mean(keep)


@dataclass(frozen=True)
class NoiseEstimate:
    """The noise of one channel as measured on its training planes (normalized units).

    Attributes
    ----------
    gain, offset
        Poisson-Gaussian model: variance = gain * intensity + offset.
    fine_ratio
        Residual variance at lag 1 over that at lag 2: about 1 for white noise, well
        below :data:`CORRELATED_BELOW` for spatially correlated noise.
    mean
        Mean intensity of the planes.
    residual
        The residual measured with (:class:`NoiseMeasurement`).
    """

    gain: float
    offset: float
    fine_ratio: float
    mean: float
    residual: str = "laplacian"

    @property
    def relative_noise(self) -> float:
        """Noise s.d. at the mean intensity over the mean intensity (1 / SNR)."""
        return float(np.sqrt(self.variance(self.mean)) / max(self.mean, 1e-6))

    @property
    def correlated(self) -> bool:
        """Whether the noise is spatially correlated."""
        return self.fine_ratio < CORRELATED_BELOW

    def variance(self, intensity: float) -> float:
        """The modelled noise variance at ``intensity`` (at least :data:`MIN_VARIANCE`)."""
        return max(self.gain * intensity + self.offset, MIN_VARIANCE)

    def describe(self) -> str:
        """One line for logs and reports."""
        kind = "spatially correlated" if self.correlated else "white"
        sd = np.sqrt(self.variance(self.mean))
        return (f"{kind} noise (lag-1/lag-2 ratio {self.fine_ratio:.2f}), variance = "
                f"{variance_law(self.gain, self.offset)}, s.d. {sd:.3g} at the mean intensity "
                f"{self.mean:.3g} (normalized; relative noise {self.relative_noise:.2f})")


def variance_law(gain: float, offset: float) -> str:
    """``gain * I +/- offset``, for the lines that report a noise model."""
    return f"{gain:.3g} * I {'+' if offset >= 0 else '-'} {abs(offset):.3g}"


def _diagonal(plane: np.ndarray, lag: int) -> np.ndarray:
    """Second differences across both axes, taps ``lag`` apart (unit gain on white
    noise): zero on any image that is a sum of a function of y and one of x, and on every
    quadratic surface, so smooth structure, edges along an axis and blobs wider than a
    few pixels leak less into it than into the Laplacian."""
    taps = np.zeros(2 * lag + 1)
    taps[0], taps[lag], taps[-1] = 1.0, -2.0, 1.0
    return ndimage.convolve(plane, np.outer(taps, taps) / 6.0, mode="reflect")


def _laplacian(plane: np.ndarray, lag: int) -> np.ndarray:
    kernel = np.zeros((2 * lag + 1, 2 * lag + 1))
    kernel[lag, lag] = -4.0
    kernel[0, lag] = kernel[-1, lag] = kernel[lag, 0] = kernel[lag, -1] = 1.0
    return ndimage.convolve(plane, kernel / np.sqrt(20.0), mode="reflect")


def _subsample(plane: np.ndarray) -> np.ndarray:
    step = max(int(np.ceil(np.sqrt(plane.size / MAX_PIXELS))), 1)
    return plane[::step, ::step] if step > 1 else plane


RESIDUALS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "laplacian": _laplacian, "diagonal": _diagonal}


@dataclass(frozen=True)
class NoiseMeasurement:
    """How :func:`estimate_noise` measures (data, not code branches).

    Parameters
    ----------
    residual
        The high-pass residual the variance is read from: ``laplacian`` (the one the
        rules of :func:`choose` were fitted with) or ``diagonal`` (:func:`_diagonal`: sees
        less of the image's structure, assumes more of the noise's spectrum).
    tail_bins
        Bins of equal width in intensity added from the 98th to the 99.9th percentile of
        the local mean when that range is wider than the one below it: a sparse image
        (spots on a dark background) holds its signal, and most of its photon noise, in
        its brightest few per cent (per-pixel bins only).
    block
        0: pixels are binned by their local mean and each bin's quieter 90 % read (the
        rules' measurement). Otherwise the planes are cut into ``block`` x ``block``
        squares, binned by their mean, and each bin's noise read from its ``quiet``
        share of squares with the least residual energy (weakly textured patches: Liu,
        Tanaka and Okutomi, IEEE TIP 2013), the selection's bias on pure noise divided
        out (:func:`quiet_share`).
    quiet
        Share of each bin's squares read (``block`` > 0).
    """

    residual: str = "laplacian"
    tail_bins: int = 0
    block: int = 0
    quiet: float = 0.15

    def __post_init__(self) -> None:
        if self.residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {sorted(RESIDUALS)}")
        if self.tail_bins < 0:
            raise ValueError("tail_bins must be >= 0")
        if self.block != 0 and not 4 <= self.block <= 64:
            raise ValueError("block must be 0 (per-pixel bins) or 4-64 pixels")
        if not 0 < self.quiet <= 1:
            raise ValueError("quiet must be in (0, 1]")


#: the measurement the rules of :func:`choose` read (their constants were fitted on it)
LAPLACIAN = NoiseMeasurement()
#: second differences with bins up to the 99.9th percentile: nearer the true variance on
#: structured synthetic images, 0.63-0.79 of it on the FMD wide-field captures (where the
#: Laplacian gives 0.89-1.35); opt-in (docs/calibration-log.md, 2026-12-05)
DIAGONAL = NoiseMeasurement("diagonal", 4)
#: the Laplacian read on the quietest 15 % of 8 x 8 squares of each brightness bin: the
#: comparison's score draws this noise (on the 18 FMD captures 0.75-1.10 of the true
#: variance; docs/calibration-log.md, 2026-12-05 (2))
QUIET_BLOCKS = NoiseMeasurement(block=8, quiet=0.15)
#: fewest squares per brightness bin (``block`` measurements)
BLOCKS_PER_BIN = 24


def estimate_noise(planes: np.ndarray, measurement: NoiseMeasurement = LAPLACIAN
                   ) -> NoiseEstimate:
    """Measure the noise of a 2D image or a (K, H, W) stack of planes of one channel.

    Parameters
    ----------
    planes
        Normalized intensities (about [0, 1]); planes of at least 16 x 16 pixels.
    measurement
        Which residual, which bins.

    Returns
    -------
    NoiseEstimate
    """
    stack = np.asarray(planes, dtype=np.float64)
    stack = stack[None] if stack.ndim == 2 else stack
    if measurement.block:
        return _estimate_in_blocks(stack, measurement)
    residual = RESIDUALS[measurement.residual]
    means, fine, coarse = [], [], []
    for plane in stack:
        local = ndimage.uniform_filter(plane, 7, mode="reflect")
        # large planes: the residuals of the whole plane, every step-th pixel kept
        means.append(_subsample(local).ravel())
        fine.append(_subsample(residual(plane, 1)).ravel() ** 2)
        coarse.append(_subsample(residual(plane, 2)).ravel() ** 2)
    mean_i, fine_v, coarse_v = (np.concatenate(a) for a in (means, fine, coarse))
    edges = np.quantile(mean_i, np.linspace(0.02, 0.98, BINS + 1))
    top = float(np.quantile(mean_i, 0.999))
    if measurement.tail_bins and top > 2 * edges[-1] - edges[0]:
        tail = np.linspace(edges[-1], top, measurement.tail_bins + 1)[1:]
        edges = np.concatenate([edges, tail])
    edges = np.unique(edges)
    centres, v1, v2, r1, r2 = [], [], [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (mean_i >= lo) & (mean_i < hi)
        count = int(inside.sum())
        if count < MIN_BIN:
            continue
        centres.append(float(mean_i[inside].mean()))
        f, c = fine_v[inside], coarse_v[inside]
        v1.append(_trimmed(f, KEEP_VARIANCE))
        v2.append(_trimmed(c, KEEP_VARIANCE))
        r1.append(_trimmed(f, KEEP_RATIO))
        r2.append(_trimmed(c, KEEP_RATIO))
    mean = float(stack.mean())
    if not centres:  # a constant image: no noise to measure
        return NoiseEstimate(0.0, 0.0, 1.0, mean, measurement.residual)
    v1a, v2a, r1a, r2a = (np.array(a) for a in (v1, v2, r1, r2))
    ratio = _lag_ratio(r1a, r2a)
    # correlated noise: lag-1 residuals miss most of it, the lag-2 ones see it
    variances = v2a if ratio < CORRELATED_BELOW else v1a
    gain, offset = _line(np.array(centres), variances)
    return NoiseEstimate(gain, offset, ratio, mean, measurement.residual)


def _lag_ratio(lag1: np.ndarray, lag2: np.ndarray) -> float:
    """Median over the bins of the lag-1 / lag-2 residual variance. Bins without
    residuals at either lag (a flat, noiseless background: sparse images) say nothing of
    the noise's correlation."""
    ok = (lag1 > 0) & (lag2 > 0)
    return float(np.median(lag1[ok] / lag2[ok])) if ok.any() else 1.0


def _line(centres: np.ndarray, variances: np.ndarray) -> tuple[float, float]:
    """gain, offset of the variance law fitted to the bins."""
    if len(centres) >= 2 and np.ptp(centres) > 0:
        gain, offset = np.polyfit(centres, variances, 1)
    else:
        gain, offset = 0.0, float(variances.mean())
    if gain < 0:  # noise that falls with intensity: model it as signal-independent
        gain, offset = 0.0, float(variances.mean())
    return float(gain), float(offset)


def _estimate_in_blocks(stack: np.ndarray, measurement: NoiseMeasurement) -> NoiseEstimate:
    """:func:`estimate_noise` on the quietest squares of each brightness bin."""
    residual, b = RESIDUALS[measurement.residual], measurement.block
    if min(stack.shape[-2:]) < b:  # planes smaller than a square
        return estimate_noise(stack, replace(measurement, block=0))
    means, fine, coarse = [], [], []
    for plane in stack:
        means.append(_block_means(plane, b))
        fine.append(_block_means(residual(plane, 1) ** 2, b))
        coarse.append(_block_means(residual(plane, 2) ** 2, b))
    mean = float(stack.mean())
    m, e1, e2 = (np.concatenate(a) for a in (means, fine, coarse))
    bins = int(np.clip(m.size // BLOCKS_PER_BIN, 1, BINS))
    centres, q1, q2 = [], [], []
    # bins of equal counts (ties, such as a black background, split evenly)
    for inside in np.array_split(np.argsort(m, kind="stable"), bins):
        energy = e1[inside] + e2[inside]
        n = max(1, round(measurement.quiet * inside.size))
        quiet = inside[np.argpartition(energy, n - 1)[:n]]
        centres.append(float(m[inside].mean()))
        q1.append(float(e1[quiet].mean()))
        q2.append(float(e2[quiet].mean()))
    q1a, q2a = np.array(q1), np.array(q2)
    ratio = _lag_ratio(q1a, q2a)
    probe = NoiseEstimate(0.0, 0.0, ratio, mean, measurement.residual)
    lag = 2 if probe.correlated else 1
    share = quiet_share(measurement.residual, correlation_width(probe)[0], lag, b,
                        measurement.quiet)
    gain, offset = _line(np.array(centres), (q2a if lag == 2 else q1a) / share)
    return NoiseEstimate(gain, offset, ratio, mean, measurement.residual)


def _block_means(a: np.ndarray, block: int) -> np.ndarray:
    """The means of the whole ``block`` x ``block`` squares of ``a`` (a partial square at
    the bottom or right edge is left out)."""
    h, w = (a.shape[0] // block) * block, (a.shape[1] // block) * block
    return a[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3)).ravel()


def quiet_share(residual: str, width: float, lag: int, block: int, quiet: float) -> float:
    """Mean energy of the quietest ``quiet`` share of ``block`` x ``block`` squares over
    the mean energy, on pure noise (white, or blurred by ``width``): the block mean of a
    squared Gaussian residual as a gamma variable of its effective degrees of freedom
    (from the residual's autocorrelation, exact from the impulse response)."""
    return _quiet_share(residual, round(width, 2), lag, block, quiet)


@lru_cache(maxsize=64)
def _quiet_share(residual: str, width: float, lag: int, block: int, quiet: float) -> float:
    response = _impulse_response(residual, width, lag)
    auto = ndimage.correlate(response, response, mode="constant")
    c = auto.shape[0] // 2
    rho = auto / auto[c, c]
    d = np.arange(-min(block - 1, c), min(block - 1, c) + 1)
    weight = np.outer(block - np.abs(d), block - np.abs(d))
    dof = block ** 4 / float(np.sum(weight * rho[c + d][:, c + d] ** 2))
    shape = dof / 2
    cut = special.gammaincinv(shape, quiet)
    return float(special.gammainc(shape + 1, cut) / quiet)


@lru_cache(maxsize=len(RESIDUALS))
def _ratio_table(residual: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lag-1 / lag-2 ``residual`` variance ratio, and the lag-2 residual's gain, of white
    noise blurred by Gaussians of each width (exact, from the impulse response)."""
    widths = np.linspace(0.0, 2.5, 51)
    ratios, gains = [], []
    for w in widths:
        lag1, lag2 = (_impulse_response(residual, float(w), lag) for lag in (1, 2))
        ratios.append(np.sum(lag1 ** 2) / np.sum(lag2 ** 2))
        gains.append(np.sum(lag2 ** 2))
    return widths, np.array(ratios), np.array(gains)


def _impulse_response(residual: str, width: float, lag: int) -> np.ndarray:
    """``residual`` at ``lag`` of a unit impulse blurred by :func:`_blur_unit` (41 x 41):
    what white noise of unit variance becomes, pixel by pixel."""
    delta = np.zeros((41, 41))
    delta[20, 20] = 1.0
    return RESIDUALS[residual](_blur_unit(delta, width), lag)


def _blur_unit(noise: np.ndarray, width: float) -> np.ndarray:
    """``noise`` blurred by a Gaussian of ``width`` and rescaled to keep white noise's
    variance (the kernel's squared sum is 1)."""
    if width < 0.05:
        return noise
    delta = np.zeros((int(8 * width) + 1,) * 2)
    delta[delta.shape[0] // 2, delta.shape[1] // 2] = 1.0
    norm = float(np.sqrt(np.sum(ndimage.gaussian_filter(delta, width) ** 2)))
    return ndimage.gaussian_filter(noise, width, mode="reflect") / norm


def correlation_width(estimate: NoiseEstimate) -> tuple[float, float]:
    """Width of the Gaussian blur that makes white noise as correlated as the measured
    noise (0 for white noise), and the factor from the measured variance to the noise's
    own (correlated noise is measured at lag 2, which sees part of it)."""
    if not estimate.correlated:
        return 0.0, 1.0
    widths, ratios, gains = _ratio_table(estimate.residual)
    order = np.argsort(ratios)
    width = float(np.interp(estimate.fine_ratio, ratios[order], widths[order]))
    return width, float(1.0 / np.interp(width, widths, gains))


def choose(estimate: NoiseEstimate, factor: tuple[float, float] | None = None
           ) -> CalibratedNoise:
    """The noise synthesis for data with the measured ``estimate``.

    Parameters
    ----------
    estimate
        The measured noise.
    factor
        Range of the synthetic variance's multiple of the measured one; default: one
        value from the relative noise (see :data:`FACTOR_MIN`).

    Returns
    -------
    CalibratedNoise
    """
    kind = estimate.correlated
    gain, offset = estimate.gain, estimate.offset
    if gain * max(estimate.mean, 1e-3) + offset < MIN_VARIANCE:  # no measurable noise
        gain, offset = 0.0, MIN_VARIANCE
    return CalibratedNoise(amplification=AMPLIFICATION[kind], median=MEDIAN[kind], gain=gain,
                           offset=offset, factor=factor or (variance_factor(estimate),) * 2,
                           detail=detail_kept(estimate), ceiling=ceiling(estimate))


def variance_factor(estimate: NoiseEstimate) -> float:
    """The synthetic noise's variance over the measured one, for ``estimate``."""
    rise = FACTOR_SLOPE * (estimate.relative_noise - S_LOW)
    return float(np.clip(FACTOR_MIN + rise, FACTOR_MIN, FACTOR_MAX))


def detail_kept(estimate: NoiseEstimate) -> float:
    """The share of the image's detail kept in the training target, for ``estimate``
    (see :data:`DETAIL_MAX`)."""
    ramp = (DETAIL_NONE - estimate.relative_noise) / (DETAIL_NONE - DETAIL_FULL)
    return float(DETAIL_MAX[estimate.correlated] * np.clip(ramp, 0.0, 1.0))


def ceiling(estimate: NoiseEstimate) -> float | None:
    """The intensity up to which the variance factor applies in full, for ``estimate``
    (None: everywhere; see :data:`CEILING_BELOW`)."""
    if estimate.correlated or estimate.relative_noise > CEILING_BELOW or estimate.mean <= 0:
        return None
    return variance_factor(estimate) * estimate.mean


def low_noise(estimate: NoiseEstimate) -> bool:
    """Whether ``estimate`` is white noise low enough for the finer schedule
    (:data:`LOW_NOISE_SCHEDULE`)."""
    return not estimate.correlated and estimate.relative_noise <= S_LOW


def calibrated_config(config: TrainConfig, estimate: NoiseEstimate,
                      plane_shape: tuple[int, int] | None = None) -> TrainConfig:
    """A ``measured`` config (or ``auto``'s ``measured`` candidate) with its noise synthesis
    (and, for low noise, its schedule) chosen from ``estimate``.

    A config that needs no measurement (a named preset, or the ``paper`` recipe with its
    single published noise model: :attr:`~fm2s.recipes.TrainConfig.calibrated`) is
    returned as it is. The low-noise schedule applies where the recipe trains on crops
    and the planes (``plane_shape``, Y and X) are at least a crop in size: smaller planes
    train whole, as before.
    """
    if config.calibrated:
        return config
    noise = choose(estimate)
    fits = plane_shape is None or min(plane_shape) >= config.crop
    if not (config.crop and fits and low_noise(estimate)):
        return replace(config, noise=noise)
    finer = {name: round(getattr(config, name) * times)
             for name, times in LOW_NOISE_SCHEDULE.items()}
    return replace(config, noise=replace(noise, low_noise_schedule=True), **finer)
