"""Pixel-type rules shared by every reader, writer and the tiled inference (numpy only)."""

from __future__ import annotations

import numpy as np

from .errors import FM2SError

#: the smallest plane side fm2s-tile denoises (in pixels)
MIN_SIDE = 8


def check_pixel_type(dtype: np.dtype, where: str) -> np.dtype:
    """Refuse pixel types that are not integers or floats (complex, bool, structured)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer)
                                 or np.issubdtype(dtype, np.floating)):
        raise FM2SError(f"pixel type {dtype} of {where} is not supported: use integers or floats")
    return dtype


def check_plane_shape(shape: tuple[int, ...], where: str) -> None:
    """Refuse planes smaller than :data:`MIN_SIDE` on a side."""
    h, w = shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise FM2SError(f"planes of {where} are {h} x {w} pixels: they must be at least "
                        f"{MIN_SIDE} x {MIN_SIDE}")


def cast_like(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast a float result to ``dtype``: rounded and clipped for integer types."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(image), info.min, info.max).astype(dtype)
    return np.asarray(image).astype(dtype)
