"""The Python API: train on an array, keep the model, export it, apply it.

The command line only wraps these functions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from . import __version__
from .errors import FM2SError
from .export import Denoiser, to_onnx
from .imageio import MIN_SIDE
from .network import FM2SNet
from .normalize import Normalization, fit_normalization
from .recipes import DEFAULT_MICROSCOPE, DEFAULT_RECIPE, TrainConfig, make_config
from .runtime import OnnxDenoiser
from .train import resolve_device, train_network


@dataclass
class TrainedModel:
    """A trained FM2S network with what it needs to run on raw pixel values.

    Attributes
    ----------
    net
        The trained network (CPU).
    normalization
        Raw values -> the recipe's [0, 1] scale.
    config
        The training config (recipe, preset, seed).
    seconds
        Wall time of the training.
    device
        Device it was trained on.
    """

    net: FM2SNet
    normalization: Normalization
    config: TrainConfig
    seconds: float
    device: str

    @property
    def halo(self) -> int:
        """Receptive-field radius in pixels."""
        return self.net.halo

    def metadata(self) -> dict[str, str]:
        """Properties written into the exported ONNX model."""
        return {
            "fm2s_version": __version__,
            "recipe": self.config.recipe,
            "preset": self.config.microscope,
            "halo": str(self.halo),
            "normalization": json.dumps({"offset": self.normalization.offset,
                                         "scale": self.normalization.scale,
                                         "formula": self.normalization.describe()}),
            "flips": str(self.config.flips).lower(),
            "seed": str(self.config.seed),
            "config": json.dumps(asdict(self.config)),
            "input": "float32 N x 1 x H x W, raw pixel values",
            "output": "float32 N x 1 x H x W, denoised, raw pixel units",
        }

    def to_onnx(self) -> onnx.ModelProto:
        """The whole inference as one ONNX model (dynamic N, H, W)."""
        denoiser = Denoiser(self.net, self.normalization, flips=self.config.flips)
        return to_onnx(denoiser, self.metadata())

    def save(self, path: str | Path) -> Path:
        """Write the ONNX model to ``path`` (atomically) and return the path."""
        path = Path(path)
        if path.suffix.lower() != ".onnx":
            raise FM2SError(f"model path '{path}' should end in .onnx")
        if not path.parent.exists():
            raise FM2SError(f"folder '{path.parent}' of the model path does not exist: create it")
        tmp = path.with_name(f".{path.name}.part")
        try:
            onnx.save(self.to_onnx(), tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def runtime(self, provider: str | None = None) -> OnnxDenoiser:
        """An onnxruntime session of this model.

        ``provider`` defaults to the CPU for a model trained on the CPU, else ``auto``.
        """
        if provider is None:
            provider = "cpu" if self.device == "cpu" else "auto"
        return OnnxDenoiser(self.to_onnx().SerializeToString(), provider=provider)


def check_image(image: np.ndarray, stack: bool = False) -> np.ndarray:
    """Validate a 2D single-channel image (or, with ``stack``, a (K, H, W) stack of planes)."""
    image = np.asarray(image)
    if image.ndim != 2 and not (stack and image.ndim == 3 and image.shape[0] > 0):
        what = "a 2D image or a (K, H, W) stack of planes" if stack else "a 2D single-channel image"
        raise FM2SError(f"expected {what}, got shape {image.shape}")
    if min(image.shape[-2:]) < MIN_SIDE:
        raise FM2SError(f"image is {image.shape[-2]} x {image.shape[-1]} pixels: it must be at "
                        f"least {MIN_SIDE} x {MIN_SIDE}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise FM2SError(f"pixel type {image.dtype} is not supported: use integers or floats")
    if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
        raise FM2SError("image holds NaN or infinite pixels: replace them before denoising")
    return image


def train(image: np.ndarray, recipe: str = DEFAULT_RECIPE, microscope: str = DEFAULT_MICROSCOPE,
          seed: int = 0, device: str = "auto",
          progress: Callable[[int, int], None] | None = None, **overrides) -> TrainedModel:
    """Train FM2S on one noisy 2D image, or on a (K, H, W) stack of planes of one channel.

    Parameters
    ----------
    image
        The noisy image or planes, raw pixel values (uint8, uint16 or float). One
        normalization is fitted to all planes; the training cost does not depend on K.
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
    image = check_image(image, stack=True)
    try:
        config = make_config(recipe, microscope, seed=seed, **overrides)
        torch_device = resolve_device(device)
    except (ValueError, TypeError) as exc:
        raise FM2SError(str(exc)) from None
    normalization = fit_normalization(image, config.normalization)
    start = time.perf_counter()
    net = train_network(normalization.forward(image), config, torch_device, progress)
    return TrainedModel(net, normalization, config, time.perf_counter() - start, str(torch_device))


def apply(model: TrainedModel | OnnxDenoiser | str | Path, image: np.ndarray,
          provider: str | None = None, dtype: np.dtype | str | None = None) -> np.ndarray:
    """Denoise a 2D image with a trained model or a saved ONNX model.

    Parameters
    ----------
    model
        A :class:`TrainedModel`, an :class:`~fm2s.runtime.OnnxDenoiser`, or the
        path of a saved ``.onnx`` model.
    image
        The image, raw pixel values.
    provider
        onnxruntime provider: ``auto``, ``cpu`` or ``cuda``; default: the CPU for a
        model trained on the CPU, else ``auto``.
    dtype
        Output pixel type; default: the input's (integers rounded and clipped).

    Returns
    -------
    numpy.ndarray
    """
    image = check_image(image)
    if isinstance(model, TrainedModel):
        model = model.runtime(provider)
    elif not isinstance(model, OnnxDenoiser):
        model = OnnxDenoiser(model, provider=provider or "auto")
    out = model(image)
    return cast_like(out, np.dtype(dtype) if dtype is not None else image.dtype)


def denoise(image: np.ndarray, recipe: str = DEFAULT_RECIPE,
            microscope: str = DEFAULT_MICROSCOPE, seed: int = 0, device: str = "auto",
            **overrides) -> np.ndarray:
    """Train on ``image`` and return it denoised, in its own pixel type.

    See :func:`train` for the parameters.
    """
    model = train(image, recipe, microscope, seed=seed, device=device, **overrides)
    return apply(model, image)


def cast_like(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast a float result to ``dtype``: rounded and clipped for integer types."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(image), info.min, info.max).astype(dtype)
    return image.astype(dtype)
