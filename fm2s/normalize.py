"""Intensity normalization: raw pixel values <-> the [0, 1] scale of the recipes.

The published constants assume an 8-bit image divided by 255. Two modes:

- ``dtype`` (the published recipes): 8-bit images are divided by 255, exactly as
  published; any other image (16-bit, float) is mapped affinely, its minimum to 0
  and its maximum to 1, as it would look converted to 8 bits with a full display
  range.
- ``minmax`` (the default recipe): every image, 8-bit included, is mapped so.

The min-max map is affine, so an offset or gain on the raw data changes nothing in
the denoised result (in the data's own units); with ``minmax`` an 8-bit image and
its 16-bit versions even train identically.

Planes meet a model through :func:`range_map`: a plane whose background lies within the
range the model was trained on goes in as it is, with the model's output clamp widened to
the plane's own range; a plane scaled as a whole, or data of another range, is mapped
affinely into the model's range (its 1st and 99th percentiles onto the training planes')
and back after the network. No voxel is clipped at the training range and no plane comes
out flattened (see benchmarks/bright_plane.py for the measurements behind this rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: percentiles of a plane that :func:`range_map` looks at, and the most pixels they are
#: taken from (a regular subsample: the same pixels however the plane is chunked)
PERCENTILES = (1.0, 99.0)
STATS_PIXELS = 1 << 20


@dataclass(frozen=True)
class Normalization:
    """``normalized = (raw - offset) / scale``."""

    offset: float
    scale: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.offset) or not np.isfinite(self.scale) or self.scale <= 0:
            raise ValueError("normalization needs a finite offset and a positive scale")

    def forward(self, raw: np.ndarray) -> np.ndarray:
        """Raw values -> normalized float32."""
        return ((np.asarray(raw, dtype=np.float64) - self.offset) / self.scale).astype(np.float32)

    def inverse(self, normalized: np.ndarray) -> np.ndarray:
        """Normalized values -> raw units (float32)."""
        out = np.asarray(normalized, dtype=np.float64) * self.scale + self.offset
        return out.astype(np.float32)

    def describe(self) -> str:
        """One-line text for metadata and logs."""
        return f"(raw - {self.offset:.9g}) / {self.scale:.9g}"


MODES = ("dtype", "minmax")


def fit_normalization(image: np.ndarray, mode: str = "dtype") -> Normalization:
    """Choose the normalization of an image (or of the planes a model trains on).

    Parameters
    ----------
    image
        Raw pixel values, any shape.
    mode
        ``dtype`` or ``minmax`` (see the module's text).

    Returns
    -------
    Normalization
        ``uint8`` with ``dtype``: offset 0, scale 255. Otherwise: offset = min,
        scale = max - min (scale 1 for a constant image).
    """
    if mode not in MODES:
        raise ValueError(f"unknown normalization {mode!r}: choose dtype or minmax")
    image = np.asarray(image)
    if image.dtype == np.uint8 and mode == "dtype":
        return Normalization(0.0, 255.0)
    lo = float(np.min(image))
    hi = float(np.max(image))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("image holds NaN or infinite values: replace them before denoising")
    return Normalization(lo, hi - lo if hi > lo else 1.0)


def subsample_step(shape: tuple[int, ...]) -> int:
    """Stride in Y and X of the regular subsample a plane's percentiles are taken from."""
    return max(1, math.ceil(math.sqrt(shape[-2] * shape[-1] / STATS_PIXELS)))


def percentiles(sample: np.ndarray) -> np.ndarray:
    """The :data:`PERCENTILES` of ``sample`` (any shape, all values pooled); NaN where
    they fall between infinities (no warning: the caller refuses non-finite statistics)."""
    with np.errstate(invalid="ignore"):
        return np.percentile(np.asarray(sample, np.float64), PERCENTILES)


def stack_stats(planes: np.ndarray) -> np.ndarray:
    """``[min, max, p1, p99]`` of a (..., H, W) array of planes, pooled (float64).

    The percentiles come from each plane's regular subsample (:func:`subsample_step`).
    """
    planes = np.asarray(planes)
    s = subsample_step(planes.shape)
    return np.concatenate([[float(np.min(planes)), float(np.max(planes))],
                           percentiles(planes[..., ::s, ::s])])


def range_map(plane: np.ndarray, reference: np.ndarray) -> tuple[float, float, float, float]:
    """How a plane meets a model: ``x -> a * x + b`` into the network, and the clamp.

    Parameters
    ----------
    plane
        :func:`stack_stats` of the plane.
    reference
        The model's range ``[low, high]`` (its normalization's: the default clamp) and
        the p1 and p99 of the planes it was trained on.

    Returns
    -------
    (a, b, low, high)
        ``a = 1, b = 0`` when the plane's background (its p1) lies within the model's
        range: it is denoised as it is, however bright its structures. Otherwise (data of
        another range, a plane scaled as a whole) the map that puts the plane's p1 and p99
        on the training planes' p1 and p99 (a constant plane: the smallest shift into the
        range). ``[low, high]``: the output clamp in the mapped units, the model's range
        widened to the (mapped) plane's [min, max], so that no voxel is clipped.
    """
    lo, hi, qlo, qhi = (float(v) for v in plane)
    rlo, rhi, rqlo, rqhi = (float(v) for v in reference)
    if rlo <= qlo <= rhi:
        a, b = 1.0, 0.0
    elif qhi > qlo and rqhi > rqlo:
        a = (rqhi - rqlo) / (qhi - qlo)
        b = rqlo - a * qlo
    else:
        a, b = 1.0, min(max(0.0, rlo - lo), rhi - hi)
    return a, b, min(rlo, a * lo + b), max(rhi, a * hi + b)
