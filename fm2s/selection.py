"""``--microscope auto`` (the default): the noise synthesis chosen by a comparison on the
image itself.

Each candidate synthesis (the one :func:`fm2s.calibrate.choose` derives from the measured
noise, and the FM2S authors' named presets) trains a short run on the training planes;
each network is then scored on the same planes by recorruption (Pang et al., CVPR 2021,
"Recorrupted-to-Recorrupted"): with z drawn from the measured noise model,

    score(f) = mean | f(y + alpha z) - (y - z / alpha) |^2,

whose expectation is the network's mean squared error against the noise-free image (on
an image alpha^2 noisier than y) plus a constant the same for every candidate, when z
has the noise's own variance and spatial correlation. The candidate of the lowest score
then trains its full schedule. Nothing here looks at file names or metadata.

The noise model is :class:`fm2s.calibrate.NoiseEstimate` (Poisson-Gaussian variance,
white or correlated). Correlated noise is modelled as white noise blurred by a Gaussian
whose width reproduces the measured lag-1 / lag-2 ratio (:func:`correlation_width`).

``SelectionConfig(score="masked")`` (opt-in) scores white noise instead by the error on
masked pixels (:func:`masked_score`), which needs no noise model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import ndimage

from .calibrate import (
    MIN_VARIANCE,
    QUIET_BLOCKS,
    NoiseEstimate,
    NoiseMeasurement,
    _blur_unit,
    calibrated_config,
    correlation_width,
    estimate_noise,
    variance_law,
)
from .export import Denoiser
from .network import FM2SNet
from .normalize import Normalization
from .recipes import TrainConfig, as_preset


@dataclass(frozen=True)
class SelectionConfig:
    """How ``auto`` compares its candidates (data, not code branches).

    Parameters
    ----------
    presets
        Named presets compared with the synthesis derived from the measured noise.
    screen_crop
        The comparison trains each candidate's full schedule of steps on crops of this
        share of the recipe's crop side (``fast``: 48-pixel crops for 128, about a
        seventh of the pixels); recipes that train on whole images train
        ``screen_samples`` of their samples instead. 0.375 chose as well as 0.5 on the
        quick synthetic grid and on FMD in about half the comparison's time
        (docs/calibration-log.md).
    screen_samples
        Share of the noisy samples of whole-image recipes trained for the comparison.
    alpha
        Recorruption strength: the network sees y + alpha z, is scored against
        y - z / alpha.
    draws
        Recorruption draws averaged per plane.
    max_planes
        Training planes scored at most (spread over the stack).
    split
        How the noisier input and the independent target are drawn: ``gaussian``
        (recorruption with Gaussian noise of the measured variance) or ``thinning``
        (white noise only: the photon counts of the measured model split binomially,
        with keep probability 1 / (1 + alpha^2), which gives the input and the target the
        same noise variances as recorruption and is exact for Poisson noise at any count;
        the read noise is recorrupted).
    score
        ``recorruption`` (the default): :func:`recorruption_score`, which draws the
        measured noise. ``masked`` (opt-in): on white noise the error on masked pixels
        (:func:`masked_score`), which needs no noise model; on correlated noise, whose
        neighbours share it, recorruption. Measured against recorruption in
        docs/calibration-log.md, 2026-12-05 (7): better on sparse spots at few photons,
        a little worse on the demo and on one FMD capture.
    mask_spacing
        ``masked``: the masked pixels lie on a grid of this spacing; ``draws`` of its
        offsets are scored per plane.
    noise
        How the noise is measured for the score (:class:`fm2s.calibrate.NoiseMeasurement`:
        ``masked`` uses it only to tell correlated noise; by default
        :data:`fm2s.calibrate.QUIET_BLOCKS`; the rules' per-pixel
        :data:`fm2s.calibrate.LAPLACIAN` and :data:`fm2s.calibrate.DIAGONAL` can be asked
        for). ``recorruption`` needs the noise's variance to within a factor of about
        1.5-2: an overestimate favours candidates that smooth, an underestimate ones that
        let noise through.
    """

    presets: tuple[str, ...] = ("confocal", "twophoton", "widefield", "generic")
    screen_crop: float = 0.375
    screen_samples: float = 0.25
    alpha: float = 0.5
    draws: int = 3
    max_planes: int = 4
    split: str = "gaussian"
    noise: NoiseMeasurement = QUIET_BLOCKS
    score: str = "recorruption"
    mask_spacing: int = 4

    def __post_init__(self) -> None:
        if self.split not in ("gaussian", "thinning"):
            raise ValueError("split must be gaussian or thinning")
        if self.score not in ("masked", "recorruption"):
            raise ValueError("score must be masked or recorruption")
        if self.mask_spacing < 2:
            raise ValueError("mask_spacing must be >= 2")
        if not 0 < self.screen_crop <= 1 or not 0 < self.screen_samples <= 1:
            raise ValueError("screen_crop and screen_samples must be in (0, 1]")
        if self.alpha <= 0 or self.draws < 1 or self.max_planes < 1:
            raise ValueError("alpha must be > 0, draws and max_planes >= 1")

    def masks(self, noise: ScoreNoise) -> bool:
        """Whether candidates are scored on masked pixels for ``noise`` (``masked``, white
        noise); else by recorruption."""
        return self.score == "masked" and noise.width == 0

    def screening(self, config: TrainConfig) -> TrainConfig:
        """The cheaper run of ``config`` that the comparison trains."""
        if config.crop:
            return replace(config, crop=max(16, round(config.crop * self.screen_crop)))
        return replace(config, samples=max(1, math.ceil(config.samples * self.screen_samples)))


SELECTION = SelectionConfig()


@dataclass(frozen=True)
class Candidate:
    """One compared noise synthesis: its name, its full config, the config of its comparison
    run, and that run's score (lower is better)."""

    name: str
    config: TrainConfig
    screened: TrainConfig
    score: float


