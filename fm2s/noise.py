"""FM2S's noise synthesis: median-filtered target and region-wise mixed noise."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .recipes import CalibratedNoise, NoiseModel


def median_target(image: np.ndarray, size: int, detail: float = 0.0) -> np.ndarray:
    """The FM2S training target: a 2D image median-filtered (reflecting edges).

    ``detail`` (in [0, 1)) puts that share of what the median took away back in:
    ``median + detail * (image - median)``; 0 (the default) is FM2S's target.
    """
    image = np.asarray(image, dtype=np.float32)
    median = ndimage.median_filter(image, size=size, mode="reflect")
    if detail == 0:
        return median
    return (median + detail * (image - median)).astype(np.float32)


def region_means(image: torch.Tensor, model: NoiseModel) -> torch.Tensor:
    """Per-pixel noise level m: the clamped mean of the window holding the pixel.

    Parameters
    ----------
    image
        Tensor of shape (N, C, H, W), normalized intensities.
    model
        The noise model (window ``stride``, ``mean_range``, edge handling).

    Returns
    -------
    torch.Tensor
        Shape (N, 1, H, W): the clamped window mean broadcast to each pixel.
    """
    s = model.stride
    plane = image.mean(dim=1, keepdim=True)
    h, w = plane.shape[-2:]
    if model.zero_padded_windows:
        plane = F.pad(plane, (0, (-w) % s, 0, (-h) % s))
    means = F.avg_pool2d(plane, s, stride=s, ceil_mode=True)
    means = means.clamp(*model.mean_range)
    full = means.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
    return full[..., :h, :w]


def add_noise(clean: torch.Tensor, level: torch.Tensor | None,
              model: NoiseModel | CalibratedNoise,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Synthesize one noisy sample from the (amplified) median-filtered image.

    Region-wise Poisson-Gaussian noise (Poisson scale k_p/m, Gaussian sigma
    k_g*m/255, clamp to [0, 1]), then overall Poisson noise of scale lambda_p,
    clamp to [0, 1]. Every channel gets its own draw. All draws use
    ``generator`` on the tensor's device; nothing loops over windows.

    Parameters
    ----------
    clean
        Tensor (N, C, H, W) of normalized intensities.
    level
        The noise level m of each pixel, (N or 1, 1, H, W), from
        :func:`region_means` of the whole image (so crops keep their level).
    model
        The noise model.
    generator
        Source of randomness (on the same device as ``clean``).

    Returns
    -------
    torch.Tensor
        The noisy sample, same shape, values in [0, 1].
    """
    if isinstance(model, CalibratedNoise):
        return calibrated_noise(clean, model, generator)
    m = level
    scale = model.k_p / m
    x = clean.clamp_min(0)
    noisy = torch.poisson(x * scale, generator=generator) / scale
    gauss = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    noisy = (noisy + gauss * (model.k_g / 255.0) * m).clamp(0, 1)
    noisy = torch.poisson(noisy * model.lambda_p, generator=generator) / model.lambda_p
    return noisy.clamp(0, 1)


def calibrated_noise(clean: torch.Tensor, model: CalibratedNoise,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """One noisy sample following a measured Poisson-Gaussian model (``auto``).

    The variance factor r is drawn log-uniformly from ``model.factor``; the sample has
    variance r * (gain * x + offset): Poisson counts of x / (r * gain) scaled back, plus
    Gaussian noise of variance r * offset when the offset is positive; a negative
    offset is a dark level x0 = -offset / gain below which pixels get no Poisson noise.
    With a ``model.ceiling`` c, the Poisson part's variance is gain * max(r * min(x, c), x)
    instead (each pixel's counts scaled to it): r times the measured one up to c, never
    less than the measured one. Clamped to [0, 1].
    """
    lo, hi = model.factor
    r = lo
    if hi > lo:
        u = float(torch.rand((), generator=generator, device=clean.device))
        r = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
    x = clean.clamp_min(0)
    if model.gain > 0:
        x0 = model.dark_level
        signal = (x - x0).clamp_min(0)
        a: torch.Tensor | float = r * model.gain  # variance over mean of the counts
        if model.ceiling is not None:
            c = max(model.ceiling - x0, 0.0)
            held = torch.maximum(r * signal.clamp_max(c), signal) / signal.clamp_min(1e-12)
            a = model.gain * torch.where(signal > c, held, torch.full_like(signal, r))
        photons = torch.poisson(signal / a, generator=generator)
        noisy = torch.minimum(x, torch.full_like(x, x0)) + photons * a
    else:
        noisy = x
    if model.offset > 0:
        sd = math.sqrt(r * model.offset)
        noisy = noisy + sd * torch.randn(x.shape, generator=generator, device=x.device,
                                         dtype=x.dtype)
    return noisy.clamp(0, 1)
