"""File-level jobs behind the command line: read, check, denoise, write."""

from __future__ import annotations

import time
from pathlib import Path

import tifffile
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .api import TrainedModel, apply, train
from .errors import FM2SError
from .imageio import image_format, read_image, write_image
from .runtime import OnnxDenoiser


def default_output(image: Path) -> Path:
    """``cells.tif`` -> ``cells.fm2s.tif``."""
    return image.with_name(f"{image.stem}.fm2s{image.suffix}")


def _check_new_file(path: Path, overwrite: bool, what: str, folder: bool = False) -> None:
    """Refuse a path that exists (without ``overwrite``) or whose folder does not exist.

    ``folder``: the path names a folder to create (an OME-Zarr image), not a file.
    """
    if path.is_dir() and not folder:
        raise FM2SError(f"{what} '{path}' is a folder: give a file name")
    if path.exists() and not overwrite:
        raise FM2SError(f"{what} '{path}' exists: remove it, choose another path "
                        "or pass --overwrite")
    if not path.parent.is_dir():
        raise FM2SError(f"folder '{path.parent}' of the {what} does not exist: create it first")


def _check_output(image: Path, output: Path | None, overwrite: bool) -> Path:
    output = default_output(image) if output is None else Path(output)
    if image_format(output) != image_format(image):
        raise FM2SError(f"output '{output}' must be of the input's format "
                        f"({image_format(image).upper()}): change its extension")
    if output.exists() and image.exists() and output.resolve() == image.resolve():
        raise FM2SError(f"output '{output}' is the input itself: choose another output path")
    _check_new_file(output, overwrite, "output")
    return output


def _check_model_path(path: Path | None, overwrite: bool) -> None:
    if path is None:
        return
    if path.suffix.lower() != ".onnx":
        raise FM2SError(f"--save-model path '{path}' should end in .onnx")
    _check_new_file(path, overwrite, "model")


class _Progress:
    """A training progress bar on stderr (silent with ``quiet`` or when not a terminal)."""

    def __init__(self, quiet: bool, label: str) -> None:
        console = Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("steps"), TimeRemainingColumn(), console=console,
                            transient=True, disable=quiet or not console.is_terminal)
        self.label, self.task = label, None

    def __call__(self, step: int, total: int) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=total)
        self.bar.update(self.task, completed=step)

    def close(self) -> None:
        self.bar.stop()


def train_and_apply_file(image: Path, output: Path | None = None, recipe: str = "fast",
                         microscope: str = "confocal", device: str = "auto", seed: int = 0,
                         save_model: Path | None = None, overwrite: bool = False,
                         quiet: bool = False) -> str:
    """Train on an image file, write the denoised image (and the model); return a summary."""
    start = time.perf_counter()
    image = Path(image)
    output = _check_output(image, output, overwrite)
    _check_model_path(save_model, overwrite)
    pixels = read_image(image)
    progress = _Progress(quiet, f"training {recipe}/{microscope}")
    try:
        model: TrainedModel = train(pixels, recipe, microscope, seed=seed, device=device,
                                    progress=progress)
    finally:
        progress.close()
    t_apply = time.perf_counter()
    runtime = model.runtime()
    denoised = apply(runtime, pixels)
    write_image(output, denoised)
    if save_model is not None:
        model.save(save_model)
    elapsed = time.perf_counter() - start
    return (f"{image} -> {output}: {pixels.shape[1]}x{pixels.shape[0]} {pixels.dtype}, "
            f"recipe {recipe}/{model.config.microscope}, {model.config.total_steps} steps on "
            f"{model.device} in {model.seconds:.1f} s, applied on {runtime.provider} in "
            f"{time.perf_counter() - t_apply:.1f} s; total {elapsed:.1f} s, seed {seed}"
            + (f"; model saved to {save_model}" if save_model is not None else ""))


def apply_file(model: Path, image: Path, output: Path | None = None, provider: str = "auto",
               overwrite: bool = False) -> str:
    """Denoise an image file with a saved ONNX model; return a summary."""
    start = time.perf_counter()
    image = Path(image)
    output = _check_output(image, output, overwrite)
    runtime = OnnxDenoiser(model, provider=provider)
    pixels = read_image(image)
    write_image(output, apply(runtime, pixels))
    return (f"{image} -> {output}: {pixels.shape[1]}x{pixels.shape[0]} {pixels.dtype}, model "
            f"{model} ({runtime.metadata.get('recipe')}/{runtime.metadata.get('preset')}) on "
            f"{runtime.provider} in {time.perf_counter() - start:.1f} s")


def is_volume(source: str | Path, axes: str | None = None) -> bool:
    """Whether ``source`` goes to the volume pipeline (zarr, URL, TIFF stack) rather than the
    2D one (PNG, single-plane TIFF; anything unreadable gets the 2D path's clear errors)."""
    from .volume import TIFF_SUFFIXES, is_url

    source = str(source)
    path = Path(source)
    if axes or is_url(source) or path.is_dir() or source.rstrip("/").lower().endswith(".zarr"):
        return True
    if path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
        except (OSError, ValueError, IndexError, tifffile.TiffFileError):
            return False
        return sum(n > 1 for n in shape) > 2 and shape[-1] not in (3, 4)
    return False


def train_and_apply_any(source: str, output: Path | None = None, **options) -> str:
    """``train-and-apply`` on any input: 2D images here, volumes in :mod:`fm2s.volume_jobs`.

    Volume-only options (``train_planes``, ``tile``, ``workers``, ...) are ignored for 2D images.
    """
    from . import volume_jobs

    if is_volume(source, options.get("axes")):
        return volume_jobs.train_and_apply_volume(source, output, **options)
    keys = ("recipe", "microscope", "device", "seed", "save_model", "overwrite", "quiet")
    return train_and_apply_file(Path(source), output, **{k: options[k] for k in keys
                                                          if k in options})


def apply_any(model: str, source: str, output: Path | None = None, **options) -> str:
    """``apply`` on any input (see :func:`train_and_apply_any`)."""
    from . import volume_jobs

    if is_volume(source, options.get("axes")):
        return volume_jobs.apply_volume(model, source, output, **options)
    keys = ("provider", "overwrite")
    return apply_file(Path(model), Path(source), output, **{k: options[k] for k in keys
                                                            if k in options})


def info_any(source: str, axes: str | None = None) -> str:
    """What ``fm2s-tile info`` prints."""
    from . import volume_jobs

    if is_volume(source, axes):
        return volume_jobs.info(source, axes)
    pixels = read_image(source)
    return (f"{source}: 2D {image_format(source).upper()} image, {pixels.shape[1]} x "
            f"{pixels.shape[0]} pixels, {pixels.dtype}\n  train-and-apply: one model; output "
            f"{default_output(Path(source))}")