@dataclass(frozen=True)
class Selection:
    """What ``auto`` compared and chose: the candidates (comparison runs) and the winner's
    index. The winner's full schedule is what trains next."""

    candidates: tuple[Candidate, ...]
    chosen: int
    noise: ScoreNoise | None = None
    masked: bool = False

    @property
    def winner(self) -> Candidate:
        return self.candidates[self.chosen]

    def _drawn(self) -> str:
        if self.masked:
            return "; pixels on a grid masked, each predicted from its 8 neighbours"
        if self.noise is None:
            return ""
        kind = f"correlated (width {self.noise.width:.2f})" if self.noise.width else "white"
        return (f", drawn as {kind} noise of variance "
                f"{variance_law(self.noise.gain, self.noise.offset)}")

    def describe(self) -> str:
        """One line: the scores and why the winner won."""
        best = self.winner.score
        others = sorted(c.score for i, c in enumerate(self.candidates) if i != self.chosen)
        margin = (others[0] / best - 1) if others and best > 0 else 0.0
        scores = ", ".join(f"{c.name} {c.score / best:.3f}" for c in self.candidates)
        how = ("by the error on pixels each network did not see (Noise2Self)"
               if self.masked else
               "by recorruption (the error on a noisier copy against an independent one")
        close = "" if self.masked else ")"
        return (f"compared {len(self.candidates)} noise syntheses trained on this image "
                f"({self.winner.screened.crop or 'whole'}-pixel crops), scored {how}"
                f"{self._drawn()}{close}; relative: {scores};"
                f" chose {self.winner.name}, {margin:.1%} below the next")


def candidates(config: TrainConfig, estimate: NoiseEstimate,
               plane_shape: tuple[int, int] | None,
               selection: SelectionConfig = SELECTION) -> list[tuple[str, TrainConfig]]:
    """The compared configs: the measured synthesis first, then the named presets."""
    measured = calibrated_config(config, estimate, plane_shape)
    return [("measured", measured)] + [(name, as_preset(config, name))
                                       for name in selection.presets]


@dataclass(frozen=True)
class ScoreNoise:
    """The noise the score draws (normalized units): variance = gain * I + offset per
    pixel, white noise blurred by a Gaussian of ``width`` (0: white) and rescaled to keep
    that variance. :meth:`of` derives it from a :class:`~fm2s.calibrate.NoiseEstimate`;
    benchmarks with a known noise build it directly, to score with the true model."""

    gain: float
    offset: float
    width: float = 0.0

    @classmethod
    def of(cls, noise: NoiseEstimate | ScoreNoise) -> ScoreNoise:
        if isinstance(noise, ScoreNoise):
            return noise
        width, scale = correlation_width(noise)
        return cls(noise.gain * scale, noise.offset * scale, width)


