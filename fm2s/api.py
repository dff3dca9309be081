"""The Python API on arrays: train on an array, keep the model, apply it, or both.

:func:`apply` and :class:`~fm2s.runtime.OnnxDenoiser` need onnxruntime alone; torch is
imported when :func:`train` (or :func:`denoise`) is called.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np

from .errors import FM2SError
from .recipes import DEFAULT_MICROSCOPE, DEFAULT_RECIPE, DEFAULT_TILE, config_for
from .runtime import OnnxDenoiser
from .tiling import denoise_array, plane_maps, plane_stats

if TYPE_CHECKING:
    from .model import TrainedModel


def train(image: np.ndarray, recipe: str = DEFAULT_RECIPE, microscope: str = DEFAULT_MICROSCOPE,
          seed: int = 0, device: str = "auto",
          progress: Callable[[int, int], None] | None = None, **overrides) -> TrainedModel:
    """Train FM2S on one noisy 2D image, or on a (K, H, W) stack of planes of one channel.

    Parameters
    ----------
    image
        The noisy image or planes, raw pixel values (integers or floats). One
        normalization is fitted to all planes; the training cost does not depend on K
        (a stack, whose model serves several planes, trains on twice the samples of a
        single image with the default recipe).
    recipe, microscope
        Recipe (``fast``, ``paper``, ``v2``) and noise preset.
    seed
        Seed: the same seed on the same machine and device gives the same model.
    device
        ``auto``, ``cpu`` or ``cuda`` (training device).
    progress
        Optional ``progress(step, total)`` callback.
    **overrides
        Schedule fields of :class:`~fm2s.recipes.TrainConfig` to change.

    Returns
    -------
    TrainedModel
    """
    try:
        from .model import train_model
    except ImportError as exc:
        raise FM2SError(f"training needs torch, which cannot be imported here ({exc}): "
                        "install torch, or apply a saved model") from None
    image = np.asarray(image)
    planes = image.shape[0] if image.ndim == 3 else 1
    config = config_for(recipe, microscope, seed, planes, **overrides)
    return train_model(image, config, device, progress)


def apply(model: TrainedModel | OnnxDenoiser | str | Path | bytes, image: np.ndarray,
          provider: str | None = None, dtype: np.dtype | str | None = None,
          tile: int = DEFAULT_TILE) -> np.ndarray:
    """Denoise a 2D image or an (N, H, W) stack with a trained or a saved model.

    The planes are denoised tile by tile (bounded memory, the same result as the whole
    plane); a plane outside the model's range is mapped into it and back
    (:func:`fm2s.normalize.range_map`).

    Parameters
    ----------
    model
        A :class:`~fm2s.model.TrainedModel`, an :class:`~fm2s.runtime.OnnxDenoiser`,
        serialized ONNX bytes or the path of a saved ``.onnx`` model.
    image
        Raw pixel values.
    provider
        onnxruntime provider: ``auto``, ``cpu`` or ``cuda``; default: the CPU for a
        model trained on the CPU, else ``auto``.
    dtype
        Output pixel type; default: the input's (integers rounded and clipped).
    tile
        Tile side of one onnxruntime call.

    Returns
    -------
    numpy.ndarray
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise FM2SError(f"expected a 2D image or an (N, H, W) stack, got shape {image.shape}")
    if hasattr(model, "runtime"):  # a TrainedModel (no torch import needed to tell)
        model = model.runtime(provider)
        provider = provider or ("cpu" if model.provider.startswith("CPU") else "auto")
    elif not isinstance(model, OnnxDenoiser):
        model = OnnxDenoiser(model, provider=provider or "auto")
    provider = provider or "auto"
    data = da.from_array(image, chunks=(1,) * (image.ndim - 2) + image.shape[-2:])
    stats = plane_stats(data).compute(scheduler="threads")
    if not np.all(np.isfinite(stats)):  # as train() and the jobs: NaN would spread
        raise FM2SError("the image holds NaN or infinite pixels: replace them before "
                        "denoising")
    maps = plane_maps(stats, [model.reference])
    out = denoise_array(data, [model.data], model.halo, tile, None,
                        np.dtype(dtype) if dtype is not None else image.dtype, provider,
                        maps=maps)
    return out.compute(scheduler="threads")


def denoise(image: np.ndarray, recipe: str = DEFAULT_RECIPE,
            microscope: str = DEFAULT_MICROSCOPE, seed: int = 0, device: str = "auto",
            **overrides) -> np.ndarray:
    """Train on ``image`` and return it denoised, in its own pixel type.

    See :func:`train` for the parameters.
    """
    model = train(image, recipe, microscope, seed=seed, device=device, **overrides)
    return apply(model, image)
