"""The Python API on arrays: train on an array, keep the model, apply it, or both.

:func:`apply` and :class:`~fm2s.runtime.OnnxDenoiser` need onnxruntime alone; torch is
imported when :func:`train` (or :func:`denoise`) is called.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np

from .errors import FM2SError, ParameterError
from .jobs import model_paths, training_planes
from .package import build_package, is_package, package_name
from .readers import check_axes
from .recipes import (
    DEFAULT_MICROSCOPE,
    DEFAULT_RECIPE,
    DEFAULT_TILE,
    DEFAULT_TRAIN_PLANES,
    config_for,
)
from .runs import write_atomic
from .runtime import OnnxDenoiser
from .tiling import denoise_array, plane_maps, plane_stats

if TYPE_CHECKING:
    from .model import TrainedModel


def train(image: np.ndarray, recipe: str = DEFAULT_RECIPE, microscope: str = DEFAULT_MICROSCOPE,
          seed: int = 0, device: str = "auto",
          progress: Callable[[int, int], None] | None = None, *, serves: int | None = None,
          **overrides) -> TrainedModel:
    """Train FM2S on one noisy 2D image, or on a (K, H, W) stack of planes of one channel.

    Parameters
    ----------
    image
        The noisy image or planes, raw pixel values (integers or floats). One
        normalization is fitted to all planes; the training cost does not depend on K
        (a stack, whose model serves several planes, trains on twice the samples of a
        single image with the default recipe).
    recipe, microscope
        Recipe (``fast``, ``paper``, ``v2``) and noise model: ``auto`` (syntheses compared
        on the image, :mod:`fm2s.selection`), ``measured`` (derived from the noise measured
        on the image, :mod:`fm2s.calibrate`) or a preset name
        (:data:`fm2s.recipes.MICROSCOPES`).
    seed
        Seed: the same seed on the same machine and device, with the same number of CPU
        threads, gives the same model.
    device
        ``auto``, ``cpu`` or ``cuda`` (training device).
    progress
        Optional ``progress(step, total)`` callback.
    serves
        Number of planes the model will denoise (default: the planes given). A model that
        serves more than one plane trains on the stack schedule (see
        :data:`fm2s.recipes.STACK_SAMPLES_FACTOR`), as :func:`denoise` and the jobs do.
    **overrides
        Schedule fields of :class:`~fm2s.recipes.TrainConfig` to change (with ``auto``,
        low white noise scales ``crop``, ``samples`` and ``steps_per_sample`` further:
        :data:`fm2s.calibrate.LOW_NOISE_SCHEDULE`; the model's config holds what ran).

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
    if serves is not None and serves < 1:
        raise ParameterError("serves", serves, "give at least 1")
    config = config_for(recipe, microscope, seed, serves or planes, **overrides)
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


def axes_for(ndim: int) -> list[str]:
    """The axes an array of ``ndim`` dimensions can be denoised with, the default first.

    Every ordered subset of ``tczyx`` of that length that ends in ``yx``; the default is
    ``yx``, ``zyx``, ``czyx`` or ``tczyx`` (2 to 5 dimensions).

    Raises
    ------
    FM2SError
        For fewer than 2 or more than 5 dimensions.
    """
    if not 2 <= ndim <= 5:
        raise FM2SError(f"expected an image of 2 to 5 dimensions (axes from t, c, z, y, x), got "
                        f"{ndim}")
    lead = ["".join(a) for a in itertools.combinations("tcz", ndim - 2)]
    default = "tcz"[-(ndim - 2):] if ndim > 2 else ""
    return [a + "yx" for a in sorted(lead, key=lambda a: a != default)]


def _plane_index(lead: tuple[int, ...], c: int | None, channel: int, plane: int) -> tuple:
    """The index of plane ``plane`` (C order over the non-channel leading axes) of
    ``channel``, in an array whose leading (non-YX) shape is ``lead``."""
    others = [i for i in range(len(lead)) if i != c]
    index = [channel] * len(lead)
    for axis, i in zip(others, np.unravel_index(plane, tuple(lead[a] for a in others))):
        index[axis] = int(i)
    return tuple(index)


def denoise(image: np.ndarray, recipe: str = DEFAULT_RECIPE,
            microscope: str = DEFAULT_MICROSCOPE, seed: int = 0, device: str = "auto", *,
            axes: str | None = None, train_planes: int = DEFAULT_TRAIN_PLANES,
            dtype: np.dtype | str | None = None, save_model: str | Path | None = None,
            overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
            **overrides) -> np.ndarray:
    """Train on ``image`` and return it denoised: a 2D image, or a stack, one model per channel.

    A 2D image trains one model on itself. A stack trains one model per channel on
    ``train_planes`` of the channel's t x z planes, spread evenly over them, and denoises
    every plane with its channel's model: the rule of ``fm2s-tile train-and-apply``
    (:func:`fm2s.jobs.training_planes`, :func:`train`, :func:`apply`). The input is only
    read; numpy, dask and zarr arrays are read one plane at a time.

    Parameters
    ----------
    image
        Raw pixel values (integers or floats), 2 to 5 dimensions ending in Y, X.
    recipe, microscope, seed, device
        As for :func:`train`.
    axes
        Axis letters, an ordered subset of ``tczyx`` ending in ``yx`` (e.g. ``zyx``, ``tyx``,
        ``czyx``); default: :func:`axes_for` (``yx``, ``zyx``, ``czyx``, ``tczyx``).
    train_planes
        Planes per channel to train on (all of them when the channel has fewer).
    dtype
        Output pixel type; default: the input's (integers rounded and clipped), so the
        result has the input's shape and type.
    save_model
        If given, the trained models are written there when all is done: this path for
        one channel, ``<stem>_c<k>.onnx`` for channel k of several (as ``--save-model``;
        ``.zip``: bioimage.io model packages, ``<stem>_c<k>.zip``).
        Checked before training; an existing file is refused unless ``overwrite``.
    overwrite
        Replace existing model files.
    progress
        Optional ``progress(done, total)`` callback, called from this thread; ``done``
        counts the training steps and the denoised planes of all channels. An exception it
        raises (e.g. to cancel) stops the work and propagates; then nothing is saved.
    **overrides
        Schedule fields of :class:`~fm2s.recipes.TrainConfig` to change (with ``auto``,
        low white noise scales ``crop``, ``samples`` and ``steps_per_sample`` further:
        :data:`fm2s.calibrate.LOW_NOISE_SCHEDULE`; the model's config holds what ran).

    Returns
    -------
    numpy.ndarray
        The denoised image, same shape as ``image``.

    Raises
    ------
    FM2SError
        Bad axes, options or pixels (:class:`~fm2s.errors.ParameterError` for a bad
        parameter).
    """
    if not (hasattr(image, "shape") and hasattr(image, "dtype")):
        image = np.asarray(image)
    shape = tuple(image.shape)
    axes = check_axes(axes if axes else axes_for(len(shape))[0], len(shape), "the image")
    out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(image.dtype)
    lead = shape[:-2]
    c = axes.index("c") if "c" in axes else None
    channels = lead[c] if c is not None else 1
    planes = math.prod(lead) // channels
    paths = model_paths(save_model, channels, overwrite)
    chosen = training_planes(planes, train_planes)
    steps = config_for(recipe, microscope, seed, planes, **overrides).total_steps
    total = channels * (steps + planes)
    out = np.empty(shape, out_dtype)
    models = []  # (model, its training planes)
    for channel in range(channels):
        start = channel * (steps + planes)  # work done before this channel

        def report(step: int, trained: int, start: int = start) -> None:
            # training reports its own total (auto may train longer on low noise: the
            # model's config): mapped onto this channel's share of ``total``
            if progress is not None:
                progress(start + step * steps // max(trained, 1), total)

        stack = np.stack([np.asarray(image[_plane_index(lead, c, channel, p)]) for p in chosen])
        model = train(stack if len(stack) > 1 else stack[0], recipe, microscope, seed, device,
                      report, serves=planes, **overrides)
        models.append((model, stack))
        runtime = model.runtime()
        provider = "cpu" if runtime.provider.startswith("CPU") else "auto"
        for p in range(planes):
            index = _plane_index(lead, c, channel, p)
            out[index] = apply(runtime, np.asarray(image[index]), provider, out_dtype)
            if progress is not None:
                progress(start + steps + p + 1, total)
    for channel, ((model, stack), path) in enumerate(zip(models, paths)):
        if is_package(path):  # a bioimage.io package: needs the planes for its test tensors
            write_atomic(path, build_package(
                model, stack, name=package_name(path.stem), training_planes=chosen,
                channel=channel if channels > 1 else None))
        else:
            model.save(path)
    return out
