"""Many images in one run: a plate, a bioformats2raw layout, a folder or list of images.

A collection run is a loop over its images, each denoised by the single-image job
(:func:`fm2s.jobs.train_and_apply` or :func:`fm2s.jobs.apply`) into its place in the
output: the same rows, columns, wells and fields for a plate, the same series (and the
OME-XML) for a layout, one output per input for a folder. The output of a plate or
layout follows the life of an image output (:mod:`fm2s.runs`): its root group is marked
running (with the run's settings) until every image is complete; then the plate, well
and layout metadata are written, the complete state last. One image that fails does not
stop the others: they are completed, and ``resume`` later runs only the images that are
not complete (an unfinished one continues where it stopped).

With ``share_models`` one model per channel is trained on planes drawn from all the
selected images, kept in the output's run folder (reused by ``resume``) and applied to
every image.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from . import jobs
from ._version import __version__
from .errors import FM2SError, ParameterError
from .layouts import Collection, Member, default_collection_output, read_file
from .progress import ProgressDisplay
from .readers import Image, open_image
from .recipes import DEFAULT_MICROSCOPE, DEFAULT_RECIPE, DEFAULT_TRAIN_PLANES, config_for
from .runs import (
    COMPLETE,
    RUN_DIR,
    RUNNING,
    Interrupted,
    RunLock,
    check_settings,
    keep_model,
    kept_model,
    read_state,
    remove,
    unfinished,
    work_path,
    write_atomic,
)
from .writers import default_output


@dataclass(frozen=True)
class ImageRow:
    """What a collection run did with one image.

    ``status``: ``done`` (written by this run), ``skipped`` (complete before: a resumed
    run), ``failed`` (``error`` says why; the others went on).
    """

    name: str
    output: str
    status: str
    model: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    report: jobs.RunReport | None = None


@dataclass(frozen=True)
class BatchReport:
    """What a collection run did: one row per image, in the collection's order."""

    source: str
    output: str | None
    kind: str
    rows: list[ImageRow]
    seconds: float
    trainings: int
    shared_models: list[dict] | None = None

    @property
    def failed(self) -> list[ImageRow]:
        """The images that failed."""
        return [r for r in self.rows if r.status == "failed"]

    def problem(self) -> str | None:
        """One line naming what failed and how to go on (None when nothing failed)."""
        if not self.failed:
            return None
        where = f"'{self.output}'" if self.output else "their outputs"
        parts = "; ".join(f"{r.name}: {r.error}" for r in self.failed[:3])
        if len(self.failed) > 3:
            parts += f"; and {len(self.failed) - 3} more (see the table)"
        return (f"{len(self.failed)} of {len(self.rows)} image(s) failed ({parts}); the others "
                f"are complete in {where}: rerun the same command with --resume once that is "
                "fixed, to do only what is not complete")


@dataclass(frozen=True)
class CollectionInfo:
    """What ``info`` found in a collection, and what ``train-and-apply`` would do."""

    collection: Collection
    images: list[tuple[str, Image | None, str | None]]
    default_output: str | None
    train_planes: int
    unfinished: dict | None = None


# --------------------------------------------------------------------------------------
# the output of a collection


def _outputs(collection: Collection, root: Path | None,
             opened: dict[str, Image]) -> dict[str, Path]:
    """Each image's output: its place in the plate or layout, its name by the single-image
    rules inside an output folder, or beside its input."""
    outputs = {}
    for m in collection.members:
        if m.path is not None:
            outputs[m.name] = root / m.path
        elif m.name in opened:
            single = default_output(opened[m.name])
            outputs[m.name] = single if root is None else root / single.name
        else:  # not openable: named as its input (it fails before writing)
            outputs[m.name] = (Path(m.source).with_name(f"{m.name}.fm2s") if root is None
                               else root / m.name)
    return outputs


def _image_complete(path: Path) -> bool:
    """Whether an image output is complete (an OME-Zarr marked so; a PNG / TIFF file
    without the hidden zarr of an unfinished run)."""
    if path.is_dir():
        state = read_state(path)
        return state is not None and state.get("state") == COMPLETE
    return path.is_file() and unfinished(path, plane_file=True) is None and \
        not work_path(path, True).exists()


