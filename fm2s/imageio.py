"""Reading and writing single-channel 2D images: PNG (Pillow) and TIFF (tifffile)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from .errors import FM2SError

SUFFIXES = {".png": "png", ".tif": "tiff", ".tiff": "tiff"}
DTYPES = (np.uint8, np.uint16, np.float32)
MIN_SIDE = 8


def image_format(path: str | Path) -> str:
    """``png`` or ``tiff`` from the file name; :class:`FM2SError` for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise FM2SError(f"unsupported file type {suffix or '(none)'!r} of '{path}': "
                        "use a .png, .tif or .tiff image")
    return SUFFIXES[suffix]


def _check(image: np.ndarray, path: str | Path) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        raise FM2SError(f"'{path}' is an RGB image ({image.shape[-1]} channels): fm2s-tile "
                        "denoises single-channel images; save each channel as a grayscale image")
    squeezed = np.squeeze(image)
    if squeezed.ndim != 2:
        raise FM2SError(f"'{path}' holds an array of shape {image.shape}, not one 2D plane: "
                        "pass a single-channel 2D image")
    if min(squeezed.shape) < MIN_SIDE:
        raise FM2SError(f"'{path}' is {squeezed.shape[0]} x {squeezed.shape[1]} pixels: images "
                        f"must be at least {MIN_SIDE} x {MIN_SIDE}")
    if squeezed.dtype not in DTYPES:
        if squeezed.dtype == np.float64:
            squeezed = squeezed.astype(np.float32)
        else:
            raise FM2SError(f"'{path}' has pixel type {squeezed.dtype}: "
                            "use uint8, uint16 or float32")
    if squeezed.dtype == np.float32 and not np.all(np.isfinite(squeezed)):
        raise FM2SError(f"'{path}' holds NaN or infinite pixels: replace them before denoising")
    return squeezed


def read_image(path: str | Path) -> np.ndarray:
    """Read a single-channel PNG or TIFF image as a 2D array (uint8, uint16 or float32).

    Raises
    ------
    FM2SError
        Missing, unreadable or truncated file, unsupported type, RGB, too small.
    """
    path = Path(path)
    fmt = image_format(path)
    if not path.exists():
        raise FM2SError(f"input file '{path}' does not exist: check the path")
    if not path.is_file():
        raise FM2SError(f"'{path}' is not a file: pass an image file")
    try:
        if fmt == "png":
            with Image.open(path) as im:
                im.load()
                if im.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                    bands = len(im.getbands())
                    if im.mode == "P" or bands > 1:
                        raise FM2SError(
                            f"'{path}' is a {im.mode} (colour) image: fm2s-tile denoises "
                            "single-channel images; save it as grayscale")
                image = np.asarray(im)
                if im.mode == "I" and image.min() >= 0 and image.max() <= 65535:
                    image = image.astype(np.uint16)
                elif im.mode == "1":
                    image = image.astype(np.uint8) * 255
        else:
            image = tifffile.imread(path)
    except FM2SError:
        raise
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError,
            tifffile.TiffFileError) as exc:
        raise FM2SError(f"cannot read '{path}' as {fmt.upper()} ({exc}): the file is damaged, "
                        "truncated or not an image") from None
    return _check(np.asarray(image), path)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write a 2D image as PNG or TIFF, atomically (a temporary file, then a rename).

    A failed write leaves nothing at ``path``.
    """
    path = Path(path)
    fmt = image_format(path)
    if fmt == "png" and image.dtype not in (np.uint8, np.uint16):
        raise FM2SError(f"PNG cannot hold {image.dtype} pixels: write a .tif file instead")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        if fmt == "png":
            Image.fromarray(image).save(tmp, format="PNG")
        else:
            tifffile.imwrite(tmp, image, photometric="minisblack")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
