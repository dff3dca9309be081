"""Writing results: OME-Zarr images (with the input's metadata and a pyramid regenerated
from the denoised data) and single-plane PNG/TIFF files. An OME-Zarr is written in place,
marked as running until every chunk is checked to be there (:mod:`fm2s.runs`); a PNG or
TIFF is written to a hidden file that is renamed when complete."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from .errors import FM2SError, ParameterError
from .formats import PNG, TIFF, NgffFormat, PlaneFile, is_zarr_name, plane_file_of
from .pixels import cast_like
from .readers import Image
from .recipes import WRITE_CHUNK
from .runs import (
    COMPLETE,
    RUN_DIR,
    RUNNING,
    Done,
    RunLock,
    check_settings,
    leftovers,
    os_message,
    part_path,
    remove,
    unfinished,
    work_path,
)
from .stores import check_store, is_remote, is_url, location, storage_options_of, zarr_store

#: the temporary file of a chunk write by zarr's local store (``<key>.<uuid hex>.partial``)
_PARTIAL = re.compile(r".+\.[0-9a-f]{32}\.partial")

#: side of the tiles of a TIFF output
TIFF_TILE = 512


def fm2s_path(source: str, extensions: tuple[str, ...] = (".ome.zarr", ".zarr"),
              other: str = ".fm2s.ome.zarr") -> Path:
    """The output path beside ``source``: ``.fm2s`` before the first of ``extensions`` its
    name ends in (``a.ome.zarr`` -> ``a.fm2s.ome.zarr``), else its name plus ``other``
    (``extensions`` given: that extension replaced). A URL gives its name in the current
    folder."""
    source = source.rstrip("/")
    name = Path(source).name
    path = (Path(name) if is_url(source) else Path(source)).absolute()
    for ext in extensions:
        if name.lower().endswith(ext):
            stem = name[: -len(ext)]
            return path.with_name(stem + (".fm2s" + ext if ext.endswith(".zarr") else other))
    return path.with_name(name + other)


def default_output(image: Image) -> Path:
    """Output path next to the input, ``.fm2s`` before the extension.

    ``cells.ome.zarr`` -> ``cells.fm2s.ome.zarr``; a 2D PNG or TIFF keeps its format
    (``cells.png`` -> ``cells.fm2s.png``); a TIFF stack gives ``<stem>.fm2s.ome.zarr``;
    a URL gives its name in the current folder.
    """
    if image.plane_file is not None:
        path = Path(image.source).absolute()
        return path.with_name(f"{path.stem}.fm2s{path.suffix}")
    return fm2s_path(image.source, (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff",
                                    ".tif"))


def check_new_path(path: Path, overwrite: bool, what: str, folder: bool = False) -> Path:
    """Refuse a path that exists (without ``overwrite``) or whose folder does not exist.

    ``folder``: the path names a folder to create (an OME-Zarr image), not a file.
    Returns the path made absolute. On a remote store (S3), the bucket must exist and be
    reachable with the credentials at hand (there are no folders to check).
    """
    path = location(path)
    if is_remote(path):
        check_store(path, what)
        if path.exists() and not overwrite:
            raise FM2SError(f"{what} '{path}' exists: remove it, choose another path "
                            "or pass --overwrite")
        return path
    path = Path(path).absolute()
    if path.is_dir() and not folder:
        raise FM2SError(f"{what} '{path}' is a folder: give a file name")
    if path.exists() and not overwrite:
        raise FM2SError(f"{what} '{path}' exists: remove it, choose another path "
                        "or pass --overwrite")
    if not path.parent.is_dir():
        raise FM2SError(f"folder '{path.parent}' of the {what} does not exist: create it first")
    return path


def output_kind(path: Path, image: Image, dtype: np.dtype) -> PlaneFile | None:
    """The format an output path asks for: None for OME-Zarr (a ``.zarr`` name, or an
    image inside a zarr group), else PNG or TIFF.

    A PNG or TIFF output holds one 2D plane of a type that format can hold.
    """
    name = path.name
    if is_zarr_name(name) or _in_zarr(path):
        return None
    fmt = plane_file_of(name)
    if fmt is not None and is_remote(path):
        raise FM2SError(f"output '{path}': a {fmt.name} output is written to a local path; "
                        "write an .ome.zarr to object storage")
    if fmt is None:
        raise FM2SError(f"output '{path}' has an unknown extension: end it in .ome.zarr "
                        "(or .png / .tif for a 2D image)")
    if image.axes != "yx":
        raise FM2SError(f"output '{path}' is a {fmt.name} file, which holds one 2D plane, but "
                        f"the input has axes {image.axes}: give an .ome.zarr output")
    if fmt.dtypes and np.dtype(dtype).name not in fmt.dtypes:
        raise FM2SError(f"{fmt.name} cannot hold {np.dtype(dtype)} pixels: write a .tif or "
                        ".ome.zarr output instead")
    return fmt


def _in_zarr(path: Path) -> bool:
    """Whether ``path`` names a member of a zarr hierarchy (a field of a plate, a series of
    a bioformats2raw layout): its folder is a zarr group."""
    return "." not in path.name and any(
        (path.parent / meta).is_file() for meta in ("zarr.json", ".zgroup"))


def write_chunks(shape: tuple[int, ...], side: int = WRITE_CHUNK) -> tuple[int, ...]:
    """Output chunks: one plane in every non-YX axis, up to ``side`` pixels in Y and X."""
    return (1,) * (len(shape) - 2) + tuple(min(n, side) for n in shape[-2:])


#: ``--shards auto``: a shard holds up to this many voxels (a 4096 x 4096 plane, or a
#: stack of smaller planes), up to :data:`AUTO_SHARD_SIDE` pixels in Y and X
AUTO_SHARD_VOXELS = 4096 * 4096
AUTO_SHARD_SIDE = 4096


def shard_shapes(level_shapes: list[tuple[int, ...]], shards,
                 fmt: NgffFormat) -> list[tuple[int, ...]] | None:
    """The shard shape of each level (None: unsharded).

    ``shards``: None; ``"auto"``: for each level, whole planes up to 4096 x 4096 pixels,
    then planes along the axes before Y (z, then c, then t) up to
    :data:`AUTO_SHARD_VOXELS` voxels; or the shard shape of level 0, one size per axis,
    each a multiple of the chunk (1 before Y, 1024 in Y and X) or at least the image's
    side (the levels below keep its chunks per shard, fewer where they hold fewer).

    Raises
    ------
    ParameterError
        Shards of an NGFF 0.4 (zarr v2) output, or a shape that does not fit.
    """
    if shards is None:
        return None
    if fmt.zarr_format != 3:
        raise ParameterError("shards", _text(shards), "shards need an NGFF 0.5 (zarr v3) "
                             "output: leave them out, or pass --ngff 0.5 (OME-Zarr 0.4 input "
                             "keeps its version)")
    if isinstance(shards, str) and shards.strip().lower() == "auto":
        return [_auto_shard(shape) for shape in level_shapes]
    per = _chunks_per_shard(tuple(level_shapes[0]), shards)
    return [tuple(c * min(k, -(-n // c)) for n, c, k in zip(shape, write_chunks(shape), per))
            for shape in level_shapes]


def _auto_shard(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``--shards auto`` for one level of ``shape``."""
    chunks = write_chunks(shape)
    per = [1] * len(shape)
    for ax in (-2, -1):
        per[ax] = min(-(-shape[ax] // chunks[ax]), max(1, AUTO_SHARD_SIDE // chunks[ax]))
    voxels = math.prod(c * k for c, k in zip(chunks, per))
    for ax in reversed(range(len(shape) - 2)):  # z, then c, then t
        per[ax] = max(1, min(shape[ax], AUTO_SHARD_VOXELS // voxels))
        voxels *= per[ax]
        if per[ax] < shape[ax]:
            break
    return tuple(c * k for c, k in zip(chunks, per))


def _chunks_per_shard(shape: tuple[int, ...], shards) -> tuple[int, ...]:
    """Chunks per shard along each axis of a shard shape ``shards`` of level 0."""
    chunks = write_chunks(shape)
    if isinstance(shards, str):
        try:
            shards = tuple(int(p) for p in shards.split(","))
        except ValueError:
            raise ParameterError("shards", shards, "give auto or one size per axis, e.g. "
                                 "1,1,1,4096,4096") from None
    shards = tuple(int(s) for s in shards)
    if len(shards) != len(shape):
        raise ParameterError("shards", _text(shards), f"give one size per axis of the image "
                             f"({len(shape)}, e.g. {','.join(map(str, chunks))}), or auto")
    per = []
    for n, c, s in zip(shape, chunks, shards):
        if s < 1 or (s < n and s % c):
            raise ParameterError("shards", _text(shards), f"each size must be a multiple of "
                                 f"the chunk ({','.join(map(str, chunks))}) or cover the "
                                 "image's side")
        per.append(-(-n // c) if s >= n else s // c)
    return tuple(per)


def _text(shards) -> str:
    return shards if isinstance(shards, str) else ",".join(map(str, shards))


def downsample(level: da.Array, shape: tuple[int, ...], dtype: np.dtype) -> da.Array:
    """Block means of ``level`` down to ``shape`` (integer factor per axis; edges padded).

    The factors are the ratios of the shapes, rounded, so both floor- and ceil-sized
    pyramids are reproduced exactly in shape.
    """
    factors = [max(1, round(a / b)) for a, b in zip(level.shape, shape)]
    x = level
    for ax, (n, f) in enumerate(zip(shape, factors)):
        need = n * f
        if x.shape[ax] > need:
            x = x[(slice(None),) * ax + (slice(0, need),)]
        elif x.shape[ax] < need:
            pad = [(0, 0)] * x.ndim
            pad[ax] = (0, need - x.shape[ax])
            x = da.pad(x, pad, mode="edge")
    out_chunks = write_chunks(shape)
    x = x.rechunk(tuple(f * c for f, c in zip(factors, out_chunks)))
    mean = da.coarsen(np.mean, x.astype(np.float64), dict(enumerate(factors)))
    return mean.map_blocks(partial(cast_like, dtype=np.dtype(dtype)), dtype=dtype)


def _package_onnx(path) -> bytes:
    """The ONNX weights of the bioimage.io package at ``path`` (local or remote)."""
    from .package import read_package

    if not is_remote(path):
        return read_package(path)[0]
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / path.name
        local.write_bytes(path.read_bytes())
        return read_package(local)[0]


def _written(array, total: int) -> int:
    """Chunks (a sharded array: shards) of ``array`` in its store."""
    if not getattr(array, "shards", None):
        return array.nchunks_initialized
    if array.nchunks_initialized == array.nchunks:  # zarr counts the chunks in the shards
        return total
    shards = getattr(array, "_nshards_initialized", None)  # zarr >= 3.1
    return shards if isinstance(shards, int) else 0


class OutputImage:
    """An image written in place, resumably (:mod:`fm2s.runs`), at a local path or a URL
    on object storage (:func:`fm2s.stores.location`).

    :meth:`create` makes the zarr arrays of level 0 and the pyramid in the output's NGFF
    version, marked as a running output; :meth:`reopen` opens those of an unfinished one.
    Tasks write chunks into ``arrays`` and mark them in ``done``; with ``shards`` (the
    shard shape of each level, :func:`shard_shapes`) the arrays are sharded and tasks write
    and mark whole shards. :meth:`commit` checks
    that every chunk of every level is there, writes the image metadata and the complete
    state last, and removes the run folder. A PNG or TIFF output is assembled in a hidden
    zarr (:func:`fm2s.runs.work_path`), then written to a hidden file that is renamed.
    """

    def __init__(self, path: Path, image: Image, dtype: np.dtype,
                 plane_file: PlaneFile | None = None,
                 shards: list[tuple[int, ...]] | None = None) -> None:
        self.path = location(path)
        self.shards = shards
        self.image = image
        self.dtype = np.dtype(dtype)
        self.plane_file = plane_file
        self.fmt: NgffFormat = image.ngff
        self.zarr_path = work_path(self.path, plane_file is not None)
        self.run_dir = self.zarr_path / RUN_DIR
        self.done = Done(str(self.run_dir), storage_options_of(self.run_dir))
        self.group = None
        self.arrays: list = []
        self.resumable = True

    def lock(self) -> RunLock:
        """The output's lock (a context manager): one run writes it at a time (on object
        storage a lock object that does not stop a second run: :class:`fm2s.runs.RunLock`)."""
        return RunLock(self.path)

    def start(self, settings: dict, command: str | None, overwrite: bool,
              resume: bool) -> dict:
        """Under the output's lock: reopen an unfinished output (``resume``, the same
        ``settings``) or clear the path (``overwrite``) and create a new one. Returns the
        run's record."""
        output, plane_file = self.path, self.plane_file is not None
        existing = unfinished(output, plane_file)
        if existing is not None and resume:
            check_settings(output, existing.get("settings", {}), settings)
            self.reopen()
            return {**existing, "resumed": int(existing.get("resumed", 0)) + 1}
        if (output.exists() or work_path(output, plane_file).exists()) and not overwrite:
            raise FM2SError(f"output '{output}' appeared while this run prepared: it was left "
                            "as it is; pass --overwrite to replace it")
        for path in {output, work_path(output, plane_file), *leftovers(output)}:
            remove(path)
        record = {"command": command, "settings": settings,
                  "started": datetime.now(UTC).isoformat(timespec="seconds")}
        try:
            self.create(record)
        except OSError as exc:  # nothing was kept
            raise FM2SError(os_message(exc, output, kept=False)) from None
        return record

    def kept_package(self, channel: int, sha256: str) -> bytes:
        """The bioimage.io package of ``channel``'s model, built right after training (it
        needs the torch model and the training planes) and kept beside the model for a
        resumed run."""
        path = self.models / f"c{channel}.zip"
        if not path.is_file() or hashlib.sha256(_package_onnx(path)).hexdigest() != sha256:
            raise FM2SError(f"the interrupted run kept the model of channel {channel} but no "
                            "bioimage.io package of it (it was started without --save-model "
                            "NAME.zip): save the ONNX model instead (--save-model NAME.onnx), or "
                            "pass --overwrite to train again")
        return path.read_bytes()

    @property
    def models(self):
        """The folder of the models a run keeps for its resumption (in the run folder)."""
        return self.run_dir / "models"

    @property
    def _levels(self) -> list:
        shapes = self.image.level_shapes if self.plane_file is None else \
            self.image.level_shapes[:1]
        return list(zip(self.image.multiscale["datasets"], shapes))

    def create(self, record: dict | None = None, resumable: bool = True) -> OutputImage:
        """Create the arrays, marked as a running output with the run's ``record``.

        ``resumable=False`` (samples, benchmarks): chunks are written without markers, and
        :meth:`commit` checks only that they exist."""
        self.resumable = resumable
        try:
            self._create(record)
        except BaseException:  # nothing of value yet: leave nothing
            self.abort()
            raise
        return self

    def _create(self, record: dict | None) -> None:
        self.group = zarr.open_group(zarr_store(self.zarr_path), mode="w-",
                                     zarr_format=self.fmt.zarr_format,
                                     attributes={"fm2s": {"state": RUNNING,
                                                          "run": record or {}}})
        for level, (dataset, shape) in enumerate(self._levels):
            shards = self._shards(level)
            self.arrays.append(self.group.create_array(
                dataset["path"], shape=shape, chunks=write_chunks(shape), dtype=self.dtype,
                **({"shards": shards} if shards is not None else {}),
                compressors=self.fmt.compressor(), fill_value=0,
                config={"write_empty_chunks": True}, **self.fmt.array_options(self.image.axes)))
        if self.resumable and not is_remote(self.run_dir):
            (self.run_dir / "models").mkdir(parents=True, exist_ok=True)

    def reopen(self) -> OutputImage:
        """Open the arrays of an unfinished output to go on writing them (removing the
        temporary files of chunk writes that a killed run left)."""
        if not is_remote(self.zarr_path):  # an object store writes an object whole
            for path in self.zarr_path.rglob("*.partial"):
                if _PARTIAL.fullmatch(path.name):
                    path.unlink(missing_ok=True)
        self.group = zarr.open_group(zarr_store(self.zarr_path), mode="r+")
        for level, (dataset, shape) in enumerate(self._levels):
            try:
                array = self.group[dataset["path"]]
            except KeyError:
                array = None
            if (array is None or tuple(array.shape) != tuple(shape)
                    or array.dtype != self.dtype or array.chunks != write_chunks(shape)
                    or getattr(array, "shards", None) != self._shards(level)):
                raise FM2SError(f"the unfinished output '{self.path}' does not hold the arrays "
                                f"this run writes (level {dataset['path']}): pass --overwrite "
                                "to start over")
            self.arrays.append(array)
        if not is_remote(self.run_dir):
            (self.run_dir / "models").mkdir(parents=True, exist_ok=True)
        return self

    def _shards(self, level: int) -> tuple[int, ...] | None:
        return None if self.shards is None else tuple(self.shards[level])

    def units(self, level: int) -> int:
        """The chunks (a sharded output: shards) of ``level``: what a task writes whole."""
        array = self.arrays[level]
        grid = getattr(array, "shards", None) or array.chunks
        return math.prod(-(-n // g) for n, g in zip(array.shape, grid))

    def missing_chunks(self) -> list[str]:
        """Levels with chunks (shards) that were not written (``'level 0: 3 of 12 chunks
        missing'``)."""
        missing = []
        for level, ((dataset, _), array) in enumerate(zip(self._levels, self.arrays)):
            total, what = self.units(level), ("shards" if getattr(array, "shards", None)
                                             else "chunks")
            done = _written(array, total)
            if self.resumable:
                done = min(done, len(self.done.listing(level)))
            if done != total:
                missing.append(f"level {dataset['path']}: {total - done} of {total} {what} "
                               "missing")
        return missing

    def chunks_done(self) -> int:
        """Chunks marked as written, over all levels."""
        return sum(len(self.done.listing(level)) for level in range(len(self.arrays)))

    def attributes(self, provenance: dict) -> dict:
        """Group attributes: the input's NGFF metadata in the output's version, plus provenance."""
        ms = copy.deepcopy(self.image.multiscale)
        ms["type"] = "mean"
        ms["metadata"] = {"description": "levels after the first: block means of the denoised "
                                         "level above, computed by fm2s-tile"}
        attrs = self.fmt.group_attrs(ms, copy.deepcopy(self.image.omero))
        return {**copy.deepcopy(self.image.extra), **attrs,
                "fm2s": {**provenance, "state": COMPLETE}}

    def commit(self, provenance: dict) -> None:
        """Check every chunk was written, write the metadata (the complete state last) and
        remove the run folder; a PNG or TIFF is written and renamed to its path."""
        missing = self.missing_chunks()
        if missing:
            raise FM2SError(f"the output was not completed: {'; '.join(missing)} (a worker "
                            f"could not write to '{self.zarr_path.parent}'? every worker must "
                            "see the output folder at the same path); it is kept: rerun with "
                            "--resume once that is fixed")
        if self.plane_file is None:
            try:
                self.group.attrs.put(self.attributes(provenance))
            except OSError as exc:  # name the metadata file
                meta = "zarr.json" if self.fmt.zarr_format == 3 else ".zattrs"
                raise OSError(exc.errno, exc.strerror, str(self.zarr_path / meta)) from None
            try:
                remove(self.run_dir)
            except OSError:  # the image is complete: a run folder left is harmless
                pass
            return
        part = part_path(self.path)
        try:
            self._write_plane_file(part, provenance)
            os.replace(part, self.path)
        finally:
            part.unlink(missing_ok=True)
        try:
            remove(self.zarr_path)
        except OSError:
            pass

    def _write_plane_file(self, target: Path, provenance: dict) -> None:
        level0 = self.arrays[0]
        text = json.dumps({"fm2s": provenance})
        if self.plane_file is PNG:
            from PIL import Image as PILImage
            from PIL.PngImagePlugin import PngInfo

            info = PngInfo()
            info.add_text("fm2s", text)
            PILImage.fromarray(level0[:]).save(target, format="PNG", pnginfo=info)
            return
        assert self.plane_file is TIFF
        import tifffile

        h, w = level0.shape
        t = TIFF_TILE

        def tiles():  # row-major tiles, read from the zarr one band of rows at a time
            for y in range(0, h, t):
                band = level0[y:y + t, :]
                for x in range(0, w, t):
                    tile = np.zeros((t, t), level0.dtype)
                    part = band[:, x:x + t]
                    tile[:part.shape[0], :part.shape[1]] = part
                    yield tile

        tifffile.imwrite(target, tiles(), shape=(h, w), dtype=level0.dtype, tile=(t, t),
                         photometric="minisblack", description=text, metadata=None,
                         bigtiff=h * w * level0.dtype.itemsize > 2**31)

    def abort(self) -> None:
        """Remove everything written (for callers that do not resume: samples, benchmarks)."""
        for path in (self.zarr_path, part_path(self.path)):
            remove(path)
