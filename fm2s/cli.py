"""The ``fm2s-tile`` command line: each command parses options and calls the library."""

from __future__ import annotations

import shlex
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from .errors import FM2SError, ParameterError
from .recipes import (
    DEFAULT_MICROSCOPE,
    DEFAULT_RECIPE,
    DEFAULT_TRAIN_PLANES,
    MICROSCOPES,
    RECIPES,
)

# typer's usage-error classes, whether typer runs on click or on its own copy of it
_UsageError, _CLIError = typer.BadParameter.__mro__[1:3]


def _one_line(text: str) -> str:
    return " ".join(text.replace("Value error, ", "").split())


#: library parameters that are arguments, not flags, on the command line
_ARGUMENTS = {"model": "MODEL", "source": "INPUT"}


def flag_message(exc: FM2SError) -> str:
    """A library error worded for the command line (``train_planes=0`` -> ``--train-planes 0``)."""
    if not isinstance(exc, ParameterError):
        return str(exc)
    flag = _ARGUMENTS.get(exc.name, "--" + exc.name.replace("_", "-"))
    return f"{flag} {exc.value}: {exc.problem}" if exc.value is not None \
        else f"{flag}: {exc.problem}"


def _on_sigterm():
    """Make SIGTERM stop a run as Ctrl-C does (:class:`fm2s.runs.Interrupted`); returns the
    handler it replaced (None where handlers cannot be set: not the main thread)."""
    from .runs import Interrupted

    def stop(signum, frame):
        raise Interrupted("", "SIGTERM")

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:
        return None


class _Stopped(Exception):
    """A KeyboardInterrupt (SIGINT, SIGTERM) carried past typer, which would turn it into a
    silent exit code."""