def recorruption_score(net: FM2SNet, planes: np.ndarray, noise: NoiseEstimate | ScoreNoise,
                       views: int, selection: SelectionConfig,
                       rng: np.random.Generator) -> float:
    """Mean recorruption error of ``net`` on normalized ``planes`` (K, H, W)."""
    model = ScoreNoise.of(noise)
    width = model.width
    denoiser = Denoiser(net, Normalization(0.0, 1.0), views=views).eval()
    a = selection.alpha
    total = 0.0
    thinning = selection.split == "thinning" and width == 0 and model.gain > 0
    for plane in planes:
        if thinning:
            for _ in range(selection.draws):
                noisier, target = thinned(plane.astype(np.float64), model, a, rng)
                with torch.no_grad():
                    out = denoiser(torch.from_numpy(noisier.astype(np.float32))[None, None])
                total += float(np.mean((out[0, 0].numpy().astype(np.float64) - target) ** 2))
            continue
        # the intensity at each pixel: the mean of its 8 neighbours, which holds none of
        # the pixel's own noise and, the variance being linear in the intensity, gives the
        # variance without bias where the image is flat (a 3 x 3 median is biased low on
        # skewed photon noise: 6-30 % less variance on the FMD captures)
        level = ndimage.convolve(plane.astype(np.float64), _NEIGHBOURS, mode="reflect")
        sd = np.sqrt(np.maximum(model.gain * level + model.offset, MIN_VARIANCE))
        for _ in range(selection.draws):
            z = sd * _blur_unit(rng.standard_normal(plane.shape), width)
            noisier = torch.from_numpy((plane + a * z).astype(np.float32))[None, None]
            with torch.no_grad():
                out = denoiser(noisier)[0, 0].numpy().astype(np.float64)
            total += float(np.mean((out - (plane - z / a)) ** 2))
    return total / (len(planes) * selection.draws)