def _check_root(collection: Collection, root: Path, overwrite: bool, resume: bool) -> bool:
    """Refuse an output that exists (unless ``overwrite`` or ``resume`` of an unfinished
    one) or that nests in the input; whether a run is continued. Writes nothing."""
    if overwrite and resume:
        raise ParameterError("resume", None, "excludes overwrite: resume continues an "
                             "unfinished output, overwrite starts over")
    if not root.parent.is_dir():
        raise FM2SError(f"folder '{root.parent}' of the output does not exist: create it first")
    if not collection.source.startswith(("http://", "https://")):
        for src in collection.members:
            s, o = Path(src.source).resolve(), root.resolve()
            if o == s or s in o.parents or o in s.parents:
                raise ParameterError("output", str(root), "it would overwrite or nest in the "
                                     "input: choose another output path")
    if not root.exists():
        return False
    if overwrite:
        return False
    if collection.is_zarr:
        state = read_state(root)
        if unfinished_collection(root) is not None:
            if not resume:
                raise FM2SError(f"output '{root}' is unfinished (an earlier run was interrupted "
                                "or an image failed): rerun with --resume to complete it, or "
                                "--overwrite to start over")
            return True
        if resume and state is not None and state.get("state") == COMPLETE:
            raise FM2SError(f"output '{root}' is complete already: nothing to resume (pass "
                            "--overwrite instead to compute it again)")
        raise FM2SError(f"output '{root}' exists: remove it, choose another path or pass "
                        "--overwrite")
    if not root.is_dir():
        raise FM2SError(f"output '{root}' is a file: give a folder for the outputs")
    if not resume:
        raise FM2SError(f"output folder '{root}' exists: pass --resume to complete the images "
                        "not complete in it, --overwrite to start over, or choose another")
    return True


def _check_beside(outputs: dict[str, Path], overwrite: bool, resume: bool) -> None:
    """Refuse, before any work, outputs beside their inputs that exist (a complete one is
    skipped with ``resume``)."""
    for name, path in outputs.items():
        if overwrite or (resume and (_image_complete(path) or unfinished(
                path, not path.name.endswith(".zarr")) is not None)):
            continue
        if path.exists() or unfinished(path, plane_file=True) is not None:
            raise FM2SError(f"output '{path}' (of {name}) exists: remove it, pass --resume to "
                            "skip complete outputs, or --overwrite")


def _settings(collection: Collection, **settings) -> dict:
    return json.loads(json.dumps({"fm2s_version": __version__, "layout": collection.kind,
                                  "source": collection.source,
                                  "images": [m.name for m in collection.members],
                                  **settings}))


def _create_root(collection: Collection, root: Path, record: dict) -> None:
    """The output's root group marked running, and the groups between it and the images."""
    import zarr

    if not collection.is_zarr:
        root.mkdir()
        return
    group = zarr.open_group(root, mode="w-", zarr_format=collection.ngff.zarr_format,
                            attributes={"fm2s": {"state": RUNNING, "run": record}})
    for path in collection.groups:
        group.require_group(path)
    for m in collection.members:  # a well's parent groups; the images are written by jobs
        parent = m.path.rsplit("/", 1)[0] if "/" in m.path else None
        if parent is not None:
            group.require_group(parent)


def _reopen_root(collection: Collection, root: Path, settings: dict) -> dict:
    """The record of an unfinished collection output, refused if started otherwise."""
    if not collection.is_zarr:
        return {"settings": settings}
    run = read_state(root)["run"]
    check_settings(root, run.get("settings", {}), settings)
    return {**run, "resumed": int(run.get("resumed", 0)) + 1}


def _publish(collection: Collection, root: Path, record: dict, shared: list[dict] | None) -> None:
    """Write the layout's metadata (wells, OME group, OME-XML) and the root's, the complete
    state last, then remove the run folder."""
    import zarr

    group = zarr.open_group(root, mode="r+")
    for path, attrs in collection.groups.items():
        group[path].attrs.put(attrs)
    for path, source in collection.files.items():
        write_atomic(root / path, read_file(source))
    provenance = {"fm2s_version": __version__, "command": record.get("command"),
                  "date": record.get("started"), "source": collection.source,
                  "layout": collection.kind, "images": [m.name for m in collection.members],
                  "shared_models": shared, "state": COMPLETE}
    if record.get("resumed"):
        provenance["resumed"] = record["resumed"]
    group.attrs.put({**collection.attrs, "fm2s": provenance})
    remove(root / RUN_DIR)


