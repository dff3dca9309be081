"""Volume jobs behind the command line: train one model per channel on a few planes,
denoise every plane tile by tile with dask, write an OME-Zarr with the input's metadata."""

from __future__ import annotations

import hashlib
import itertools
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import dask
import dask.array as da
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import __version__
from .api import train
from .cluster import check_cluster_options, runner
from .errors import FM2SError
from .imageio import MIN_SIDE
from .pipeline import _check_new_file, _Progress
from .recipes import DEFAULT_TILE, DEFAULT_TRAIN_PLANES, VOLUME_SAMPLES_FACTOR, make_config
from .runtime import OnnxDenoiser
from .sample import psnr, synthetic_stack
from .tiling import denoise_array, tiles_in, write_tasks
from .volume import OutputImage, Volume, default_output, describe, downsample, is_url, open_volume


def training_planes(n_planes: int, k: int) -> list[int]:
    """``k`` plane indices spread evenly over ``n_planes`` (all of them when k >= n)."""
    if k < 1:
        raise FM2SError(f"--train-planes {k}: give at least 1")
    if k >= n_planes:
        return list(range(n_planes))
    return sorted({round(i * (n_planes - 1) / (k - 1)) for i in range(k)} if k > 1
                  else {(n_planes - 1) // 2})


def _check_output(volume: Volume, output: Path | None, overwrite: bool) -> Path:
    output = default_output(volume.source) if output is None else Path(output)
    if not output.name.lower().endswith(".zarr"):
        raise FM2SError(f"output '{output}' of a volume is an OME-Zarr image: give it a name "
                        "ending in .ome.zarr (or .zarr)")
    if not is_url(volume.source):
        src = Path(volume.source).resolve()
        out = output.resolve()
        if out == src or src in out.parents or out in src.parents:
            raise FM2SError(f"output '{output}' would overwrite or nest in the input: choose "
                            "another output path")
    _check_new_file(output, overwrite, "output", folder=True)
    return output


def model_paths(save_model: Path | None, channels: int, overwrite: bool) -> list[Path]:
    """Where ``--save-model PATH`` puts models: PATH for one channel, else ``<stem>_c<k>.onnx``."""
    if save_model is None:
        return []
    save_model = Path(save_model)
    if save_model.suffix.lower() != ".onnx":
        raise FM2SError(f"--save-model path '{save_model}' should end in .onnx")
    paths = ([save_model] if channels == 1 else
             [save_model.with_name(f"{save_model.stem}_c{k}.onnx") for k in range(channels)])
    for path in paths:
        _check_new_file(path, overwrite, "model")
    return paths


def resolve_models(spec: str | Path, channels: int) -> list[Path]:
    """Model files for ``apply``: one for every channel, a comma-separated list with one
    per channel, or the ``--save-model`` path of a multi-channel run (``<stem>_c<k>.onnx``)."""
    parts = [Path(p) for p in str(spec).split(",") if p]
    if len(parts) > 1:
        if len(parts) != channels:
            raise FM2SError(f"{len(parts)} models were given for {channels} channel(s): give one "
                            "model, or one per channel")
        return parts
    path = parts[0]
    if path.is_file():
        return [path]
    per_channel = [path.with_name(f"{path.stem}_c{k}.onnx") for k in range(channels)]
    if channels > 1 and all(p.is_file() for p in per_channel):
        return per_channel
    raise FM2SError(f"model file '{path}' does not exist"
                    + (f" (nor {per_channel[0].name} ... {per_channel[-1].name})"
                       if channels > 1 else "") + ": check the path")


def _out_dtype(volume: Volume, dtype: str | None) -> np.dtype:
    src = volume.data.dtype
    if not (np.issubdtype(src, np.integer) or np.issubdtype(src, np.floating)):
        raise FM2SError(f"pixel type {src} of '{volume.source}' is not supported: use integers "
                        "or floats")
    if dtype in (None, "input"):
        return np.dtype(src)
    if dtype != "float32":
        raise FM2SError(f"--dtype {dtype}: choose input or float32")
    return np.dtype(np.float32)


def _check_volume(volume: Volume) -> None:
    h, w = volume.plane_shape
    if min(h, w) < MIN_SIDE:
        raise FM2SError(f"planes of '{volume.source}' are {h} x {w} pixels: they must be at "
                        f"least {MIN_SIDE} x {MIN_SIDE}")


def _check_tile(tile: int) -> None:
    if tile < MIN_SIDE:
        raise FM2SError(f"--tile {tile} is too small: give at least {MIN_SIDE} (default "
                        f"{DEFAULT_TILE})")


class _TileProgress:
    """Tiles done, voxels per second and ETA on stderr (silent with ``quiet`` or no terminal)."""

    def __init__(self, quiet: bool) -> None:
        console = Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total} {task.fields[unit]}"),
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=console, transient=True,
                            disable=quiet or not console.is_terminal)

    def __enter__(self) -> _TileProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def task(self, label: str, tiles: list[int], voxels: list[int], unit: str = "tiles"):
        """A bar over tasks of ``tiles[i]`` units and ``voxels[i]`` voxels; returns done(i)."""
        task = self.bar.add_task(label, total=sum(tiles), rate="", unit=unit)
        start = time.perf_counter()
        state = {"voxels": 0}

        def done(i: int) -> None:
            state["voxels"] += voxels[i]
            rate = state["voxels"] / max(time.perf_counter() - start, 1e-9)
            self.bar.update(task, advance=tiles[i], rate=f"{rate / 1e6:.2f} Mvoxel/s")

        return done