class _OneLineErrors(TyperGroup):
    """Report bad input as one line on stderr, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Stopped(exc) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        previous = _on_sigterm()
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except _UsageError as exc:
            ctx = getattr(exc, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {_one_line(exc.format_message())}{where}", err=True)
            code = exc.exit_code
        except (FM2SError, _CLIError) as exc:
            message = exc.format_message() if isinstance(exc, _CLIError) else flag_message(exc)
            typer.echo(f"error: {_one_line(message)}", err=True)
            code = 1
        except (typer.Abort, KeyboardInterrupt, _Stopped) as exc:
            exc = exc.args[0] if isinstance(exc, _Stopped) else exc
            text = str(exc) if isinstance(exc, KeyboardInterrupt) else ""
            typer.echo(f"interrupted: {text or 'stopped before any output was written'}",
                       err=True)
            code = 143 if getattr(exc, "signal_name", "") == "SIGTERM" else 130
        except OSError as exc:
            typer.echo(f"error: {exc.strerror or exc} ({exc.filename or 'file'})", err=True)
            code = 1
        else:
            code = rv if isinstance(rv, int) else 0
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=_OneLineErrors, no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False,
    help="Zero-shot FM2S denoising of fluorescence microscopy images.",
)


def _print_version(value: bool) -> None:
    if value:
        from ._version import __version__

        typer.echo(f"fm2s-tile {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version of fm2s-tile and exit.")] = False) -> None:
    pass


Recipe = StrEnum("Recipe", {name: name for name in RECIPES})
Microscope = StrEnum("Microscope", {name: name for name in MICROSCOPES})
Device = StrEnum("Device", {name: name for name in ("auto", "cpu", "cuda")})


Dtype = StrEnum("Dtype", {name: name for name in ("input", "float32")})
Ngff = StrEnum("Ngff", {"v04": "0.4", "v05": "0.5"})
Precision = StrEnum("Precision", {name: name for name in ("fp32", "fp16")})

InPath = Annotated[str, typer.Argument(
    help="Input: OME-Zarr image (local, or a URL: s3://, http(s)://), zarr array, TIFF stack, or a "
    "single-channel PNG/TIFF image.", show_default=False)]
InPaths = Annotated[list[str], typer.Argument(
    help="Input: OME-Zarr image (local, or a URL: s3://, http(s)://), zarr array, TIFF stack, or a "
    "single-channel PNG/TIFF image; or many: an HCS plate, a bioformats2raw layout, a folder "
    "or glob of images, or several paths (see docs/guides/plates.md).", show_default=False)]
Images = Annotated[str | None, typer.Option(
    "--images", metavar="PATTERNS", help="Which images of a plate, layout or folder: "
    "comma-separated patterns, e.g. 'B/3/*' (fields of well B/3), '0,2' (series), '*_1.png'. "
    "Default: all.", show_default=False)]
OutPath = Annotated[str | None, typer.Option(
    "-o", "--output", help="Output: a path, or a URL such as s3://bucket/stack.fm2s.ome.zarr. "
    "Default: next to the input, '.fm2s' before the extension (volumes: an OME-Zarr, e.g. "
    "stack.fm2s.ome.zarr).", show_default=False)]
StorageOptions = Annotated[str | None, typer.Option(
    "--storage-options", metavar="JSON", help="fsspec options of s3:// (or other) URLs, "
    "e.g. '{\"endpoint_url\": \"http://minio:9000\"}', '{\"anon\": true}', "
    "'{\"profile\": \"lab\"}'. Credentials otherwise come from the environment "
    "(AWS_ACCESS_KEY_ID, AWS_PROFILE, ~/.aws).", show_default=False)]
Shards = Annotated[str | None, typer.Option(
    "--shards", metavar="auto|SHAPE", help="Write sharded arrays (NGFF 0.5 outputs; zarr v3 "
    "sharding): many chunks in one file, far fewer files. auto: whole planes up to 4096 x "
    "4096 pixels (small planes: stacks of them); or a shard shape, one size per axis, e.g. "
    "1,1,1,4096,4096. Default: one file per chunk.", show_default=False)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Preview = Annotated[Path | None, typer.Option(
    "--preview", metavar="PATH.png", help="Also write a PNG of a crop of the raw input, the "
    "denoised output and their difference (one row per channel), to judge the result at a "
    "glance.", show_default=False)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Complete an unfinished output left by an interrupted run of the same "
    "command (same input and options); start one if there is none.")]
Tile = Annotated[int | None, typer.Option(
    help="Tile side in pixels of one onnxruntime call; the result does not depend on it. "
    "Default: 512 on the CPU, 2048 on CUDA.", show_default=False)]
Workers = Annotated[int | None, typer.Option(
    help="Run on a local dask cluster of N worker processes (volumes).", show_default=False)]
ClusterKind = StrEnum("ClusterKind", {name: name for name in ("slurm", "pbs", "lsf", "sge",
                                                              "local")})
Cluster = Annotated[ClusterKind | None, typer.Option(
    "--cluster", help="Run on dask workers started as batch jobs of an HPC scheduler through "
    "dask-jobqueue, with your settings in ~/.config/dask/jobqueue.yaml; --workers N jobs "
    "(default 1). local: its jobs as processes on this machine, to try the settings.",
    show_default=False)]
Scheduler = Annotated[str | None, typer.Option(
    help="Run on an existing dask.distributed cluster, e.g. tcp://10.0.0.5:8786 (volumes; the "
    "output folder must be shared with the workers).", show_default=False)]
DtypeOpt = Annotated[Dtype, typer.Option(
    help="Output pixel type (volumes): the input's (rounded and clipped) or float32.")]
Axes = Annotated[str | None, typer.Option(
    help="Axes of input without axes metadata (plain zarr array, generic TIFF stack), e.g. "
    "tczyx, zyx.", show_default=False)]
PrecisionOpt = Annotated[Precision, typer.Option(
    help="Arithmetic of the network at inference: fp32, or fp16 on the CUDA provider "
    "(input and output stay float32).")]
NgffOpt = Annotated[Ngff | None, typer.Option(
    "--ngff", help="NGFF version of the output for input that is not OME-Zarr (default 0.5; "
    "0.4 for a zarr v2 array). OME-Zarr input keeps its own.", show_default=False)]


def _command() -> str:
    return shlex.join(["fm2s-tile", *sys.argv[1:]])


def _progress(quiet: bool):
    from .progress import ProgressDisplay

    return ProgressDisplay(quiet=quiet)


def format_run(report) -> str:
    """The summary of a train-and-apply or apply run, as printed."""
    shape = " x ".join(map(str, report.shape))
    lines = [f"{report.source} -> {report.output}: {report.kind} {report.axes} {shape} "
             f"{report.dtype}, written as {report.output_format} {report.out_dtype} "
             f"({report.levels} level(s))"]
    for ch in report.channels:
        head = f"  channel {ch.channel}: "
        if ch.steps is not None:
            head += (f"model {ch.recipe}/{ch.preset} trained on {len(ch.training_planes)} "
                     f"plane(s), {ch.steps} steps on {ch.device} in {ch.train_seconds:.1f} s, "
                     f"seed {ch.seed}")
        else:
            name = ch.model_file or f"sha256 {ch.model_sha256[:12]}"
            head += f"model {name} ({ch.recipe}/{ch.preset})"
        if ch.model_file and ch.steps is not None:
            head += f", saved to {ch.model_file}" + (
                " (bioimage.io model package)" if ch.model_file.endswith(".zip") else "")
        lines.append(head)
        if ch.noise and ch.steps is not None:
            lines.append(f"    {ch.noise['decision']}")
    rate = report.voxels / max(report.apply_seconds, 1e-9) / 1e6
    arith = "" if report.precision == "fp32" else f", {report.precision}"
    lines.append(f"  {report.tiles} tiles on {report.where} ({report.provider}{arith}) in "
                 f"{report.apply_seconds:.1f} s ({rate:.2f} Mvoxel/s)")
    if report.resumed:
        lines.append(f"  resumed: {report.chunks_before} chunk(s) were written before, "
                     f"{report.chunks_written} now")
    if report.preview:
        lines.append(f"  preview: {report.preview}")
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)


def format_batch(report) -> str:
    """The summary table of a run over many images, as printed."""
    counts = {s: sum(r.status == s for r in report.rows) for s in ("done", "skipped", "failed")}
    where = report.output or "beside each input"
    lines = [f"{report.source} -> {where}: {report.kind}, {len(report.rows)} image(s): "
             f"{counts['done']} done, {counts['skipped']} complete before, {counts['failed']} "
             f"failed; {report.trainings} training(s), {report.seconds:.1f} s"]
    for m in report.shared_models or []:
        lines.append(f"  shared model, channel {m['channel']}: {m['recipe']}/{m['preset']} "
                     f"trained on {len(m['training_planes'])} plane(s), {m['steps']} steps on "
                     f"{m['device']} in {m['train_seconds']:.1f} s, seed {m['seed']}")
        if m.get("noise"):
            lines.append(f"    {m['noise']['decision']}")
    width = max([len("image")] + [len(r.name) for r in report.rows])
    lines.append(f"  {'image':<{width}}  {'result':<8}{'model':<26}{'seconds':>8}  warnings")
    for r in report.rows:
        lines.append(f"  {r.name:<{width}}  {r.status:<8}{r.model:<26}{r.seconds:>8.1f}  "
                     f"{len(r.warnings)}")
    lines += [f"warning: {r.name}: {w}" for r in report.rows for w in r.warnings]
    return "\n".join(lines)


def format_collection_info(report) -> str:
    """What ``info`` prints for a plate, a layout or a folder of images."""
    if report.unfinished is not None:
        run = report.unfinished
        lines = [f"{report.collection.source}: UNFINISHED fm2s-tile output of a "
                 f"{report.collection.kind} (its run was interrupted or an image failed)",
                 f"  started {run.get('started')} by: {run.get('command') or '(the library)'}",
                 f"  images complete: {len(run['complete'])} of {run['total']}",
                 "  complete it: rerun that command with --resume (or --overwrite to start "
                 "over)"]
        return "\n".join(lines)
    c = report.collection
    version = f" (NGFF {c.ngff.version})" if c.ngff is not None else ""
    lines = [f"{c.source}: {c.kind}{version}, {len(report.images)} image(s)"]
    if c.files:
        lines.append("  carried over: " + ", ".join(c.files))
    width = max(len(n) for n, _, _ in report.images)
    trainings, shapes = 0, set()
    for name, image, error in report.images:
        if image is None:
            lines.append(f"  {name:<{width}}  cannot be read: {error}")
            continue
        shape = " x ".join(map(str, image.data.shape))
        lines.append(f"  {name:<{width}}  {image.kind} {image.axes} {shape} {image.data.dtype}, "
                     f"{image.channels} channel(s)")
        trainings += image.channels
        shapes.add((image.channels, image.plane_shape))
    channels = next(iter(shapes))[0] if len(shapes) == 1 else None
    shared = (f"; with --share-models {channels}" if channels is not None else
              "; --share-models needs images of one shape")
    lines.append(f"  train-and-apply: {trainings} training(s), one per channel per image"
                 f"{shared}; output {report.default_output or 'beside each input'}")
    return "\n".join(lines)


def format_info(report) -> str:
    """What ``info`` prints."""
    import math

    if hasattr(report, "collection"):
        return format_collection_info(report)
    if report.unfinished is not None:
        run = report.unfinished
        lines = [f"{report.source}: UNFINISHED fm2s-tile output (its run was interrupted; "
                 "not an image yet)",
                 f"  started {run.get('started')} by: {run.get('command') or '(the library)'}"]
        lines += [f"  level {name}: {done} of {total} chunks written"
                  for name, done, total in run["levels"]]
        if run.get("models_kept"):
            lines.append(f"  trained models kept: {run['models_kept']}")
        lines.append("  complete it: rerun that command with --resume (or --overwrite to "
                     "start over)")
        return "\n".join(lines)
    image = report.image
    shape = image.data.shape
    chunks = " x ".join(str(c[0]) for c in image.data.chunks)
    nbytes = math.prod(shape) * image.data.dtype.itemsize
    version = (f"NGFF {image.ngff.version}" if image.kind == "OME-Zarr"
               else f"2D {image.kind} image" if image.plane_file is not None
               else f"written as OME-Zarr NGFF {image.ngff.version}")
    lines = [f"{image.source}: {image.kind} ({version})",
             f"  axes {image.axes}, shape {' x '.join(map(str, shape))}, {image.data.dtype}, "
             f"chunks {chunks}, {nbytes / 1e9:.3g} GB",
             f"  levels: {len(image.level_shapes)} ("
             + ", ".join("x".join(map(str, s)) for s in image.level_shapes) + ")"]
    transforms = image.multiscale["datasets"][0].get("coordinateTransformations", [])
    scale = next((t.get("scale") for t in transforms if t.get("type") == "scale"), None)
    if scale:
        units = {a.get("name"): a.get("unit", "") for a in image.multiscale["axes"]
                 if isinstance(a, dict)}
        lines.append("  scale: " + ", ".join(f"{a} {s:g} {units.get(a) or ''}".rstrip()
                                             for a, s in zip(image.axes, scale) if a != "c"))
    labels = [c.get("label", "") for c in (image.omero or {}).get("channels", [])]
    planes = image.planes_per_channel
    lines.append(f"  channels: {image.channels}" + (f" ({', '.join(labels)})" if labels else "")
                 + f"; {planes} plane(s) of {shape[-2]} x {shape[-1]} per channel")
    lines += [f"  note: {n}" for n in image.notes]
    if report.written_by is not None:
        w = report.written_by
        lines.append(f"  fm2s-tile output, complete: written {w.get('date')} by fm2s-tile "
                     f"{w.get('fm2s_version')} from {w.get('source')}")
    lines.append(f"  train-and-apply: {image.channels} model(s), each trained on "
                 f"{report.train_planes} of {planes} planes; output {report.default_output}")
    return "\n".join(lines)


@app.command("train-and-apply")
def train_and_apply_cmd(
    inputs: InPaths,
    output: OutPath = None,
    recipe: Annotated[Recipe, typer.Option(
        help="fast: this project's default (random crops, minutes -> seconds); paper: the FM2S "
        "paper; v2: the authors' later code.")] = Recipe[DEFAULT_RECIPE],
    microscope: Annotated[Microscope, typer.Option(
        help="Noise model: auto measures the noise on the data (per channel, on its "
        "training planes), trains the synthesis derived from it and the presets briefly, "
        "and keeps the one that scores best on the image (about 2 x the training time); "
        "measured trains the derived synthesis alone (one training); or name a preset of "
        "the FM2S authors. "
        "The paper recipe uses one noise model for all.")] = Microscope[DEFAULT_MICROSCOPE],
    device: Annotated[Device, typer.Option(help="Training device.")] = Device["auto"],
    seed: Annotated[int, typer.Option(min=0, help="Seed: same seed, machine, device and "
                                      "number of CPU threads give the same result.")] = 0,
    train_planes: Annotated[int, typer.Option(
        min=1, help="Planes each channel's model trains on (spread evenly over t and z); the "
        "training time does not depend on it.")] = DEFAULT_TRAIN_PLANES,
    tile: Tile = None,
    workers: Workers = None,
    scheduler: Scheduler = None,
    cluster: Cluster = None,
    dtype: DtypeOpt = Dtype["input"],
    save_model: Annotated[Path | None, typer.Option(
        help="Also save the trained model(s): NAME.onnx as ONNX, NAME.zip as a bioimage.io "
        "model package (ONNX and TorchScript weights, test tensors, cover, documentation); "
        "this path for one channel, <stem>_c<k>.onnx / .zip for each channel k otherwise.",
        show_default=False)] = None,
    views: Annotated[int | None, typer.Option(
        help="Test-time views averaged by the model: 1, 2 (the image and its 180-degree "
        "rotation) or 4 (its flips); each costs one network pass. Default: the recipe's "
        "(fast: 2, paper and v2: 1).", show_default=False)] = None,
    precision: PrecisionOpt = Precision["fp32"],
    axes: Axes = None,
    ngff: NgffOpt = None,
    preview: Preview = None,
    images: Images = None,
    share_models: Annotated[bool, typer.Option(
        "--share-models", help="Many images: train one model per channel on planes drawn "
        "from all of them (one training instead of one per image) and apply it to each.")
    ] = False,
    together: Annotated[bool | None, typer.Option(
        "--train-together/--train-apart", help="Many images or channels: train their "
        "models as one batched program (each the model it would be alone, up to float "
        "rounding), or one at a time. Default: together on CUDA, one at a time on a CPU "
        "(batching was slower there when measured).", show_default=False)] = None,
    shards: Shards = None,
    storage_options: StorageOptions = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    quiet: Quiet = False,
) -> None:
    """Train FM2S on the input itself (one model per channel) and write it denoised; a
    plate, layout or folder: every image, into the same layout."""
    from .jobs import train_and_apply
    from .layouts import open_collection
    from .stores import check_storage_options

    options = check_storage_options(storage_options)
    collection = open_collection(inputs, images, options)
    if collection is not None:
        from .batch import train_and_apply_many

        for name, value in (("save_model", save_model), ("preview", preview),
                            ("shards", shards), ("cluster", cluster)):
            if value is not None:
                raise ParameterError(name, str(value), "is for one image: leave it out for a "
                                     "plate, a layout or several images")
        report = train_and_apply_many(
            collection, output, recipe=recipe.value, microscope=microscope.value,
            device=device.value, seed=seed, train_planes=train_planes, tile=tile,
            workers=workers, scheduler=scheduler, dtype=dtype.value, axes=axes,
            ngff=ngff.value if ngff else None, precision=precision.value, views=views,
            share_models=share_models, batched=together, overwrite=overwrite, resume=resume,
            command=_command(), progress=_progress(quiet))
        typer.echo(format_batch(report))
        if report.problem():
            raise FM2SError(report.problem())
        return
    if share_models:
        raise ParameterError("share_models", None, "is for many images (a plate, a layout, "
                             "a folder): this input is one image")
    typer.echo(format_run(train_and_apply(
        inputs[0], output, recipe=recipe.value, microscope=microscope.value, device=device.value,
        seed=seed, train_planes=train_planes, tile=tile, workers=workers, scheduler=scheduler,
        dtype=dtype.value, save_model=save_model, overwrite=overwrite, resume=resume, axes=axes,
        ngff=ngff.value if ngff else None, precision=precision.value, views=views,
        preview=preview, batched=together, command=_command(), progress=_progress(quiet),
        storage_options=options, shards=shards, cluster=cluster.value if cluster else None)))


@app.command("apply")
def apply_cmd(
    model: Annotated[str, typer.Argument(
        help="Model saved with --save-model (.onnx, or a .zip bioimage.io package): one for "
        "all channels, a comma-separated list with one per channel, or the --save-model path "
        "of a multi-channel run.",
        show_default=False)],
    inputs: InPaths,
    output: OutPath = None,
    provider: Annotated[Device, typer.Option(help="onnxruntime execution provider.")] = Device[
        "auto"],
    tile: Tile = None,
    workers: Workers = None,
    scheduler: Scheduler = None,
    cluster: Cluster = None,
    dtype: DtypeOpt = Dtype["input"],
    precision: PrecisionOpt = Precision["fp32"],
    axes: Axes = None,
    ngff: NgffOpt = None,
    preview: Preview = None,
    images: Images = None,
    shards: Shards = None,
    storage_options: StorageOptions = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    quiet: Quiet = False,
) -> None:
    """Denoise with saved model(s), no training (needs no torch)."""
    from .jobs import apply
    from .layouts import open_collection
    from .stores import check_storage_options

    options = check_storage_options(storage_options)
    collection = open_collection(inputs, images, options)
    if collection is not None:
        from .batch import apply_many

        for name, value in (("preview", preview), ("shards", shards), ("cluster", cluster)):
            if value is not None:
                raise ParameterError(name, str(value), "is for one image: leave it out for "
                                     "a plate, a layout or several images")
        report = apply_many(
            model, collection, output, provider=provider.value, tile=tile, workers=workers,
            scheduler=scheduler, dtype=dtype.value, axes=axes,
            ngff=ngff.value if ngff else None, precision=precision.value,
            overwrite=overwrite, resume=resume, command=_command(), progress=_progress(quiet))
        typer.echo(format_batch(report))
        if report.problem():
            raise FM2SError(report.problem())
        return
    typer.echo(format_run(apply(
        model, inputs[0], output, provider=provider.value, tile=tile, workers=workers,
        scheduler=scheduler, dtype=dtype.value, overwrite=overwrite, resume=resume, axes=axes,
        ngff=ngff.value if ngff else None, precision=precision.value, preview=preview,
        command=_command(), progress=_progress(quiet), storage_options=options,
        shards=shards, cluster=cluster.value if cluster else None)))


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise ParameterError(flag, text, "give comma-separated integers") from None


def format_bench(report) -> str:
    """The table ``bench`` prints."""
    m = report.machine
    lines = [f"machine: {m['cpu']}, {m['cores']} cores" + (f", GPU {m['gpu']}" if m['gpu']
                                                            else ", no GPU")
             + f"; onnxruntime {m['onnxruntime']}",
             f"{'provider':<9}{'precision':<10}{'mode':<19}{'Mvoxel/s':>10}{'peak RSS MB':>13}"
             f"{'GPU MB':>9}  note"]
    for r in report.records:
        note = []
        if "pipeline_over_session" in r:
            note.append(f"pipeline/session {r['pipeline_over_session']:.2f}")
        if r.get("shape"):
            note.append("volume " + "x".join(map(str, r["shape"])))
        if r.get("workers"):
            note.append(f"{r['workers']} workers (peak {r.get('worker_peak_rss_mb', 0):.0f} MB)")
        if r["provider"] == "cuda":
            search = (r.get("provider_options") or {}).get("cudnn_conv_algo_search", "?")
            note.append(f"conv search {search}, TF32 {'on' if r.get('tf32') else 'off'}")
        gpu = f"{r['gpu_memory_mb']:.0f}" if r.get("gpu_memory_mb") else "-"
        lines.append(f"{r['provider']:<9}{r['precision']:<10}{r['mode']:<19}"
                     f"{r['mvox_s']:>10.2f}{r['peak_rss_mb']:>13.0f}{gpu:>9}  {', '.join(note)}")
    lines += [f"skipped: {s}" for s in report.skipped]
    return "\n".join(lines)


@app.command("bench")
def bench_cmd(
    providers: Annotated[str | None, typer.Option(
        help="Comma-separated onnxruntime providers: cpu, cuda. Default: every one available.",
        show_default=False)] = None,
    precision: Annotated[str, typer.Option(
        help="Comma-separated precisions: fp32, fp16 (CUDA only).")] = "fp32",
    shape: Annotated[str, typer.Option(
        help="T,Z,Y,X of the synthetic uint16 OME-Zarr the pipeline denoises.")] = ",".join(
        map(str, (1, 16, 2048, 2048))),
    tile: Tile = None,
    workers: Workers = None,
    repeats: Annotated[int, typer.Option(help="Timed runs per measurement; the median is "
                                         "reported.")] = 3,
    modes: Annotated[str, typer.Option(
        help="Comma-separated: session, session-iobinding (CUDA), pipeline, torch.")] = (
        "session,session-iobinding,pipeline,torch"),
    model: Annotated[Path | None, typer.Option(
        help="Benchmark this saved model instead of an untrained network of the default "
        "recipe.", show_default=False)] = None,
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Also write the records as JSON here.", show_default=False)] = None,
    plot_path: Annotated[Path | None, typer.Option(
        "--plot", help="Also write a bar chart (PNG) here.", show_default=False)] = None,
    conv_search: Annotated[str | None, typer.Option(
        help="CUDA: cuDNN's convolution algorithm search, DEFAULT (the default, cuDNN's "
        "fallback mode), HEURISTIC or EXHAUSTIVE (opt-in, not yet measured on a GPU).",
        show_default=False)] = None,
    quiet: Quiet = False,
) -> None:
    """Measure throughput (Mvoxel/s) per provider and precision: the bare onnxruntime session,
    with I/O binding on CUDA, the whole zarr -> zarr pipeline, and torch eager."""
    from .bench import BenchConfig, bench, check_plotting, plot, records_json

    config = BenchConfig(
        providers=_csv(providers or ""), precisions=_csv(precision),
        shape=_ints(shape, "shape"), tile=tile, workers=workers, repeats=repeats,
        modes=_csv(modes), model=str(model) if model else None, conv_search=conv_search)
    for path, suffix in ((json_path, ".json"), (plot_path, ".png")):
        if path is not None and (path.suffix.lower() != suffix or not path.absolute().parent
                                 .is_dir()):
            raise ParameterError("json" if suffix == ".json" else "plot", str(path),
                                 f"give a {suffix} path in an existing folder")
    if plot_path is not None:
        check_plotting()
    report = bench(config, say=None if quiet else lambda line: typer.echo(line, err=True))
    typer.echo(format_bench(report))
    if json_path is not None:
        import json

        json_path.write_text(json.dumps(records_json(report), indent=1) + "\n")
        typer.echo(f"wrote {json_path}")
    if plot_path is not None:
        typer.echo(f"wrote {plot(report, plot_path)}")


@app.command("info")
def info_cmd(inputs: InPaths, axes: Axes = None, images: Images = None,
             storage_options: StorageOptions = None) -> None:
    """Say what the input holds (format, axes, shape, levels, scale, channels); for a plate,
    a layout or a folder, each image and what train-and-apply would do."""
    from .batch import describe

    typer.echo(format_info(describe(inputs, images, axes, storage_options)))


@app.command("sample")
def sample_cmd(
    output: Annotated[Path, typer.Argument(help="Path of the sample, e.g. sample.ome.zarr.")],
    seed: Annotated[int, typer.Option(min=0, help="Seed of the sample.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Write a synthetic noisy TCZYX uint16 OME-Zarr and its ground truth (OUT.truth.ome.zarr)."""
    from .demo import write_sample

    noisy, truth = write_sample(output, seed=seed, overwrite=overwrite)
    typer.echo(f"wrote {noisy} (noisy) and {truth} (ground truth)")


@app.command("demo")
def demo_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder for the sample and its result.")] = Path(
        "fm2s-demo"),
    seed: Annotated[int, typer.Option(min=0, help="Seed of the sample and the training.")] = 0,
    quiet: Quiet = False,
) -> None:
    """Write the synthetic sample stack, train-and-apply on it, report the PSNR gain (and
    a preview figure, preview.png, in the folder)."""
    from .demo import demo

    report = demo(folder, seed=seed, progress=_progress(quiet), command=_command())
    lines = [format_run(report.run),
             "PSNR against the ground truth (level 0, per channel, mean over planes):"]
    lines += [f"  channel {c}: noisy {before:.2f} dB -> denoised {after:.2f} dB "
              f"(+{after - before:.2f} dB)" for c, (before, after) in enumerate(report.psnr)]
    lines.append(f"images in {report.folder}/ (open them with napari or ome-zarr-py)")
    typer.echo("\n".join(lines))


if __name__ == "__main__":  # pragma: no cover
    app()