# --------------------------------------------------------------------------------------
# shared models


def _shared_models(opened: list[Image], folder: Path, recipe: str, microscope: str,
                   device: str, seed: int, train_planes: int, overrides: dict,
                   progress: ProgressDisplay) -> tuple[list[Path], list[dict], int]:
    """One model per channel trained on planes drawn evenly from all images (kept in
    ``folder``; a model kept there by an interrupted run is reused). Returns the model
    files, their records and the number of trainings run."""
    try:
        from .model import train_model
    except ImportError as exc:
        raise FM2SError(f"training needs torch, which cannot be imported here ({exc}): "
                        "install torch, or denoise with a saved model (apply)") from None
    import dask

    first = opened[0]
    for image in opened[1:]:
        if image.channels != first.channels or image.plane_shape != first.plane_shape:
            raise ParameterError("share_models", True, f"needs images of one shape: "
                                 f"'{first.source}' has {first.channels} channel(s) of "
                                 f"{first.plane_shape}, '{image.source}' {image.channels} of "
                                 f"{image.plane_shape}; leave it out to train per image")
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [(i, p) for i, image in enumerate(opened) for p in range(image.planes_per_channel)]
    index = jobs.training_planes(len(pairs), max(train_planes, len(opened)))
    config = config_for(recipe, microscope, seed, len(pairs), **overrides)
    paths, records, trained = [], [], 0
    for c in range(first.channels):
        kept = kept_model(folder, c)
        if kept is None:
            with dask.config.set(scheduler="threads"):
                stack = np.stack([np.asarray(opened[i].channel_planes(c)[p].compute())
                                  for i, p in (pairs[j] for j in index)])
            model = train_model(stack, config, device, progress.steps(
                f"training channel {c} on {len(index)} planes of {len(opened)} images"))
            trained += 1
            data = model.to_bytes()
            trained_config = model.config  # auto: the candidate it chose
            kept = data, {"record": {
                "channel": c, "model_sha256": hashlib.sha256(data).hexdigest(),
                "recipe": trained_config.recipe, "preset": trained_config.microscope,
                "seed": seed,
                "training_planes": [[opened[pairs[j][0]].source, pairs[j][1]] for j in index],
                "steps": trained_config.total_steps, "train_seconds": round(model.seconds, 3),
                "device": model.device, "noise": model.noise_record()}}
            keep_model(folder, c, *kept)
        paths.append(folder / f"c{c}.onnx")
        records.append(kept[1]["record"])
    return paths, records, trained


# --------------------------------------------------------------------------------------
# the loop


def _kept_models(out: Path) -> int:
    """Models an unfinished image output keeps from an interrupted run."""
    return len(list((work_path(out, out.suffix != "" and not out.name.endswith(".zarr"))
                     / RUN_DIR / "models").glob("c*.onnx")))


