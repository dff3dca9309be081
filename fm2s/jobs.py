"""The jobs behind the command line, one path for every input: open the image (a 2D plane
is an image with axes ``yx``), train one model per channel or load saved ones, denoise
every plane tile by tile with dask, write the output, and return a report.

Training imports torch (lazily, in :func:`train_and_apply` only); :func:`apply` and
:func:`info` run on numpy, dask, zarr and onnxruntime alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from ._version import __version__
from .cluster import Runner, check_cluster_options, runner
from .errors import FM2SError, ParameterError
from .package import build_package, is_package, model_bytes, package_name
from .pixels import MIN_SIDE
from .progress import ProgressDisplay
from .readers import Image, open_image
from .recipes import (
    DEFAULT_MICROSCOPE,
    DEFAULT_RECIPE,
    DEFAULT_TILE,
    DEFAULT_TILE_CUDA,
    DEFAULT_TRAIN_PLANES,
    config_for,
    default_tile,
)
from .runs import (
    COMPLETE,
    RunLock,
    keep_model,
    kept_model,
    read_state,
    refuse_unfinished,
    resumable,
    unfinished,
    work_path,
    write_atomic,
)
from .runtime import OnnxDenoiser, check_precision, resolve_provider, shared_denoiser
from .stores import check_storage_options, check_store, is_http, is_remote, is_url, location
from .tiling import (
    aligned,
    denoise_array,
    pending_blocks,
    plane_maps,
    plane_stats,
    tiles_in,
    write_grid,
    write_tasks,
)
from .writers import (
    OutputImage,
    check_new_path,
    default_output,
    downsample,
    output_kind,
    shard_shapes,
)


@dataclass(frozen=True)
class ChannelReport:
    """What one channel's model was and what it met.

    ``data_range`` is the channel's [min, max]; ``model_range`` the range the model was
    trained on; ``mapped_planes`` of ``planes`` lay outside it and were mapped into it.
    ``batched``: the models trained in one program with this one (1: alone; None: a saved
    model).
    """

    channel: int
    model_sha256: str
    model_file: str | None
    recipe: str | None
    preset: str | None
    seed: int | None
    normalization: dict
    data_range: tuple[float, float]
    model_range: tuple[float, float]
    planes: int
    mapped_planes: int
    training_planes: list[int] | None = None
    steps: int | None = None
    train_seconds: float | None = None
    device: str | None = None
    noise: dict | None = None
    batched: int | None = None

    def record(self) -> dict:
        """The channel's entry in the output's provenance."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class RunReport:
    """What a ``train-and-apply`` or ``apply`` run did."""

    source: str
    output: str
    kind: str
    output_format: str
    axes: str
    shape: tuple[int, ...]
    dtype: str
    out_dtype: str
    levels: int
    channels: list[ChannelReport]
    tiles: int
    apply_seconds: float
    where: str
    provider: str
    precision: str = "fp32"
    warnings: list[str] = field(default_factory=list)
    chunks_before: int = 0
    chunks_written: int = 0
    resumed: bool = False
    denoised_voxels: int | None = None
    preview: str | None = None

    @property
    def voxels(self) -> int:
        """Voxels denoised by this run (fewer than the image's when it was resumed)."""
        if self.denoised_voxels is not None:
            return self.denoised_voxels
        return math.prod(self.shape)


@dataclass(frozen=True)
class InfoReport:
    """What ``info`` found, and what ``train-and-apply`` would do with it.

    ``unfinished`` describes an output whose run was interrupted (then ``image`` is
    None); ``written_by`` is the provenance of a complete fm2s-tile output.
    """

    image: Image | None
    train_planes: int
    default_output: str
    source: str = ""
    unfinished: dict | None = None
    written_by: dict | None = None