def _block_weights(array: da.Array, tile: int, halo: int) -> tuple[list[int], list[int]]:
    """Tiles and voxels of each block of a :func:`denoise_array` result, in task order."""
    tiles, voxels = [], []
    ys, xs = array.chunks[-2:]
    lead = math.prod(len(c) for c in array.chunks[:-2])
    for _ in range(lead):
        for iy, by in enumerate(ys):
            for ix, bx in enumerate(xs):
                ey = by + halo * (iy > 0) + halo * (iy < len(ys) - 1)
                ex = bx + halo * (ix > 0) + halo * (ix < len(xs) - 1)
                tiles.append(tiles_in((ey, ex), tile))
                voxels.append(by * bx)
    return tiles, voxels


def denoise_volume(volume: Volume, models: list[bytes], halo: int, output: Path,
                   dtype: np.dtype, provenance: dict, tile: int = DEFAULT_TILE,
                   provider: str = "cpu", scheduler: str | None = None,
                   workers: int | None = None, quiet: bool = False,
                   overwrite: bool = False) -> dict:
    """Denoise every plane and write the OME-Zarr (level 0, then the pyramid), atomically.

    Returns timing figures: ``seconds``, ``voxels``, ``tiles``, ``where``.
    """
    out = OutputImage(output, volume, dtype)
    start = time.perf_counter()
    try:
        with runner(scheduler, workers) as run, _TileProgress(quiet) as bar:
            c_axis = volume.axes.index("c") if len(models) > 1 else None
            denoised = denoise_array(volume.data, models, halo, tile, c_axis, dtype, provider)
            tiles, voxels = _block_weights(denoised, tile, halo)
            run.run(write_tasks(denoised, out.arrays[0]),
                    bar.task("denoising", tiles, voxels))
            for level in range(1, len(out.arrays)):
                source = da.from_zarr(out.arrays[level - 1])
                small = downsample(source, volume.level_shapes[level], dtype)
                tasks = write_tasks(small, out.arrays[level])
                sizes = [math.prod(shape) for shape in itertools.product(*small.chunks)]
                run.run(tasks, bar.task(f"pyramid level {level}", [1] * len(tasks), sizes,
                                        unit="chunks"))
            where = run.describe()
        provenance = {**provenance, "tile": tile, "halo": halo, "dtype": str(dtype),
                      "scheduler": where}
        out.commit(provenance, overwrite=overwrite)
    except BaseException:
        out.abort()
        raise
    return {"seconds": time.perf_counter() - start, "voxels": int(np.prod(volume.data.shape)),
            "tiles": sum(tiles), "where": where}