def _run(collection: Collection, output: str | Path | None, job: str,
         one: Callable[[Member, Path, bool, ProgressDisplay], jobs.RunReport],
         settings: dict, overwrite: bool, resume: bool, command: str | None,
         progress: ProgressDisplay | None,
         shared: Callable[[list[Image], Path], tuple[list[Path], list[dict], int]] | None = None,
         prepare: Callable[[list[tuple[Member, Path]]], None] | None = None,
         ) -> BatchReport:
    start = time.perf_counter()
    progress = progress or ProgressDisplay(quiet=True)
    root = Path(output).absolute() if output is not None else default_collection_output(
        collection)
    if shared is not None and root is None:
        raise ParameterError("output", None, "--share-models on images listed one by one keeps "
                             "its models in an output folder: give one (-o FOLDER)")
    continuing = _check_root(collection, root, overwrite, resume) if root is not None else False
    opened, errors = {}, {}
    for m in collection.members:
        try:
            opened[m.name] = open_image(m.source)
        except FM2SError as exc:
            errors[m.name] = str(exc)
    outputs = _outputs(collection, root, opened)
    if root is None:
        _check_beside(outputs, overwrite, resume)
    if shared is not None and errors:
        name = next(iter(errors))
        raise FM2SError(f"--share-models trains on every image, but {name} cannot be read "
                        f"({errors[name]}): fix it, or leave it out with --images")
    settings = _settings(collection, job=job, **settings)
    rows: list[ImageRow] = []
    lock = RunLock(root) if root is not None else None
    created = False
    shared_records, trainings = None, 0
    if lock is not None:
        lock.acquire()
    try:
        if root is not None:
            if continuing:
                record = _reopen_root(collection, root, settings)
            else:
                remove(root)
                record = {"command": command, "settings": settings,
                          "started": datetime.now(UTC).isoformat(timespec="seconds")}
                _create_root(collection, root, record)
                created = True
        models = None
        if shared is not None:
            paths, shared_records, trainings = shared(
                [opened[m.name] for m in collection.members], root / RUN_DIR / "models")
            models = paths
        n = len(collection.members)
        if prepare is not None and models is None:  # the images this run will compute
            prepare([(m, outputs[m.name]) for m in collection.members if m.name not in errors
                     and not ((resume or continuing) and _image_complete(outputs[m.name]))])
        for i, m in enumerate(collection.members, 1):
            out = outputs[m.name]
            if m.name in errors:
                progress.note(f"[{i}/{n}] {m.name}: cannot be read")
                rows.append(ImageRow(m.name, str(out), "failed", error=errors[m.name]))
                continue
            if (resume or continuing) and _image_complete(out):
                progress.note(f"[{i}/{n}] {m.name}: complete before, skipped")
                rows.append(ImageRow(m.name, str(out), "skipped", "complete before"))
                continue
            progress.note(f"[{i}/{n}] {m.name} -> {out}")
            kept = _kept_models(out)
            t0 = time.perf_counter()
            try:
                report = one(m, out, resume or continuing, progress) if models is None else \
                    one(m, out, resume or continuing, progress, models)
            except ParameterError:
                raise
            except FM2SError as exc:
                rows.append(ImageRow(m.name, str(out), "failed",
                                     seconds=time.perf_counter() - t0, error=str(exc)))
                continue
            except KeyboardInterrupt as exc:
                name = getattr(exc, "signal_name", "SIGINT")
                where = f"'{root}'" if root is not None else "their outputs"
                raise Interrupted(f"stopped by {name} at {m.name}; the images done are complete "
                                  f"in {where} and the unfinished one is kept: rerun the same "
                                  "command with --resume to complete the rest", name) from None
            channels = len(report.channels)
            if models is not None or job != "train-and-apply":
                model = "shared model" if models is not None else "saved model"
            elif kept:
                model = f"kept models reused ({kept})" if kept == channels else \
                    f"trained ({channels - kept}), kept ({kept})"
            else:
                together = max((r.batched or 1) for r in report.channels)
                model = (f"trained, {together} models at once" if together > 1
                         else f"trained ({channels} channel(s))")
            if models is None and job == "train-and-apply":
                trainings += channels - kept
            rows.append(ImageRow(m.name, str(out), "done", model, time.perf_counter() - t0,
                                 list(report.warnings), report=report))
        if root is not None and collection.is_zarr and not any(
                r.status == "failed" for r in rows):
            _publish(collection, root, record, shared_records)
        elif root is not None and not collection.is_zarr and not any(
                r.status == "failed" for r in rows):
            remove(root / RUN_DIR)
    except ParameterError:
        if created and not any(r.status == "done" for r in rows):
            remove(root)  # a bad option: nothing of value was written
        raise
    finally:
        if lock is not None:
            lock.release()
    return BatchReport(collection.source, str(root) if root is not None else None,
                       collection.kind, rows, time.perf_counter() - start, trainings,
                       shared_records)


def _common(scheduler, workers, dtype, axes, ngff, precision, tile) -> dict:
    return {"scheduler": scheduler, "workers": workers, "dtype": dtype, "axes": axes,
            "ngff": ngff, "precision": precision, "tile": tile}


