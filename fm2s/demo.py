"""The built-in sample data and the demo job: a synthetic noisy timelapse z-stack with its
ground truth, denoised by ``train-and-apply``, scored against the truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr

from ._version import __version__
from .errors import FM2SError
from .formats import V05
from .jobs import RunReport, train_and_apply
from .progress import ProgressDisplay
from .readers import Image
from .runs import remove
from .sample import psnr, synthetic_stack
from .writers import OutputImage, downsample


def write_sample(path: str | Path, seed: int = 0,
                 shape: tuple[int, ...] = (2, 2, 4, 256, 320),
                 overwrite: bool = False) -> tuple[Path, Path]:
    """Write a synthetic noisy TCZYX uint16 OME-Zarr and its ground truth beside it.

    Returns the two paths (``OUT.ome.zarr`` and ``OUT.truth.ome.zarr``).
    """
    path = Path(path).absolute()
    lower = path.name.lower()
    if not lower.endswith(".zarr"):
        raise FM2SError(f"sample path '{path}' should end in .ome.zarr")
    stem = path.name[: -len(".ome.zarr" if lower.endswith(".ome.zarr") else ".zarr")]
    truth_path = path.with_name(f"{stem}.truth.ome.zarr")
    for p in (path, truth_path):
        if p.exists() and not overwrite:
            raise FM2SError(f"'{p}' exists: remove it, choose another path or pass --overwrite")
    if not path.parent.is_dir():
        raise FM2SError(f"folder '{path.parent}' does not exist: create it first")
    noisy, truth = synthetic_stack(shape, np.random.default_rng(seed))
    h, w = shape[-2:]
    ms = {"name": stem, "axes": [
        {"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [2.0, 1.0, 0.5, 0.1 * 2**i, 0.1 * 2**i]}]}
            for i in range(2)]}
    omero = {"channels": [{"label": name, "color": color, "active": True,
                           "window": {"start": 0, "end": 400, "min": 0, "max": 65535}}
                          for name, color in (("membrane", "FF00FF"), ("actin", "00FF00"))
                          ][: shape[1]]}
    levels = [shape, shape[:-2] + ((h + 1) // 2, (w + 1) // 2)]
    for array, target in ((noisy, path), (truth, truth_path)):
        image = Image(da.from_array(array, chunks=(1, 1, 1, h, w)), "tczyx", "synthetic",
                      "synthetic", V05, ms, levels, omero=omero)
        remove(target)  # overwrite (checked above)
        out = OutputImage(target, image, array.dtype).create(resumable=False)
        try:
            with dask.config.set(scheduler="threads"):
                da.store(image.data, out.arrays[0], lock=False)
                da.store(downsample(da.from_zarr(out.arrays[0]), levels[1], array.dtype),
                         out.arrays[1], lock=False)
            out.commit({"fm2s_version": __version__, "synthetic_sample": {
                "seed": seed, "what": "noisy" if target == path else "ground truth"}})
        except BaseException:
            out.abort()
            raise
    return path, truth_path


@dataclass(frozen=True)
class DemoReport:
    """The demo's run and, per channel, the mean plane PSNR before and after (dB)."""

    run: RunReport
    psnr: list[tuple[float, float]]
    folder: str


def demo(folder: str | Path, seed: int = 0, progress: ProgressDisplay | None = None,
         command: str | None = None) -> DemoReport:
    """Write the synthetic sample to ``folder``, train-and-apply on it, score it.

    Beside the sample and its denoised copy, ``preview.png`` shows a crop of both and their
    difference per channel (:mod:`fm2s.preview`).
    """
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    noisy_path, truth_path = write_sample(folder / "sample.ome.zarr", seed=seed, overwrite=True)
    output = folder / "sample.fm2s.ome.zarr"
    run = train_and_apply(noisy_path, output, seed=seed, overwrite=True, progress=progress,
                          command=command, preview=folder / "preview.png")
    noisy, truth = zarr.open_array(noisy_path / "0")[:], zarr.open_array(truth_path / "0")[:]
    clean = zarr.open_array(output / "0")[:]
    plane = noisy.shape[-2:]
    scores = []
    for c in range(noisy.shape[1]):
        rng = float(truth[:, c].max() - truth[:, c].min())
        pairs = [(a.reshape(-1, *plane), truth[:, c].reshape(-1, *plane))
                 for a in (noisy[:, c], clean[:, c])]
        before, after = (float(np.mean([psnr(p, t, rng) for p, t in zip(*pair)]))
                         for pair in pairs)
        scores.append((before, after))
    return DemoReport(run, scores, str(folder))
