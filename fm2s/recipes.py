"""Recipes and microscope presets: the constants of FM2S, kept as data.

A *recipe* fixes the network and the training schedule; a *preset* (chosen by
``microscope``) fixes the noise model. ``paper`` is the recipe of the FM2S paper
(arXiv 2412.10031 v1), ``v2`` the authors' later code, and ``fast`` (the
default) is this project's own, which trains on random crops to reach the
quality of ``v2`` in a fraction of its time (see README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

from .errors import ParameterError

RECIPES = ("fast", "paper", "v2")
#: the FM2S authors' presets per microscope (avg1: single captures) and their tuning for
#: captures averaged 2 and 4 times (``confocal-avg2`` ...; ``v2``/``fast`` recipes)
MICROSCOPES = ("auto", "measured", "confocal", "twophoton", "widefield", "generic",
               "confocal-avg2", "confocal-avg4", "twophoton-avg2", "twophoton-avg4",
               "widefield-avg2", "widefield-avg4")
DEFAULT_RECIPE = "fast"
#: ``auto``: the noise synthesis is chosen by a comparison on the data (:mod:`fm2s.selection`)
DEFAULT_MICROSCOPE = "auto"
#: noise models measured on the data: ``auto`` trains the synthesis derived from the
#: measured noise and the named presets briefly and keeps the one that scores best on the
#: image itself (:mod:`fm2s.selection`); ``measured`` trains the derived synthesis alone
#: (:mod:`fm2s.calibrate`: one training, rules fitted on the FMD images)
MEASURED = ("auto", "measured")


def _check_target(amplification: int, median: int) -> None:
    """The checks every noise model shares: channel amplification and median window."""
    if amplification < 1:
        raise ValueError("amplification must be >= 1")
    if median < 1 or median % 2 == 0:
        raise ValueError("median window must be a positive odd number")


@dataclass(frozen=True)
class NoiseModel:
    """Parameters of FM2S's noise synthesis (steps 1-3 of the method).

    Parameters
    ----------
    amplification
        Channel amplification lambda: the image is repeated this many times.
    stride
        Side of the square windows in which the regional noise level is set.
    median
        Window of the median filter that makes the training target.
    k_g, k_p
        Gaussian and Poisson gains: sigma = k_g * m / 255, Poisson scale k_p / m,
        where m is the window's mean intensity.
    lambda_p
        Scale of the overall Poisson noise added last.
    mean_range
        The window mean m is clamped to this range.
    zero_padded_windows
        If True, windows at the right and bottom edges are zero-padded to full
        size before their mean is taken (``v2``); else partial windows are
        averaged over their own pixels (``paper``).
    """

    amplification: int
    stride: int
    median: int
    k_g: float
    k_p: float
    lambda_p: float
    mean_range: tuple[float, float]
    zero_padded_windows: bool
    #: the presets train on FM2S's median target as published (see CalibratedNoise.detail)
    detail: ClassVar[float] = 0.0

    def __post_init__(self) -> None:
        _check_target(self.amplification, self.median)
        if self.stride < 1:
            raise ValueError("stride must be >= 1")
        if min(self.k_g, self.k_p, self.lambda_p) <= 0:
            raise ValueError("k_g, k_p and lambda_p must be positive")
        lo, hi = self.mean_range
        if not 0 < lo < hi:
            raise ValueError("mean_range must satisfy 0 < low < high")


@dataclass(frozen=True)
class CalibratedNoise:
    """Noise synthesis from the noise measured on the data (``--microscope measured``, and
    ``auto``'s ``measured`` candidate).

    Each sample's noise follows the measured Poisson-Gaussian model (variance = ``gain``
    * intensity + ``offset``, normalized units) with its variance multiplied by a factor
    drawn per sample, log-uniformly from ``factor`` (a range; equal ends fix it). A
    negative offset (a dark level below which pixels hold no photons) shifts the Poisson
    part; a positive one is Gaussian read noise. See :mod:`fm2s.calibrate`.

    Parameters
    ----------
    amplification, median
        As in :class:`NoiseModel`.
    gain, offset
        The measured noise model.
    factor
        (low, high) multiple of the measured variance that is synthesized.
    low_noise_schedule
        Whether the rules also made the training schedule finer for low noise
        (:data:`fm2s.calibrate.LOW_NOISE_SCHEDULE`); recorded with the choice, the noise
        synthesis does not use it.
    detail
        Share of the image's own detail (image - median) kept in the training target, in
        [0, 1): 0 is FM2S's median target (:func:`fm2s.noise.median_target`).
    ceiling
        Intensity (normalized) up to which the factor applies in full; above it the
        synthetic variance stays at its value there until the measured variance (factor
        1) grows past it. None: the factor applies at every intensity.
    """

    amplification: int
    median: int
    gain: float
    offset: float
    factor: tuple[float, float]
    low_noise_schedule: bool = False
    detail: float = 0.0
    ceiling: float | None = None

    def __post_init__(self) -> None:
        _check_target(self.amplification, self.median)
        if self.gain < 0 or not all(map(math.isfinite, (self.gain, self.offset))):
            raise ValueError("gain must be finite and >= 0, offset finite")
        lo, hi = self.factor
        if not 0 < lo <= hi:
            raise ValueError("factor must satisfy 0 < low <= high")
        if not 0 <= self.detail < 1:
            raise ValueError("detail must be in [0, 1)")
        if self.ceiling is not None and not 0 < self.ceiling < math.inf:
            raise ValueError("ceiling must be None or a finite intensity > 0")

    @property
    def dark_level(self) -> float:
        """Intensity below which pixels get no Poisson noise: -offset / gain for a
        negative offset, else 0."""
        return max(-self.offset / self.gain, 0.0) if self.gain > 0 else 0.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides one training run: recipe, preset and seed.

    Parameters
    ----------
    recipe, microscope
        Names of the recipe and the preset this config was made from.
    noise
        The noise model: a preset's, or one measured on the data (``auto``, ``measured``; until it
        is measured, by :func:`fm2s.model.train_model`, the confocal preset stands in).
    kernels
        Kernel sizes of the three convolutions.
    warmup_steps
        Steps that map the raw image itself to the target before noisy samples.
    samples
        Number of noisy samples drawn (noise redone for each). With ``crop``, a
        sample is a batch of ``batch`` random crops, noise drawn on the crops.
    steps_per_sample
        Optimizer steps on each noisy sample.
    lr
        Adam learning rate.
    lr_decay_every, lr_decay
        Multiply the rate by ``lr_decay`` every ``lr_decay_every`` steps
        (0 disables).
    lr_final
        If > 0, the rate follows a cosine from ``lr`` down to ``lr_final``
        over the whole run instead.
    crop
        Side of the random square crops trained on; 0 trains on the full image
        (so does an image smaller than a crop).
    batch
        Crops per sample (ignored for full-image training).
    ema
        If > 0, the weights returned are an exponential moving average of the
        weights over the steps, with this decay per step.
    input_mean
        If > 0, the network input (and target) is multiplied by a gain that
        brings the target's mean to this value, and the gain is folded back into
        the weights after training: the same function, reached in fewer steps
        on dim images.
    normalization
        ``dtype`` (8-bit images / 255, as published) or ``minmax`` (every image
        mapped from its [min, max] to [0, 1]); see :mod:`fm2s.normalize`.
    views
        1, 2 or 4: average the prediction over the image and its 180-degree rotation
        (2) or its flips along y, x and both (4) (test-time augmentation, inside the
        exported model; see :data:`fm2s.export.VIEWS`).
    seed
        Seed of every random draw: weights, noise and crop positions.
    """

    recipe: str
    microscope: str
    noise: NoiseModel | CalibratedNoise
    kernels: tuple[int, int, int]
    warmup_steps: int
    samples: int
    steps_per_sample: int
    lr: float = 1e-3
    lr_decay_every: int = 0
    lr_decay: float = 1.0
    lr_final: float = 0.0
    crop: int = 0
    batch: int = 1
    ema: float = 0.0
    input_mean: float = 0.0
    normalization: str = "dtype"
    views: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise ValueError("kernel sizes must be positive odd numbers")
        if self.samples < 1 or self.steps_per_sample < 1 or self.warmup_steps < 0:
            raise ValueError("samples and steps_per_sample must be >= 1, warmup_steps >= 0")
        if self.lr <= 0 or self.lr_final < 0:
            raise ValueError("learning rates must be positive")
        if self.crop < 0 or self.batch < 1:
            raise ValueError("crop must be >= 0 and batch >= 1")
        if self.normalization not in ("dtype", "minmax"):
            raise ValueError("normalization must be dtype or minmax")
        if not 0 <= self.ema < 1 or self.input_mean < 0:
            raise ValueError("ema must be in [0, 1) and input_mean >= 0")
        if self.views not in (1, 2, 4):
            raise ValueError("views must be 1, 2 or 4")
        if not 0 <= self.seed < 2**63:
            raise ValueError("seed must be in [0, 2**63)")

    @property
    def total_steps(self) -> int:
        """Number of optimizer steps of the whole run."""
        return self.warmup_steps + self.samples * self.steps_per_sample

    @property
    def calibrated(self) -> bool:
        """False for an ``auto`` or ``measured`` config whose noise is not measured yet."""
        return self.microscope not in MEASURED or isinstance(self.noise, CalibratedNoise) \
            or self.recipe == "paper"

    @property
    def halo(self) -> int:
        """Receptive-field radius of the network, in pixels."""
        return sum(k // 2 for k in self.kernels)


def _noise(amp: int, stride: int, median: int, k_g: float, k_p: float, lam: float,
           mean_range: tuple[float, float], padded: bool) -> NoiseModel:
    return NoiseModel(amp, stride, median, k_g, k_p, lam, mean_range, padded)


_PAPER_NOISE = _noise(2, 75, 3, 200, 30, 60, (0.01, 0.20), False)
_V2_RANGE = (1e-5, 0.15)
_V2_NOISE = {
    "confocal": _noise(2, 75, 3, 200, 30, 70, _V2_RANGE, True),
    "twophoton": _noise(2, 75, 3, 175, 30, 60, _V2_RANGE, True),
    "widefield": _noise(1, 75, 11, 220, 45, 2000, _V2_RANGE, True),
    "generic": _noise(6, 5, 3, 60, 40, 125, _V2_RANGE, True),
}
# the authors' per-level tuning: k_g, k_p, lambda_p change, the rest stays as at avg1
for _name, _levels in {"confocal": ((125, 95, 285), (70, 195, 485)),
                       "twophoton": ((150, 85, 300), (90, 300, 480)),
                       "widefield": ((220, 100, 2500), (60, 650, 3500))}.items():
    for _level, (_kg, _kp, _lam) in zip(("avg2", "avg4"), _levels):
        _V2_NOISE[f"{_name}-{_level}"] = replace(_V2_NOISE[_name], k_g=_kg, k_p=_kp,
                                                 lambda_p=_lam)
# auto and measured: the confocal preset stands in until the data's noise is measured
_V2_NOISE["auto"] = _V2_NOISE["measured"] = _V2_NOISE["confocal"]

#: recipe name -> (schedule fields, microscope -> noise model, microscope -> schedule changes)
_RECIPE_TABLE: dict[str, tuple[dict, dict[str, NoiseModel], dict[str, dict]]] = {
    "paper": (
        dict(kernels=(3, 3, 3), warmup_steps=0, samples=25, steps_per_sample=150,
             lr=1e-3, lr_decay_every=1500, lr_decay=0.25),
        {m: _PAPER_NOISE for m in MICROSCOPES},  # auto too: one noise model for all data
        {},
    ),
    "v2": (
        dict(kernels=(5, 3, 5), warmup_steps=5, samples=450, steps_per_sample=5, lr=1e-3),
        _V2_NOISE,
        {},
    ),
    "fast": (
        dict(kernels=(5, 3, 5), warmup_steps=5, samples=80, steps_per_sample=9, lr=4e-3,
             lr_final=4e-4, crop=128, batch=4, ema=0.99, input_mean=0.25, normalization="minmax",
             views=2),
        _V2_NOISE,
        # widefield (amplification 1, 11 x 11 median) needs more steps to reach v2 quality
        {"widefield": dict(samples=120), "widefield-avg2": dict(samples=120),
         "widefield-avg4": dict(samples=120)},
    ),
}


def make_config(recipe: str = DEFAULT_RECIPE, microscope: str = DEFAULT_MICROSCOPE,
                seed: int = 0, **overrides) -> TrainConfig:
    """Build the validated config of a recipe and microscope preset.

    Parameters
    ----------
    recipe
        One of :data:`RECIPES`.
    microscope
        One of :data:`MICROSCOPES`.
    seed
        Seed of the run.
    **overrides
        Schedule fields to change (for experiments and tests), e.g. ``samples=3``.

    Returns
    -------
    TrainConfig
    """
    if recipe not in _RECIPE_TABLE:
        raise ParameterError("recipe", recipe, f"choose one of {', '.join(RECIPES)}")
    if microscope not in MICROSCOPES:
        raise ParameterError("microscope", microscope, f"choose one of {', '.join(MICROSCOPES)}")
    schedule, noises, per_microscope = _RECIPE_TABLE[recipe]
    fields = {**schedule, **per_microscope.get(microscope, {}), **overrides}
    return TrainConfig(recipe=recipe, microscope=microscope, noise=noises[microscope],
                       seed=seed, **fields)


def as_preset(config: TrainConfig, microscope: str) -> TrainConfig:
    """``config`` (any recipe, schedule and seed) with the noise model of a named preset.

    The preset's own schedule changes (``fast``: more samples for ``widefield``) apply in
    proportion to the config's schedule, so a stack's or an override's schedule keeps its
    scale. Used by ``auto`` to compare presets (:mod:`fm2s.selection`).
    """
    if microscope in MEASURED or microscope not in MICROSCOPES:
        raise ParameterError("microscope", microscope, "name a preset, not auto or measured")
    schedule, noises, per_microscope = _RECIPE_TABLE[config.recipe]
    scaled = {key: max(1, round(getattr(config, key) * value / schedule[key]))
              for key, value in per_microscope.get(microscope, {}).items()}
    return replace(config, microscope=microscope, noise=noises[microscope], **scaled)


def with_noise(config: TrainConfig, **changes) -> TrainConfig:
    """Return ``config`` with some noise-model fields changed."""
    return replace(config, noise=replace(config.noise, **changes))


__all__ = ["NoiseModel", "CalibratedNoise", "TrainConfig", "make_config", "as_preset",
           "with_noise",
           "RECIPES", "MICROSCOPES", "DEFAULT_RECIPE", "DEFAULT_MICROSCOPE"]


# Volumes: planes each channel's model trains on (see benchmarks/train_planes.py), the
# tile side of one onnxruntime call and the YX side of output chunks (see
# benchmarks/memory.py).
DEFAULT_TRAIN_PLANES = 8
DEFAULT_TILE = 512
#: on a GPU one call of 512 x 512 pixels is too short to keep it busy (tile sizes on a GPU
#: not compared yet: benchmarks/RESULTS.md, GPU); 2048 x 2048 with the default network needs
#: about 1 GB
DEFAULT_TILE_CUDA = 2048


def default_tile(provider: str) -> int:
    """The default ``--tile`` for a resolved provider (``cpu`` or ``cuda``)."""
    return DEFAULT_TILE_CUDA if provider == "cuda" else DEFAULT_TILE
WRITE_CHUNK = 1024
# A model that serves more than one plane (a channel of a stack) is a small part of its
# run, so there the default recipe draws twice its noisy samples (a constant: the cost
# does not grow with the planes; see benchmarks/stack_quality.py). A single plane, in any
# container, trains as a 2D image. The published recipes stay as published.
STACK_SAMPLES_FACTOR = {"fast": 2, "paper": 1, "v2": 1}


def config_for(recipe: str, microscope: str, seed: int, planes: int,
               **overrides) -> TrainConfig:
    """The config of a model that will serve ``planes`` planes (see STACK_SAMPLES_FACTOR)."""
    config = make_config(recipe, microscope, seed=seed)
    if overrides.get("views", 1) not in (1, 2, 4):
        raise ParameterError("views", overrides["views"], "choose 1, 2 or 4 (see README, "
                             "Throughput)")
    if planes > 1 and "samples" not in overrides:
        overrides["samples"] = config.samples * STACK_SAMPLES_FACTOR.get(recipe, 1)
    return replace(config, **overrides) if overrides else config