def train_and_apply_many(collection: Collection, output: str | Path | None = None, *,
                         recipe: str = DEFAULT_RECIPE, microscope: str = DEFAULT_MICROSCOPE,
                         device: str = "auto", seed: int = 0,
                         train_planes: int = DEFAULT_TRAIN_PLANES, tile: int | None = None,
                         scheduler: str | None = None, workers: int | None = None,
                         dtype: str | None = None, precision: str = "fp32",
                         views: int | None = None, axes: str | None = None,
                         ngff: str | None = None, share_models: bool = False,
                         batched: bool | None = None,
                         overwrite: bool = False, resume: bool = False,
                         command: str | None = None, progress: ProgressDisplay | None = None,
                         **overrides) -> BatchReport:
    """Denoise every image of ``collection`` (:func:`fm2s.layouts.open_collection`) with
    :func:`fm2s.jobs.train_and_apply`, into one output of the same layout.

    By default each image trains its own models (one per channel), exactly as a run on
    that image alone with the same seed; ``share_models`` trains one model per channel on
    planes drawn from all images and applies it to each. ``output``: the plate, layout or
    folder written (default: beside the input, ``.fm2s`` before the extension; images
    listed one by one: each output beside its input). ``resume`` continues an unfinished
    output at the images not complete. An image that fails is reported in its row; the
    others are completed.

    ``batched``: train the models of many images at once (:func:`fm2s.model.train_models`,
    in chunks of at most :data:`fm2s.grouped.MAX_MODELS` models, batches capped by memory);
    each is the model of that image alone up to floating-point rounding. None (default):
    where the device gains from it (:func:`fm2s.grouped.batching_pays`: CUDA, not the
    CPU), so on a CPU each image trains exactly as alone.
    """
    if views is not None:
        overrides["views"] = views
    common = _common(scheduler, workers, dtype, axes, ngff, precision, tile)
    jobs.training_planes(1, train_planes)
    todo: list[tuple[Member, Path]] = []
    pretrained: dict[str, dict[int, tuple]] = {}
    looked_at: set[str] = set()  # images pretrain read (or failed to)

    def prepare(members: list[tuple[Member, Path]]) -> None:
        nonlocal batched
        if batched is None:
            try:
                from .grouped import batching_pays
                from .training import resolve_device
            except ImportError:  # no torch: each job says so
                batched = False
                return
            batched = batching_pays(resolve_device(device))
        if batched:  # images with models kept by an interrupted run train in their job
            todo.extend((m, out) for m, out in members if not _kept_models(out))

    def pretrain(first: Member, progress: ProgressDisplay) -> None:
        """Train the models of ``first`` and the images after it, up to MAX_MODELS."""
        from .grouped import MAX_MODELS
        from .model import train_models

        start = next(i for i, (m, _) in enumerate(todo) if m.name == first.name)
        stacks, configs, where = [], [], []
        for m, _ in todo[start:]:
            if len(stacks) >= MAX_MODELS:
                break
            if m.name in looked_at:
                continue
            looked_at.add(m.name)
            try:
                image = open_image(m.source, axes, ngff)
                config = config_for(recipe, microscope, seed, image.planes_per_channel,
                                    **overrides)
                read = [jobs.training_stack(image, c, train_planes)
                        for c in range(image.channels)]
            except ParameterError:
                raise
            except FM2SError:  # its own job reports it
                continue
            for c, (stack, index) in enumerate(read):
                stacks.append(stack)
                configs.append(config)
                where.append((m.name, c, index))
            pretrained[m.name] = {}
        if not stacks:
            return
        images = len({name for name, _, _ in where})
        models = train_models(stacks, configs, device, batched=True, progress=progress.steps(
            f"training {len(stacks)} models of {images} image(s) at once"))
        for (name, c, index), model in zip(where, models):
            pretrained[name][c] = (model, index)

    def one(m: Member, out: Path, resume: bool, progress: ProgressDisplay,
            models: list[Path] | None = None) -> jobs.RunReport:
        if models is not None:
            provider = "cpu" if device == "cpu" and precision == "fp32" else "auto"
            # the shared models live in the run folder, removed once the collection is
            # complete: the collection's fm2s.shared_models records them
            return jobs.apply(",".join(map(str, models)), m.source, out, provider=provider,
                              resume=resume, command=command, progress=progress,
                              models_kept=False, **common)
        if m.name not in looked_at and any(t.name == m.name for t, _ in todo):
            pretrain(m, progress)
        return jobs.train_and_apply(m.source, out, recipe=recipe, microscope=microscope,
                                    device=device, seed=seed, train_planes=train_planes,
                                    resume=resume, command=command, progress=progress,
                                    trained=pretrained.pop(m.name, None), batched=batched,
                                    **common, **overrides)

    shared = None
    if share_models:
        def shared(opened: list[Image], folder: Path):
            return _shared_models(opened, folder, recipe, microscope, device, seed,
                                  train_planes, overrides, progress or ProgressDisplay(
                                      quiet=True))

    settings = {**common, "recipe": recipe, "microscope": microscope, "device": device,
                "seed": seed, "train_planes": train_planes, "overrides": overrides,
                "share_models": share_models}
    return _run(collection, output, "train-and-apply", one, settings, overwrite, resume,
                command, progress, shared, prepare)