def thinned(plane: np.ndarray, estimate: NoiseEstimate | ScoreNoise, alpha: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A noisier copy of ``plane`` and an independent target with the noise variances of
    recorruption (1 + alpha^2 and 1 + 1 / alpha^2 times the plane's), by binomial thinning
    of the photon counts of the measured model (variance = gain * I + offset: counts
    (I - dark) / gain above a dark level -offset / gain, read noise of variance offset).

    Counts are rounded at random to integers (keeping their mean); what is not photons
    (the read noise and that rounding) is recorrupted with Gaussian noise of the read
    noise's variance, as in :func:`recorruption_score`.
    """
    gain = estimate.gain
    dark = max(-estimate.offset / gain, 0.0)
    counts = np.maximum(plane - dark, 0.0) / gain
    whole = np.floor(counts)
    n = (whole + (rng.random(plane.shape) < counts - whole)).astype(np.int64)
    rest = plane - dark - gain * n
    keep = 1.0 / (1.0 + alpha * alpha)
    kept = rng.binomial(n, keep)
    z = np.sqrt(max(estimate.offset, 0.0)) * rng.standard_normal(plane.shape)
    noisier = dark + gain * kept / keep + rest + alpha * z
    target = dark + gain * (n - kept) / (1.0 - keep) + rest - z / alpha
    return noisier, target


_NEIGHBOURS = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]) / 8


def scored_planes(planes: np.ndarray, most: int) -> np.ndarray:
    """At most ``most`` of the (K, H, W) planes, spread evenly."""
    if len(planes) <= most:
        return planes
    return planes[np.linspace(0, len(planes) - 1, most).round().astype(int)]


def select(planes: np.ndarray, config: TrainConfig, estimate: NoiseEstimate,
           train: Callable[[np.ndarray, TrainConfig], FM2SNet],
           selection: SelectionConfig = SELECTION) -> Selection:
    """Train every candidate's comparison run on ``planes`` and score it (see the module).

    Parameters
    ----------
    planes
        Normalized training planes, 2D or (K, H, W).
    config
        The ``auto`` config (recipe, schedule, seed).
    estimate
        The noise measured on ``planes`` for the rules (the ``measured`` candidate); the
        score draws the noise measured again with ``selection.noise`` (by default on the
        quietest squares, :data:`fm2s.calibrate.QUIET_BLOCKS`).
    train
        ``train(planes, config) -> FM2SNet`` (:func:`fm2s.training.train_network` with
        the run's device bound).
    selection
        How candidates are compared.
    """
    stack = planes if planes.ndim == 3 else planes[None]
    scored = scored_planes(stack, selection.max_planes)
    drawn = ScoreNoise.of(estimate_noise(stack, selection.noise))
    results = []
    for name, full in candidates(config, estimate, stack.shape[-2:], selection):
        short = selection.screening(full)
        net = train(planes, short)
        results.append(Candidate(name, full, short,
                                 score(net, scored, drawn, full, selection)))
    return Selection(tuple(results), winner_of([c.score for c in results]), drawn,
                     selection.masks(drawn))


#: scores within this relative distance of the lowest are a tie, won by the first candidate
#: (the measured synthesis, then the presets in order): float rounding, which moves with
#: torch's threads, moves scores by about 1e-7 and must not move the choice
TIE = 1e-5


def winner_of(scores: list[float]) -> int:
    """Index of the winning score: the first within :data:`TIE` of the lowest."""
    best = min(scores)
    return next(i for i, v in enumerate(scores) if v <= best + TIE * abs(best))


def score(net: FM2SNet, scored: np.ndarray, estimate: NoiseEstimate | ScoreNoise,
          config: TrainConfig, selection: SelectionConfig = SELECTION) -> float:
    """:func:`recorruption_score` (or, ``selection.score`` ``masked`` on white noise,
    :func:`masked_score`) with the draws of ``config.seed`` (the same draws for every
    candidate of a run)."""
    rng = np.random.default_rng([config.seed, 7])
    if selection.masks(ScoreNoise.of(estimate)):
        return masked_score(net, scored, config.views, selection, rng)
    return recorruption_score(net, scored, estimate, config.views, selection, rng)


def masked_score(net: FM2SNet, planes: np.ndarray, views: int, selection: SelectionConfig,
                 rng: np.random.Generator) -> float:
    """Mean error of ``net`` on pixels it did not see (Batson and Royer, ICML 2019,
    "Noise2Self"), on normalized ``planes`` (K, H, W).

    The pixels of a grid (spacing ``selection.mask_spacing``, ``selection.draws`` of its
    offsets per plane) are replaced by the mean of their 8 neighbours, the network is run
    on the result, and its output there is compared with the pixels' own values. With
    noise independent from pixel to pixel, the output at a masked pixel holds none of
    that pixel's noise, so the expected error is the masked network's error against the
    noise-free image plus the noise variance, the same for every candidate: no noise
    model is needed. Noise shared with the neighbours biases it toward networks that keep
    noise (hence recorruption for correlated noise, :func:`score`).
    """
    denoiser = Denoiser(net, Normalization(0.0, 1.0), views=views).eval()
    spacing = selection.mask_spacing
    total, count = 0.0, 0
    for plane in planes:
        y = plane.astype(np.float64)
        fill = ndimage.convolve(y, _NEIGHBOURS, mode="reflect")  # every offset's fill
        offsets = rng.choice(spacing * spacing, min(selection.draws, spacing * spacing),
                             replace=False)
        for offset in offsets:
            predicted, centre = masked_predictions(denoiser, y, divmod(int(offset), spacing),
                                                   spacing, fill)
            diff = predicted - y[centre]
            total += float(np.sum(diff * diff))
            count += diff.size
    return total / max(count, 1)


def masked_predictions(denoiser: Callable[[torch.Tensor], torch.Tensor], plane: np.ndarray,
                       offset: tuple[int, int], spacing: int, fill: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The network's output at the pixels of one mask grid (``offset``: its first row and
    column), run on ``plane`` with those pixels replaced by their 8 neighbours' mean
    (``fill``, computed here if not given); and the grid as a boolean mask."""
    if fill is None:
        fill = ndimage.convolve(plane, _NEIGHBOURS, mode="reflect")
    centre = np.zeros(plane.shape, dtype=bool)
    centre[offset[0]::spacing, offset[1]::spacing] = True
    masked = np.where(centre, fill, plane)
    with torch.no_grad():
        out = denoiser(torch.from_numpy(masked.astype(np.float32))[None, None])
    return out[0, 0].numpy().astype(np.float64)[centre], centre
