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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