def apply_many(model: str | Path, collection: Collection, output: str | Path | None = None,
               *, provider: str = "auto", tile: int | None = None,
               scheduler: str | None = None, workers: int | None = None,
               dtype: str | None = None, precision: str = "fp32", axes: str | None = None,
               ngff: str | None = None, overwrite: bool = False, resume: bool = False,
               command: str | None = None,
               progress: ProgressDisplay | None = None) -> BatchReport:
    """Denoise every image of ``collection`` with saved model(s) (:func:`fm2s.jobs.apply`),
    into one output of the same layout (see :func:`train_and_apply_many`)."""
    common = _common(scheduler, workers, dtype, axes, ngff, precision, tile)

    def one(m: Member, out: Path, resume: bool, progress: ProgressDisplay) -> jobs.RunReport:
        return jobs.apply(model, m.source, out, provider=provider, resume=resume,
                          command=command, progress=progress, **common)

    settings = {**common, "model": str(model), "provider": provider}
    return _run(collection, output, "apply", one, settings, overwrite, resume, command,
                progress)


def info_many(collection: Collection) -> CollectionInfo:
    """What a collection holds (each image opened, metadata only) and what
    ``train-and-apply`` would do with it."""
    images = []
    for m in collection.members:
        try:
            images.append((m.name, open_image(m.source), None))
        except FM2SError as exc:
            images.append((m.name, None, str(exc)))
    root = default_collection_output(collection)
    return CollectionInfo(collection, images, str(root) if root is not None else None,
                          DEFAULT_TRAIN_PLANES)


def unfinished_collection(path: str | Path) -> dict | None:
    """The record of an unfinished plate or layout output (None: not one), with the number
    of its images complete so far."""
    path = Path(path)
    if str(path).startswith(("http://", "https://")) or not path.is_dir():
        return None
    state = read_state(path)
    if state is None or state.get("state") != RUNNING or "layout" not in state.get(
            "run", {}).get("settings", {}):
        return None
    run = state["run"]
    names = run["settings"].get("images", [])
    done = [n for n in names if _image_complete(path / n)]
    return {**run, "complete": done, "total": len(names)}




def describe(sources: list[str] | tuple[str, ...] | str, images: str | None = None,
             axes: str | None = None,
             storage_options: dict | str | None = None) -> jobs.InfoReport | CollectionInfo:
    """What ``info`` reports: an unfinished plate or layout output (what is complete), a
    collection (its images and what would be done), or one image (:func:`fm2s.jobs.info`)."""
    from .layouts import open_collection

    one = [sources] if isinstance(sources, str | Path) else list(sources)
    if len(one) == 1:
        run = unfinished_collection(one[0])
        if run is not None:
            from .layouts import IMAGES

            empty = Collection(run["settings"].get("layout", IMAGES), str(one[0]), [])
            return CollectionInfo(empty, [], None, 0, unfinished=run)
    from .stores import check_storage_options

    storage_options = check_storage_options(storage_options)
    collection = open_collection(one, images, storage_options)
    if collection is None:
        return jobs.info(one[0], axes, storage_options)
    return info_many(collection)


__all__ = ["ImageRow", "BatchReport", "CollectionInfo", "train_and_apply_many", "apply_many",
           "info_many", "unfinished_collection", "describe"]