def _provenance(volume: Volume, command: str | None, channels: list[dict]) -> dict:
    return {"fm2s_version": __version__,
            "command": command if command is not None else " ".join(sys.argv),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": volume.source, "source_format": volume.kind, "channels": channels}


def _summary(volume: Volume, output: Path, stats: dict, head: str) -> str:
    shape = " x ".join(map(str, volume.data.shape))
    return (f"{volume.source} -> {output}: {volume.axes} {shape} {volume.data.dtype}, {head}; "
            f"{stats['tiles']} tiles on {stats['where']} in {stats['seconds']:.1f} s "
            f"({stats['voxels'] / max(stats['seconds'], 1e-9) / 1e6:.2f} Mvoxel/s), "
            f"{len(volume.level_shapes)} level(s), NGFF {volume.ngff}")


def train_and_apply_volume(source: str | Path, output: Path | None = None, recipe: str = "fast",
                           microscope: str = "confocal", device: str = "auto", seed: int = 0,
                           train_planes: int = DEFAULT_TRAIN_PLANES, tile: int = DEFAULT_TILE,
                           scheduler: str | None = None, workers: int | None = None,
                           dtype: str | None = None, save_model: Path | None = None,
                           overwrite: bool = False, quiet: bool = False, axes: str | None = None,
                           ngff: str | None = None, command: str | None = None,
                           **overrides) -> str:
    """Train one model per channel on ``train_planes`` planes, then denoise the whole volume.

    ``overrides`` change schedule fields of the recipe (see :func:`fm2s.train`). Returns a
    one-paragraph summary. Nothing is written when an input or option is bad.
    """
    volume = open_volume(source, axes, ngff)
    _check_volume(volume)
    output = _check_output(volume, output, overwrite)
    paths = model_paths(save_model, volume.channels, overwrite)
    out_dtype = _out_dtype(volume, dtype)
    _check_tile(tile)
    training_planes(1, train_planes)
    check_cluster_options(scheduler, workers)
    try:
        config = make_config(recipe, microscope, seed=seed)
    except (ValueError, TypeError) as exc:
        raise FM2SError(str(exc)) from None
    overrides = {"samples": config.samples * VOLUME_SAMPLES_FACTOR.get(recipe, 1), **overrides}
    models, records, devices, seconds = [], [], set(), 0.0
    for c in range(volume.channels):
        planes = volume.channel_planes(c)
        index = training_planes(planes.shape[0], train_planes)
        with dask.config.set(scheduler="threads"):
            stack = np.asarray(planes[index].compute())
        progress = _Progress(quiet, f"training channel {c} ({len(index)} planes)")
        try:
            model = train(stack, recipe, microscope, seed=seed, device=device, progress=progress,
                          **overrides)
        finally:
            progress.close()
        data = model.to_onnx().SerializeToString()
        if paths:
            model.save(paths[c])
        models.append(data)
        devices.add(model.device)
        seconds += model.seconds
        records.append({"channel": c, "recipe": recipe, "preset": model.config.microscope,
                        "seed": seed, "training_planes": index,
                        "model_sha256": hashlib.sha256(data).hexdigest(),
                        "model_file": str(paths[c]) if paths else None,
                        "normalization": {"offset": model.normalization.offset,
                                          "scale": model.normalization.scale}})
    halo = model.halo  # the same network for every channel
    provider = "cpu" if devices == {"cpu"} else "auto"
    stats = denoise_volume(volume, models, halo, output, out_dtype,
                           _provenance(volume, command, records), tile, provider, scheduler,
                           workers, quiet, overwrite)
    steps = model.config.total_steps
    return _summary(volume, output, stats,
                    f"{volume.channels} model(s) {recipe}/{model.config.microscope}, "
                    f"{steps} steps each on {', '.join(sorted(devices))} in {seconds:.1f} s, "
                    f"seed {seed}" + (f", saved to {', '.join(map(str, paths))}" if paths else ""))


def apply_volume(model: str | Path, source: str | Path, output: Path | None = None,
                 provider: str = "auto", tile: int = DEFAULT_TILE, scheduler: str | None = None,
                 workers: int | None = None, dtype: str | None = None, overwrite: bool = False,
                 quiet: bool = False, axes: str | None = None, ngff: str | None = None,
                 command: str | None = None) -> str:
    """Denoise a volume with saved models (one for all channels or one per channel)."""
    volume = open_volume(source, axes, ngff)
    _check_volume(volume)
    output = _check_output(volume, output, overwrite)
    out_dtype = _out_dtype(volume, dtype)
    _check_tile(tile)
    check_cluster_options(scheduler, workers)
    paths = resolve_models(model, volume.channels)
    runtimes = [OnnxDenoiser(p, provider="cpu") for p in paths]
    records = [{"channel": c if len(paths) > 1 else "all", "model_file": str(p),
                "model_sha256": r.sha256, "recipe": r.metadata.get("recipe"),
                "preset": r.metadata.get("preset"), "seed": r.metadata.get("seed"),
                "normalization": r.metadata.get("normalization")}
               for c, (p, r) in enumerate(zip(paths, runtimes))]
    models = [p.read_bytes() for p in paths]
    halo = max(r.halo for r in runtimes)
    stats = denoise_volume(volume, models, halo, output, out_dtype,
                           _provenance(volume, command, records), tile, provider, scheduler,
                           workers, quiet, overwrite)
    return _summary(volume, output, stats, f"model(s) {', '.join(map(str, paths))}")


def info(source: str | Path, axes: str | None = None, ngff: str | None = None) -> str:
    """What ``source`` holds and what train-and-apply would do with it."""
    volume = open_volume(source, axes, ngff)
    planes = volume.planes_per_channel
    k = min(planes, DEFAULT_TRAIN_PLANES)
    return (describe(volume) + f"\n  train-and-apply: {volume.channels} model(s), each trained "
            f"on {k} of {planes} planes; output {default_output(volume.source)} "
            f"(NGFF {volume.ngff})")


def write_sample(path: Path, seed: int = 0, shape: tuple[int, ...] = (2, 2, 4, 256, 320),
                 overwrite: bool = False) -> tuple[Path, Path]:
    """Write a synthetic noisy TCZYX uint16 OME-Zarr and its ground truth beside it.

    Returns the two paths (``OUT.ome.zarr`` and ``OUT.truth.ome.zarr``).
    """
    path = Path(path)
    if not path.name.lower().endswith(".zarr"):
        raise FM2SError(f"sample path '{path}' should end in .ome.zarr")
    stem = path.name[: -len(".ome.zarr")] if path.name.lower().endswith(".ome.zarr") \
        else path.name[: -len(".zarr")]
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
        volume = Volume(da.from_array(array, chunks=(1, 1, 1, h, w)), "tczyx", "synthetic", "",
                        "0.5", ms, levels, omero=omero)
        out = OutputImage(target, volume, array.dtype)
        try:
            with dask.config.set(scheduler="threads"):
                da.store(volume.data, out.arrays[0], lock=False)
                da.store(downsample(da.from_zarr(out.arrays[0]), levels[1], array.dtype),
                         out.arrays[1], lock=False)
            out.commit({"fm2s_version": __version__, "synthetic_sample": {
                "seed": seed, "what": "noisy" if target == path else "ground truth"}}, overwrite)
        except BaseException:
            out.abort()
            raise
    return path, truth_path


def demo(folder: Path, seed: int = 0, quiet: bool = False) -> str:
    """Write the synthetic sample to ``folder``, train-and-apply on it, report the PSNR gain."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    noisy_path, truth_path = write_sample(folder / "sample.ome.zarr", seed=seed, overwrite=True)
    output = folder / "sample.fm2s.ome.zarr"
    summary = train_and_apply_volume(noisy_path, output, seed=seed, overwrite=True, quiet=quiet,
                                     command=f"fm2s-tile demo {folder}")
    lines = [summary, "PSNR against the ground truth (level 0, per channel, mean over planes):"]
    import zarr

    noisy, truth = zarr.open_array(noisy_path / "0")[:], zarr.open_array(truth_path / "0")[:]
    clean = zarr.open_array(output / "0")[:]
    plane = noisy.shape[-2:]
    for c in range(noisy.shape[1]):
        rng = float(truth[:, c].max() - truth[:, c].min())
        pairs = [(a.reshape(-1, *plane), truth[:, c].reshape(-1, *plane))
                 for a in (noisy[:, c], clean[:, c])]
        before, after = (np.mean([psnr(p, t, rng) for p, t in zip(*pair)]) for pair in pairs)
        lines.append(f"  channel {c}: noisy {before:.2f} dB -> denoised {after:.2f} dB "
                     f"(+{after - before:.2f} dB)")
    lines.append(f"images in {folder}/ (open them with napari or ome-zarr-py)")
    return "\n".join(lines)