def training_planes(n_planes: int, k: int) -> list[int]:
    """``k`` plane indices spread evenly over ``n_planes`` (all of them when k >= n)."""
    if k < 1:
        raise ParameterError("train_planes", k, "give at least 1")
    if k >= n_planes:
        return list(range(n_planes))
    return sorted({round(i * (n_planes - 1) / (k - 1)) for i in range(k)} if k > 1
                  else {(n_planes - 1) // 2})


def training_stack(image: Image, channel: int, train_planes: int) -> tuple[np.ndarray, list[int]]:
    """The planes a channel's model trains on (read into memory) and their indices."""
    planes = image.channel_planes(channel)
    index = training_planes(planes.shape[0], train_planes)
    with dask.config.set(scheduler="threads"):
        return np.asarray(planes[index].compute()), index


def model_paths(save_model: str | Path | None, channels: int, overwrite: bool) -> list[Path]:
    """Where ``save_model=PATH`` puts models: PATH for one channel, else ``<stem>_c<k>.onnx``
    (``.zip``: bioimage.io model packages, ``<stem>_c<k>.zip``)."""
    if save_model is None:
        return []
    save_model = Path(save_model)
    suffix = save_model.suffix.lower()
    if suffix not in (".onnx", ".zip"):
        raise ParameterError("save_model", str(save_model), "give a path ending in .onnx (the "
                             "ONNX model) or .zip (a bioimage.io model package)")
    paths = ([save_model] if channels == 1 else
             [save_model.with_name(f"{save_model.stem}_c{k}{suffix}") for k in range(channels)])
    return [check_new_path(p, overwrite, "model") for p in paths]


def resolve_models(spec: str | Path, channels: int) -> list[Path]:
    """Model files for ``apply``: one for every channel, a comma-separated list with one
    per channel, or the ``save_model`` path of a multi-channel run (``<stem>_c<k>.onnx``,
    or ``<stem>_c<k>.zip`` for bioimage.io packages)."""
    parts = [Path(p).absolute() for p in str(spec).split(",") if p]
    if not parts:
        raise ParameterError("model", str(spec), "give the path of a saved .onnx model or "
                             ".zip package")
    if len(parts) > 1:
        if len(parts) != channels:
            raise ParameterError("model", str(spec), f"{len(parts)} models for {channels} "
                                 "channel(s): give one model, or one per channel")
        return parts
    path = parts[0]
    if path.is_file():
        return [path]
    suffix = ".zip" if is_package(path) else ".onnx"
    per_channel = [path.with_name(f"{path.stem}_c{k}{suffix}") for k in range(channels)]
    if channels > 1 and all(p.is_file() for p in per_channel):
        return per_channel
    raise FM2SError(f"model file '{path}' does not exist"
                    + (f" (nor {per_channel[0].name} ... {per_channel[-1].name})"
                       if channels > 1 else "") + ": check the path")


def _out_dtype(image: Image, dtype: str | None) -> np.dtype:
    if dtype in (None, "input"):
        return np.dtype(image.data.dtype)
    if dtype != "float32":
        raise ParameterError("dtype", dtype, "choose input or float32")
    return np.dtype(np.float32)


def _nests(a: str, b: str) -> bool:
    """Whether the URLs (or resolved paths) ``a`` and ``b`` are one or lie in each other."""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _check_output(image: Image, output: str | Path | None, overwrite: bool, resume: bool,
                  dtype: np.dtype, storage_options: dict | None = None) -> tuple[Path, object]:
    """The output path (a :func:`fm2s.stores.location`) and kind; refuses an existing
    output unless ``overwrite``, or an unfinished one (or none) with ``resume``. Writes
    nothing."""
    if overwrite and resume:
        raise ParameterError("resume", None, "excludes overwrite: resume continues an "
                             "unfinished output, overwrite starts over")
    path = default_output(image) if output is None else location(output, storage_options)
    if is_http(path):
        raise ParameterError("output", str(output), "an http(s) URL is read-only: write to "
                             "a local path or to object storage (s3://bucket/...)")
    kind = output_kind(path, image, dtype)
    if is_url(image.source) == is_remote(path):
        src, out = ((image.source, str(path)) if is_remote(path) else
                    (str(Path(image.source).resolve()), str(path.resolve())))
        if _nests(src, out):
            raise ParameterError("output", str(output or path), "it would overwrite or nest in "
                                 "the input: choose another output path")
    plane_file = kind is not None
    if unfinished(path, plane_file) is not None:
        if not (resume or overwrite):
            raise FM2SError(f"output '{path}' is unfinished (an earlier run was interrupted): "
                            "rerun with --resume to complete it, or --overwrite to start over")
        return path, kind
    if resume and path.exists():
        state = read_state(path) if not plane_file else {"state": COMPLETE}
        if state is not None and state.get("state") == COMPLETE:
            raise FM2SError(f"output '{path}' is complete already: nothing to resume (pass "
                            "--overwrite instead to compute it again)")
    return check_new_path(path, overwrite, "output", folder=not plane_file), kind


def _check_preview(preview: str | Path | None, output: Path, source: str,
                   overwrite: bool) -> Path | None:
    """The path of the preview figure, checked before any work: a ``.png`` in an existing
    folder, neither the input nor the output nor inside them, refused if it exists (unless
    ``overwrite``). Writes nothing."""
    if preview is None:
        return None
    path = Path(preview).absolute()

    def bad(problem: str) -> ParameterError:
        return ParameterError("preview", str(preview), problem)

    if path.suffix.lower() != ".png":
        raise bad("give a path ending in .png")
    for what, other in (("output", None if is_remote(output) else output),
                        ("input", None if is_url(source) else source)):
        if other is not None:
            other, here = Path(other).resolve(), path.resolve()
            if here == other or other in here.parents:
                raise bad(f"it would overwrite or lie in the {what}: choose another path")
    if path.is_dir():
        raise bad("it is a folder: give a file name")
    if path.exists() and not overwrite:
        raise bad("it exists: remove it, choose another path or pass --overwrite")
    if not path.parent.is_dir():
        raise bad(f"its folder '{path.parent}' does not exist: create it first")
    return path


def _previewed(report: RunReport, image: Image, path: Path | None,
               storage_options: dict | None = None) -> RunReport:
    """Write the preview figure (:mod:`fm2s.preview`) of a complete output to ``path``,
    from one plane of the input and of the written output; the report, with its path."""
    if path is None:
        return report
    from .preview import figure, png_bytes

    try:
        written = open_image(report.output, storage_options=storage_options)
        with dask.config.set(scheduler="threads"):
            rgb = figure(image.data, written.data, image.axes, image.multiscale, image.omero)
        write_atomic(path, png_bytes(rgb))
    except OSError as exc:
        raise FM2SError(f"cannot write the preview '{path}' ({exc.strerror or exc}); the "
                        f"output '{report.output}' is complete: fix that and rerun with "
                        "--overwrite for the preview") from None
    return dataclasses.replace(report, preview=str(path))


def _check_tile(tile: int | None, provider: str) -> int:
    """The tile side: ``tile``, or the provider's default (resolved here)."""
    if tile is None:
        return default_tile(resolve_provider(provider))
    if tile < MIN_SIDE:
        raise ParameterError("tile", tile, f"too small: give at least {MIN_SIDE} (default "
                             f"{DEFAULT_TILE} on the CPU, {DEFAULT_TILE_CUDA} on CUDA)")
    return tile


def _block_weights(array: da.Array, tile: int) -> tuple[list[int], list[int]]:
    """Tiles and voxels of each block of a :func:`denoise_array` result, in task order
    (a block's halo is read, not computed: :func:`fm2s.tiling.tiled`)."""
    tiles, voxels = [], []
    lead = math.prod(len(c) for c in array.chunks[:-2])
    for _ in range(lead):
        for by in array.chunks[-2]:
            for bx in array.chunks[-1]:
                tiles.append(tiles_in((by, bx), tile))
                voxels.append(by * bx)
    return tiles, voxels


def _channel_stats(image: Image, run: Runner) -> np.ndarray:
    """:func:`~fm2s.tiling.plane_stats` (one read of the input); refuses NaN/Inf."""
    stats = np.asarray(run.compute(plane_stats(image.data)))
    bad = ~np.all(np.isfinite(stats), axis=-1)
    if bad.any():
        where = ", ".join(f"{a}={i}" for a, i in zip(image.axes, np.argwhere(bad)[0]))
        raise FM2SError(f"'{image.source}' holds NaN or infinite values ({bad.sum()} plane(s), "
                        f"first at {where or 'the image'}): replace them before denoising")
    return stats


def _per_channel(image: Image, values: np.ndarray, channel: int) -> np.ndarray:
    c = image.c_axis
    return values if c is None else np.take(values, channel, axis=c)


def _denoise(image: Image, models: list[bytes], maps: np.ndarray, halo: int,
             out: OutputImage, tile: int, provider: str, precision: str, run: Runner,
             progress: ProgressDisplay, provenance: dict) -> tuple[int, int, float]:
    """Denoise every plane not written yet, write level 0 and the pyramid, check, commit."""
    c_axis = image.c_axis if len(models) > 1 else None
    start = time.perf_counter()
    denoised = denoise_array(image.data, models, halo, tile, c_axis, out.dtype, provider,
                             maps=maps, precision=precision)
    if out.shards is not None:  # one task per shard: each written whole, by one task
        denoised = aligned(denoised, write_grid(out.arrays[0]))
    blocks = pending_blocks(denoised, out.arrays[0], out.done, 0)
    tiles, voxels = _block_weights(denoised, tile)
    tiles, voxels = [tiles[i] for i in blocks], [voxels[i] for i in blocks]
    run.run(write_tasks(denoised, out.arrays[0], out.done, 0, blocks),
            progress.tasks("denoising", tiles, voxels))
    for level in range(1, len(out.arrays)):
        source = da.from_zarr(out.arrays[level - 1])
        small = downsample(source, image.level_shapes[level], out.dtype)
        if out.shards is not None:
            small = aligned(small, write_grid(out.arrays[level]))
        blocks = pending_blocks(small, out.arrays[level], out.done, level)
        tasks = write_tasks(small, out.arrays[level], out.done, level, blocks)
        sizes = [math.prod(shape) for shape in itertools.product(*small.chunks)]
        run.run(tasks, progress.tasks(f"pyramid level {level}", [1] * len(tasks),
                                      [sizes[i] for i in blocks], unit="chunks"))
    seconds = time.perf_counter() - start
    extra = {}
    if resolve_provider(provider) == "cuda":  # the options in force, as onnxruntime says
        extra["provider_options"] = shared_denoiser(models[0], provider,
                                                    precision).provider_options
    out.commit({**provenance, "tile": tile, "halo": halo, "dtype": str(out.dtype),
                "scheduler": run.describe(), "provider": provider, "precision": precision,
                **extra})
    return sum(tiles), sum(voxels), seconds


def _provenance(image: Image, record: dict, channels: list[dict]) -> dict:
    """The output's ``fm2s`` metadata: the command and start of the run (the first one, when
    resumed), the source and each channel's model."""
    prov = {"fm2s_version": __version__, "command": record.get("command"),
            "date": record.get("started"),
            "source": image.source, "source_format": image.kind,
            "range_rule": "a plane whose p1 lies within the range its model was trained on "
                          "goes in as it is; any other is mapped into the range (its p1 and "
                          "p99 onto the training planes') and back; the output clamp covers "
                          "each plane's own range",
            "channels": channels}
    if record.get("resumed"):
        prov["resumed"] = record["resumed"]
    return prov


def _warnings(reports: list[ChannelReport]) -> list[str]:
    return [f"channel {r.channel}: {r.mapped_planes} of {r.planes} plane(s) lie outside the "
            f"range the model was trained on ({r.model_range[0]:g}..{r.model_range[1]:g}; "
            f"the channel spans {r.data_range[0]:g}..{r.data_range[1]:g}): they were mapped "
            "into it for the network and back (see README, Intensities)"
            for r in reports if r.mapped_planes]


def _finish(image: Image, out: OutputImage, record: dict, stats: np.ndarray,
            models: list[bytes], references: list[tuple], halo: int, records: list[dict],
            tile: int, provider: str, precision: str, run: Runner,
            progress: ProgressDisplay) -> RunReport:
    """Denoise and write; return the report of the run (shared by both jobs)."""
    reports = []
    c_axis = image.c_axis if len(models) > 1 else None
    maps = plane_maps(stats, references, c_axis)
    for c in range(image.channels):
        ref = references[c if len(references) > 1 else 0]
        st = _per_channel(image, stats, c).reshape(-1, stats.shape[-1])
        mp = _per_channel(image, maps, c).reshape(-1, 4)
        mapped = int(np.sum(np.any(mp[:, :2] != (1.0, 0.0), axis=-1)))
        reports.append(ChannelReport(
            channel=c, data_range=(float(st[:, 0].min()), float(st[:, 1].max())),
            model_range=(float(ref[0]), float(ref[1])), planes=len(st), mapped_planes=mapped,
            **records[c if len(records) > 1 else 0]))
    provenance = _provenance(image, record, [r.record() for r in reports])
    before = out.chunks_done()
    tiles, voxels, seconds = _denoise(image, models, maps, halo, out, tile, provider,
                                      precision, run, progress, provenance)
    total = sum(out.units(level) for level in range(len(out.arrays)))
    kind = out.plane_file
    fmt = kind.name if kind is not None else f"OME-Zarr NGFF {image.ngff.version}"
    return RunReport(image.source, str(out.path), image.kind, fmt, image.axes,
                     tuple(image.data.shape), str(image.data.dtype), str(out.dtype),
                     1 if kind is not None else len(image.level_shapes), reports, tiles,
                     seconds, run.describe(), provider, precision, _warnings(reports),
                     chunks_before=before, chunks_written=total - before,
                     resumed=bool(record.get("resumed")), denoised_voxels=voxels)


def _check_shards(image: Image, kind, shards) -> list[tuple[int, ...]] | None:
    """The shard shape of each level of the output (None: unsharded); refuses shards of a
    PNG or TIFF output or of an NGFF 0.4 one. Writes nothing."""
    if shards is not None and kind is not None:
        raise ParameterError("shards", str(shards), f"shards are for OME-Zarr outputs, not "
                             f"a {kind.name} file: leave them out")
    return shard_shapes([tuple(s) for s in image.level_shapes], shards, image.ngff)


def _settings(image: Image, stats: np.ndarray, out_dtype: np.dtype, kind, **settings) -> dict:
    """What decides an output's bytes: a resumed run must have the same."""
    return json.loads(json.dumps({
        "fm2s_version": __version__, "source": image.source, "axes": image.axes,
        "shape": list(image.data.shape), "dtype": str(image.data.dtype),
        "input_stats_sha256": hashlib.sha256(np.ascontiguousarray(stats).tobytes()).hexdigest(),
        "output_dtype": str(out_dtype), "output_format": kind.name if kind else "OME-Zarr",
        "ngff": image.ngff.version, **settings}))


def _shard_setting(shards: list[tuple[int, ...]] | None) -> dict:
    """The shards in a run's settings (none when unsharded: the settings of unsharded
    runs stay those of earlier versions)."""
    return {} if shards is None else {"shards": [list(s) for s in shards]}


def _noting(lock: RunLock, report: RunReport) -> RunReport:
    """The report, with a word on a stale lock the run took over."""
    if lock.stale is None:
        return report
    note = (f"a lock left by a run that was killed ({lock.stale}) was found and taken over")
    return dataclasses.replace(report, warnings=[note, *report.warnings])


def _trained(model, planes: list[int]) -> tuple[bytes, dict]:
    """A trained model's ONNX bytes and what a run keeps of it (its reference range, halo
    and provenance record)."""
    data = model.to_bytes()
    config = model.config
    return data, {"reference": list(model.reference), "halo": model.halo, "record": {
        "model_sha256": hashlib.sha256(data).hexdigest(), "recipe": config.recipe,
        "preset": config.microscope, "seed": config.seed,
        "normalization": {"offset": model.normalization.offset,
                          "scale": model.normalization.scale},
        "training_planes": planes, "steps": config.total_steps,
        "train_seconds": round(model.seconds, 3), "device": model.device,
        "batched": model.batched, "noise": model.noise_record()}}


def _channels_together(image: Image, out: OutputImage, config, device: str,
                       train_planes: int, batched: bool | None,
                       progress: ProgressDisplay) -> dict | None:
    """The models of a stack's channels not kept yet, trained as one batched program
    where that is asked for or the device gains from it (else None: one at a time)."""
    from .grouped import batching_pays
    from .model import train_models
    from .training import resolve_device

    todo = [c for c in range(image.channels) if kept_model(out.models, c) is None]
    if len(todo) < 2:
        return None
    if batched is None:
        batched = batching_pays(resolve_device(device))
    if not batched:
        return None
    read = [training_stack(image, c, train_planes) for c in todo]
    models = train_models([stack for stack, _ in read], [config] * len(todo), device,
                          batched=True, progress=progress.steps(
                              f"training {len(todo)} channels at once"))
    return {c: (model, index) for c, model, (_, index) in zip(todo, models, read)}


def _json_or_none(text: str | None) -> dict | None:
    """A JSON metadata entry of a model (None when absent: a model of an older version)."""
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def train_and_apply(source: str | Path, output: str | Path | None = None, *,
                    recipe: str = DEFAULT_RECIPE, microscope: str = DEFAULT_MICROSCOPE,
                    device: str = "auto", seed: int = 0,
                    train_planes: int = DEFAULT_TRAIN_PLANES, tile: int | None = None,
                    scheduler: str | None = None, workers: int | None = None,
                    dtype: str | None = None, save_model: str | Path | None = None,
                    preview: str | Path | None = None,
                    overwrite: bool = False, resume: bool = False, axes: str | None = None,
                    ngff: str | None = None, precision: str = "fp32", views: int | None = None,
                    command: str | None = None, progress: ProgressDisplay | None = None,
                    trained: dict | None = None, batched: bool | None = None,
                    storage_options: dict | str | None = None,
                    shards: str | tuple[int, ...] | None = None, cluster: str | None = None,
                    **overrides) -> RunReport:
    """Train one model per channel on ``train_planes`` planes, then denoise every plane.

    Any input (OME-Zarr, zarr, TIFF stack, 2D PNG/TIFF); the output is an OME-Zarr, or a
    PNG/TIFF file for a 2D image (by the output's extension; default: the input's format
    for a 2D file, else ``.fm2s.ome.zarr``). ``overrides`` change schedule fields of the
    recipe (see :func:`fm2s.recipes.make_config`); ``views`` replaces the recipe's
    test-time views (1, 2 or 4). ``precision="fp16"`` runs the network in float16 on
    the CUDA provider. ``preview``: a ``.png`` path for a figure of a crop of the raw, the
    denoised and their difference per channel (:mod:`fm2s.preview`), written once the
    output is complete. Nothing is written when an input or option is bad.

    The output is written in place and marked unfinished until complete; an interrupted
    run is continued with ``resume=True`` (same input and settings): the models it trained
    are reused and no chunk it wrote is computed again.

    ``trained``: channel -> (:class:`fm2s.model.TrainedModel`, training plane indices) of
    models trained already on this image's :func:`training_stack` with this run's config
    (:func:`fm2s.batch.train_and_apply_many` trains many images' models at once); a
    channel not in it trains here. ``batched``: the channels' models train as one batched
    program (:func:`fm2s.model.train_models`, each the model of its channel alone up to
    float rounding); None (default): where the device gains from it (CUDA).

    ``source`` and ``output`` may be URLs (``s3://bucket/key.ome.zarr``, any fsspec
    protocol installed); ``storage_options`` (a dict or its JSON text: ``endpoint_url``,
    ``anon``, ``profile``, ``key``, ``secret``) apply to both.

    ``shards`` (NGFF 0.5 outputs): ``"auto"`` or a shard shape (one size per axis, each a
    multiple of the chunk): the arrays are sharded (zarr v3 sharding codec), fewer files;
    each write task writes whole shards (:func:`fm2s.writers.shard_shapes`).

    ``cluster`` (``slurm``, ``pbs``, ``lsf``, ``sge``; ``local`` to try the settings on
    this machine): run on ``workers`` (default 1) batch jobs of dask workers submitted
    through dask-jobqueue with the user's jobqueue settings (:mod:`fm2s.cluster`).
    """
    try:
        from .model import train_model
    except ImportError as exc:
        raise FM2SError(f"training needs torch, which cannot be imported here ({exc}): "
                        "install torch, or denoise with a saved model (apply)") from None

    storage_options = check_storage_options(storage_options)
    refuse_unfinished(str(source), storage_options)
    image = open_image(source, axes, ngff, storage_options)
    dtype_out = _out_dtype(image, dtype)
    output, kind = _check_output(image, output, overwrite, resume, dtype_out, storage_options)
    shard_shape = _check_shards(image, kind, shards)
    resuming = resume and unfinished(output, kind is not None) is not None
    paths = model_paths(save_model, image.channels, overwrite or resuming)
    preview = _check_preview(preview, output, image.source, overwrite)
    if tile is not None:
        _check_tile(tile, "cpu")
    training_planes(1, train_planes)
    check_cluster_options(scheduler, workers, cluster)
    check_precision(precision)
    if views is not None:
        overrides["views"] = views
    config = config_for(recipe, microscope, seed, image.planes_per_channel, **overrides)
    progress = progress or ProgressDisplay(quiet=True)
    out = OutputImage(output, image, dtype_out, kind, shard_shape)
    with runner(scheduler, workers, cluster) as run, out.lock() as lock, progress:
        stats = _channel_stats(image, run)
        settings = _settings(image, stats, dtype_out, kind, job="train-and-apply",
                             recipe=recipe, microscope=microscope, seed=seed, device=device,
                             train_planes=train_planes, overrides=overrides,
                             precision=precision, **_shard_setting(shard_shape))
        record = out.start(settings, command, overwrite, resume)
        with resumable(output):
            models, references, records, halos = [], [], [], []
            packages = bool(paths) and is_package(paths[0])
            if trained is None:
                trained = _channels_together(image, out, config, device, train_planes,
                                             batched, progress)
            for c in range(image.channels):
                stored = kept_model(out.models, c)
                if stored is None:
                    if trained is not None and c in trained:  # trained with other models
                        model, index = trained[c]
                        stack = (training_stack(image, c, train_planes)[0] if packages
                                 else None)
                    else:
                        stack, index = training_stack(image, c, train_planes)
                        model = train_model(stack, config, device, progress.steps(
                            f"training channel {c} ({len(index)} planes)"))
                    stored = _trained(model, index)
                    if packages:
                        write_atomic(out.models / f"c{c}.zip", build_package(
                            model, stack, onnx=stored[0], name=package_name(paths[c].stem),
                            source=image.source, channel=c if image.channels > 1 else None,
                            training_planes=index))
                    keep_model(out.models, c, *stored)
                data, kept = stored
                if paths:
                    write_atomic(paths[c], out.kept_package(c, kept["record"]["model_sha256"])
                                 if packages else data)
                models.append(data)
                references.append(tuple(kept["reference"]))
                halos.append(int(kept["halo"]))
                records.append({**kept["record"],
                                "model_file": str(paths[c]) if paths else None})
            devices = {r["device"] for r in records}
            provider = "cpu" if devices == {"cpu"} and precision == "fp32" else "auto"
            tile = _check_tile(tile, provider)
            report = _noting(lock, _finish(image, out, record, stats, models, references,
                                           max(halos), records, tile, provider, precision,
                                           run, progress))
        return _previewed(report, image, preview, storage_options)


def apply(model: str | Path, source: str | Path, output: str | Path | None = None, *,
          provider: str = "auto", tile: int | None = None, scheduler: str | None = None,
          workers: int | None = None, dtype: str | None = None, overwrite: bool = False,
          resume: bool = False, axes: str | None = None, ngff: str | None = None,
          precision: str = "fp32", command: str | None = None,
          progress: ProgressDisplay | None = None,
          preview: str | Path | None = None,
          storage_options: dict | str | None = None,
          shards: str | tuple[int, ...] | None = None,
          cluster: str | None = None, models_kept: bool = True) -> RunReport:
    """Denoise any input with saved models (one for all channels or one per channel).

    Planes outside the range a model was trained on are mapped into it and back (see
    :func:`fm2s.normalize.range_map`); the report's ``warnings`` say so.
    ``precision="fp16"`` runs the network in float16 on the CUDA provider. ``resume``
    continues an interrupted run on the same output (see :func:`train_and_apply`).
    ``preview``: a ``.png`` path for the preview figure, ``storage_options`` those of URLs,
    ``shards`` the output's shards, ``cluster`` batch jobs of workers (see
    :func:`train_and_apply`). ``models_kept=False``: the model files do not outlive the run
    (``--share-models`` keeps them in the run folder), so the provenance names each model
    by its checksum only (``model_file`` null).
    """
    storage_options = check_storage_options(storage_options)
    refuse_unfinished(str(source), storage_options)
    image = open_image(source, axes, ngff, storage_options)
    dtype_out = _out_dtype(image, dtype)
    output, kind = _check_output(image, output, overwrite, resume, dtype_out, storage_options)
    shard_shape = _check_shards(image, kind, shards)
    check_cluster_options(scheduler, workers, cluster)
    check_precision(precision, provider)
    tile = _check_tile(tile, provider)
    paths = resolve_models(model, image.channels)
    preview = _check_preview(preview, output, image.source, overwrite)
    models = [model_bytes(p) for p in paths]  # a .zip package: its ONNX weights
    runtimes = [OnnxDenoiser(m, provider="cpu", name=f"'{p}'") for p, m in zip(paths, models)]
    records = [{"model_sha256": r.sha256, "model_file": str(p) if models_kept else None,
                "recipe": r.metadata.get("recipe"), "preset": r.metadata.get("preset"),
                "seed": int(r.metadata["seed"]) if r.metadata.get("seed", "").isdigit()
                else None,
                "normalization": {"offset": r.reference[0],
                                  "scale": r.reference[1] - r.reference[0]},
                "noise": _json_or_none(r.metadata.get("noise"))}
               for p, r in zip(paths, runtimes)]
    halo = max(r.halo for r in runtimes)
    progress = progress or ProgressDisplay(quiet=True)
    out = OutputImage(output, image, dtype_out, kind, shard_shape)
    with runner(scheduler, workers, cluster) as run, out.lock() as lock, progress:
        stats = _channel_stats(image, run)
        settings = _settings(image, stats, dtype_out, kind, job="apply",
                             models=[r.sha256 for r in runtimes],
                             provider=resolve_provider(provider), precision=precision,
                             **_shard_setting(shard_shape))
        record = out.start(settings, command, overwrite, resume)
        with resumable(output):
            report = _noting(lock, _finish(image, out, record, stats, models,
                                           [r.reference for r in runtimes], halo, records,
                                           tile, provider, precision, run, progress))
        return _previewed(report, image, preview, storage_options)


def _unfinished_report(path, run: dict) -> dict:
    """Chunks and models an unfinished output (a :func:`fm2s.stores.location`) holds."""
    import zarr

    from .stores import listing, zarr_store

    levels = []
    group = zarr.open_group(zarr_store(path, read_only=True), mode="r")
    names = sorted((name for name in listing(path) if not name.startswith(".")
                    and ((path / name / "zarr.json").is_file()
                         or (path / name / ".zarray").is_file())),
                   key=lambda n: (len(n), n))
    done_root = path / ".fm2s-run" / "done"
    for level, name in enumerate(names):
        levels.append((name, len(listing(done_root / str(level))), group[name].nchunks))
    models = listing(path / ".fm2s-run" / "models")
    trained = len([n for n in models if n.startswith("c") and n.endswith(".onnx")])
    return {**run, "levels": levels, "models_kept": trained}


def info(source: str | Path, axes: str | None = None,
         storage_options: dict | str | None = None) -> InfoReport:
    """What ``source`` holds and what ``train-and-apply`` would do with it; for an
    unfinished output, what its interrupted run wrote. ``storage_options``: those of a
    URL (see :func:`train_and_apply`)."""
    storage_options = check_storage_options(storage_options)
    if not is_http(str(source)):
        path = location(source, storage_options)
        if is_remote(path):
            check_store(path, "input")  # a missing bucket, wrong credentials: one line
        for plane_file in (False, True):  # an OME-Zarr, or the hidden zarr of a PNG/TIFF
            run = unfinished(path, plane_file)
            if run is not None:
                work = work_path(path, plane_file)
                return InfoReport(None, 0, "", str(source), _unfinished_report(work, run))
    image = open_image(source, axes, storage_options=storage_options)
    written_by = None
    where = None if is_http(image.source) else location(image.source, storage_options)
    if where is not None and where.is_dir():
        state = read_state(where)
        if state is not None and state.get("state") == COMPLETE:
            written_by = state
    return InfoReport(image, min(image.planes_per_channel, DEFAULT_TRAIN_PLANES),
                      str(default_output(image)), image.source, written_by=written_by)
