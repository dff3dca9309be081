"""Reading every input as one kind of object, :class:`Image`: OME-Zarr (NGFF 0.4 and 0.5,
local or at a URL: http(s), s3 and any fsspec protocol installed), plain zarr arrays,
TIFF stacks and 2D PNG/TIFF images, lazily as dask arrays
with the metadata their denoised copy carries. A 2D image is an image with axes ``yx``."""

from __future__ import annotations

import copy
import logging
import math
import numbers
import struct
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
import zarr
from dask.base import tokenize

from .errors import FM2SError, ParameterError
from .formats import NGFF, PNG, TIFF, V04, V05, NgffFormat, PlaneFile, ngff_format
from .pixels import check_pixel_type, check_plane_shape
from .stores import check_store, is_http, is_url, location, store_problem

AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
TIFF_SUFFIXES = (".tif", ".tiff")
_TIFF_AXES = {"T": "t", "Z": "z", "C": "c", "Y": "y", "X": "x"}


def check_axes(axes: str, ndim: int, where: str) -> str:
    """Validate an axes string such as ``tczyx`` against an array's dimensions."""
    axes = axes.lower()
    order = "tczyx"
    if len(axes) != ndim:
        raise ParameterError("axes", axes, f"{where} has {ndim} dimensions but the axes name "
                             f"{len(axes)}: give one letter per dimension, e.g. "
                             f"{order[-ndim:]}")
    if (not set(axes) <= set(order) or len(set(axes)) != len(axes)
            or not axes.endswith("yx") or list(axes) != sorted(axes, key=order.index)):
        raise ParameterError("axes", axes, f"the axes of {where} are not an ordered subset of "
                             "t, c, z, y, x ending in y, x: fm2s-tile reads tczyx-ordered data "
                             "(e.g. tyx, czyx)")
    return axes


@dataclass
class Image:
    """A lazily read image (a 2D plane, a stack, a timelapse) and the metadata its
    denoised copy carries.

    Attributes
    ----------
    data
        Level 0 as a dask array, dimensions in the order of ``axes``.
    axes
        Axis letters, an ordered subset of ``tczyx`` ending in ``yx``.
    source
        Path or URL it was read from (local paths made absolute).
    kind
        What was found (``OME-Zarr``, ``zarr array``, ``ImageJ TIFF``, ``OME-TIFF``,
        ``TIFF``, ``PNG``).
    ngff
        The NGFF version of the input, or the one its OME-Zarr copy is written in.
    multiscale
        The NGFF multiscale description (axes, datasets with their coordinate
        transformations, name, ...), without its version key.
    level_shapes
        Shape of each pyramid level, level 0 first.
    omero
        Channel (display) metadata, or None.
    extra
        Other group attributes, carried over as they are.
    notes
        Remarks for the user (``info`` prints them).
    plane_file
        For a single-plane PNG or TIFF file: its format (the default output format).
    """

    data: da.Array
    axes: str
    source: str
    kind: str
    ngff: NgffFormat
    multiscale: dict
    level_shapes: list[tuple[int, ...]]
    omero: dict | None = None
    extra: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plane_file: PlaneFile | None = None

    @property
    def channels(self) -> int:
        """Number of channels (1 without a c axis)."""
        return self.data.shape[self.axes.index("c")] if "c" in self.axes else 1

    @property
    def c_axis(self) -> int | None:
        """Index of the channel axis, or None."""
        return self.axes.index("c") if "c" in self.axes else None

    @property
    def planes_per_channel(self) -> int:
        """Number of YX planes in one channel (the product of the t and z sizes)."""
        return math.prod(self.data.shape[:-2]) // self.channels

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(H, W) of one plane."""
        return tuple(self.data.shape[-2:])

    def channel_planes(self, channel: int) -> da.Array:
        """The planes of one channel as a (P, H, W) dask array (P: product of t and z)."""
        data = self.data
        if "c" in self.axes:
            data = da.take(data, channel, axis=self.axes.index("c"))
        return data.reshape((-1,) + self.plane_shape)


def _multiscale_for(axes: str, scales: dict[str, float], units: dict[str, str],
                    name: str) -> dict:
    """A one-level NGFF multiscale for data that came without one (plain zarr, TIFF)."""
    ax = []
    for a in axes:
        entry = {"name": a, "type": AXIS_TYPES[a]}
        if a in units:
            entry["unit"] = units[a]
        ax.append(entry)
    scale = [float(scales.get(a, 1.0)) for a in axes]
    return {"name": name, "axes": ax,
            "datasets": [{"path": "0",
                          "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}


class _ZarrChunks:
    """A zarr array read chunk by chunk for dask, whose read errors name the chunk.

    A chunk that cannot be decoded (a damaged or truncated file) raises
    :class:`~fm2s.errors.FM2SError` naming the array and the chunk, in whatever process
    the dask task runs (it pickles with its array). A missing chunk is not an error: zarr
    reads it as the array's fill value.
    """

    def __init__(self, array: zarr.Array, where: str) -> None:
        self.array, self.where = array, where
        self.shape, self.dtype, self.ndim = tuple(array.shape), array.dtype, array.ndim
        self.chunks = tuple(array.chunks)

    def __getitem__(self, index):
        try:
            return self.array[index]
        except FM2SError:
            raise
        except Exception as exc:  # zarr and its codecs raise many types for bad bytes
            raise FM2SError(self._message(index, exc)) from None

    def _chunk_key(self, index) -> str:
        """The store key of the (first) chunk or shard ``index`` reads, e.g. ``c/0/1/0``."""
        index = index if isinstance(index, tuple) else (index,)
        start = []
        for i, n in zip(index, self.shape):
            if isinstance(i, slice):
                start.append(i.indices(n)[0])
            elif isinstance(i, numbers.Integral):
                start.append(int(i) % n if n else 0)
            else:
                start.append(int(np.min(i)) % n if np.size(i) and n else 0)
        start += [0] * (self.ndim - len(start))
        grid = getattr(self.array, "shards", None) or self.chunks
        coords = tuple(s // c for s, c in zip(start, grid))
        try:
            return self.array.metadata.encode_chunk_key(coords)
        except Exception:  # pragma: no cover - a zarr without the method
            return "/".join(map(str, coords))

    def _message(self, index, exc: Exception) -> str:
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        try:
            key = self._chunk_key(index)
        except Exception:  # pragma: no cover - an index of an unexpected form
            key = str(index)
        if isinstance(exc, OSError):
            fix = "check that it is readable (permissions, disk, network)"
        else:
            fix = "the file is damaged; restore it from a copy"
        return f"cannot read chunk {key} of '{self.where}' ({reason}): {fix}"


def _zarr_data(array: zarr.Array, where: str) -> da.Array:
    """A zarr array as a dask array of the same chunks whose read errors name the chunk."""
    return da.from_array(_ZarrChunks(array, where), chunks=array.chunks, asarray=True,
                         name=f"zarr-{tokenize(array, array.chunks)}",
                         meta=np.empty((0,) * array.ndim, array.dtype))


def _numbers(values) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
        for v in values)


def _check_transforms(transforms, ndim: int, names: str, owner: str, source: str) -> None:
    """Refuse coordinate transformations that do not give one value per axis."""
    fix = ("fix its OME-Zarr metadata (one value per axis, in the order of the axes) or "
           "convert the image")
    if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
        raise FM2SError(f"'{source}': the coordinateTransformations of {owner} are not a list "
                        f"of transformations: {fix}")
    for t in transforms:
        kind = t.get("type")
        if kind not in ("scale", "translation") or kind not in t:
            continue  # "identity", or given by a path: left to the NGFF validation
        values = t[kind]
        if not _numbers(values):
            raise FM2SError(f"'{source}': the {kind} of {owner} is {values!r}, not a list of "
                            f"finite numbers: {fix}")
        if len(values) != ndim:
            raise FM2SError(f"'{source}': the {kind} of {owner} has {len(values)} value(s) "
                            f"{values} for {ndim} axes ({names}): {fix}")


def _check_multiscale(ms: dict, levels: list, axis_names: list[str], source: str) -> None:
    """Refuse OME-Zarr metadata that does not fit its arrays (a scale per axis, ...)."""
    names = "".join(axis_names)
    for d, level in zip(ms["datasets"], levels):
        owner = f"dataset '{d.get('path')}'"
        if len(axis_names) != level.ndim:
            raise FM2SError(f"'{source}': its OME-Zarr metadata names {len(axis_names)} axes "
                            f"({', '.join(axis_names) or 'none'}) but {owner} has "
                            f"{level.ndim} dimensions {tuple(level.shape)}: fix the axes in "
                            "its metadata (one per dimension) or convert the image")
        if "coordinateTransformations" not in d:
            raise FM2SError(f"'{source}': {owner} has no coordinateTransformations in its "
                            "OME-Zarr metadata: add its scale (one value per axis) or "
                            "convert the image")
        _check_transforms(d["coordinateTransformations"], level.ndim, names, owner, source)
    if "coordinateTransformations" in ms:
        _check_transforms(ms["coordinateTransformations"], len(axis_names), names,
                          "the multiscale", source)


def _open_zarr(source: str, axes: str | None, ngff: NgffFormat | None,
               storage_options: dict | None = None) -> Image:
    options = {"storage_options": storage_options} if storage_options else {}
    try:
        node = zarr.open(store=source, mode="r", **options)
    except Exception as exc:  # zarr raises several types for "not zarr"
        problem = store_problem(exc, source) if is_url(source) else None
        if problem is not None:
            raise FM2SError(problem) from None
        raise FM2SError(f"cannot open '{source}' as zarr ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'no zarr metadata'}): "
                        "pass an OME-Zarr image, a zarr array, a TIFF or PNG file") from None
    notes: list[str] = []
    if isinstance(node, zarr.Array):
        if axes is None:
            if node.ndim != 2:
                raise ParameterError("axes", None, f"'{source}' is a plain zarr array of shape "
                                     f"{node.shape} without axes metadata: say what its "
                                     f"dimensions are, e.g. {'tczyx'[-node.ndim:]}")
            axes = "yx"
        axes = check_axes(axes, node.ndim, f"'{source}'")
        fmt = node.metadata.zarr_format
        name = Path(source.rstrip("/")).name
        return Image(_zarr_data(node, source), axes, source, "zarr array",
                      ngff or (V04 if fmt == 2 else V05),
                      _multiscale_for(axes, {}, {}, name), [node.shape],
                      notes=["no OME metadata: scale 1 on every axis, one pyramid level"])
    attrs = node.attrs.asdict()
    if "multiscales" not in attrs and "ome" not in attrs and "bioformats2raw.layout" in attrs:
        notes.append("bioformats2raw layout: reading its first image, series '0'")
        source = source.rstrip("/") + "/0"
        try:
            node = zarr.open_group(store=source, mode="r", **options)
        except Exception as exc:
            cause = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            raise FM2SError(f"'{source}' (series 0 of a bioformats2raw layout) cannot be "
                            f"opened ({cause}): pass the path of one image") from exc
        attrs = node.attrs.asdict()
    meta = attrs.get("ome", attrs)
    version = str(meta.get("version", "")) if "ome" in attrs else None
    multiscales = meta.get("multiscales")
    if not multiscales:
        kind = next((k for k in ("plate", "well", "labels") if k in meta), None)
        hint = ("pass one image inside it (e.g. PLATE/A/1/0)" if kind in ("plate", "well")
                else "pass an OME-Zarr image, or a zarr array with --axes")
        raise FM2SError(f"'{source}' is a zarr group without an OME-Zarr image (no multiscales"
                        f"{'; it holds an HCS ' + kind if kind else ''}): {hint}")
    ms = copy.deepcopy(multiscales[0])
    if version is None:
        version = str(ms.pop("version", "0.4"))
    ms.pop("version", None)
    if version not in NGFF:
        raise FM2SError(f"'{source}' is OME-Zarr {version}: fm2s-tile reads NGFF 0.4 and 0.5; "
                        "convert it first (e.g. with ome-zarr-py or bioformats2raw)")
    version = NGFF[version]
    if len(multiscales) > 1:
        notes.append(f"{len(multiscales)} multiscales: denoising the first, '{ms.get('name')}'")
    try:
        axis_names = [str(a["name"] if isinstance(a, dict) else a).lower() for a in ms["axes"]]
        paths = [str(d["path"]) for d in ms["datasets"]]
        levels = [node[p] for p in paths]
    except (KeyError, TypeError) as exc:
        raise FM2SError(f"'{source}' has incomplete OME-Zarr metadata (missing {exc}): "
                        "check the image with an OME-Zarr validator") from None
    if not levels:
        raise FM2SError(f"'{source}' has OME-Zarr metadata without datasets: check the image "
                        "with an OME-Zarr validator")
    not_arrays = [p for p, lv in zip(paths, levels) if not isinstance(lv, zarr.Array)]
    if not_arrays:
        raise FM2SError(f"'{source}': dataset '{not_arrays[0]}' of its OME-Zarr metadata is "
                        "not a zarr array: check the image with an OME-Zarr validator")
    if any(a not in AXIS_TYPES for a in axis_names):
        raise FM2SError(f"'{source}' has axes {axis_names}: fm2s-tile reads axes named t, c, z, "
                        "y, x; rename them or convert the image")
    _check_multiscale(ms, levels, axis_names, source)
    try:
        names = check_axes("".join(axis_names), levels[0].ndim, f"'{source}'")
    except ParameterError as exc:  # the axes come from the metadata, not from a parameter
        raise FM2SError(f"{exc.problem}; these axes come from its OME-Zarr metadata: fix "
                        "them there or convert the image") from None
    # what the denoised copy carries must be valid NGFF: refused here, before any work
    version.group_attrs(copy.deepcopy(ms), copy.deepcopy(meta.get("omero")), source=source)
    if axes is not None and axes.lower() != names:
        raise ParameterError("axes", axes, f"contradicts the input's OME metadata (axes "
                             f"{names}): leave it out for OME-Zarr input")
    extra = {k: v for k, v in attrs.items() if k not in ("ome", "multiscales", "omero", "fm2s")}
    return Image(_zarr_data(levels[0], f"{source.rstrip('/')}/{paths[0]}"), names, source,
                  "OME-Zarr", version, ms, [lv.shape for lv in levels],
                  omero=copy.deepcopy(meta.get("omero")), extra=extra, notes=notes)


class _TiffPlanes:
    """Picklable lazy reader of one TIFF series, opened per process.

    An uncompressed series stored in one piece (most stacks and large 2D images) is read
    through a memory map opened for each read, so a read costs only the rows it asks for;
    any other layout through tifffile's zarr interface (strips or tiles).
    """

    def __init__(self, path: str, series: int, shape: tuple[int, ...], dtype: np.dtype,
                 offset: int | None = None) -> None:
        self.path, self.series, self.shape, self.dtype = path, series, shape, np.dtype(dtype)
        self.offset = offset
        self.ndim = len(shape)
        self._array = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_array", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._array, self._lock = None, threading.Lock()

    def __getitem__(self, index):
        try:
            if self.offset is not None:
                mapped = np.memmap(self.path, self.dtype, "r", self.offset, self.shape)
                try:
                    return np.array(mapped[index], dtype=self.dtype.newbyteorder("="))
                finally:
                    del mapped
            with self._lock:
                if self._array is None:
                    store = tifffile.imread(self.path, aszarr=True, series=self.series, level=0)
                    self._array = zarr.open(store, mode="r")
                return self._array[index]
        except (OSError, ValueError, IndexError, struct.error, tifffile.TiffFileError) as exc:
            raise FM2SError(f"cannot read '{self.path}' as TIFF ({exc}): the file is damaged "
                            "or truncated") from None


def _tiff_metadata(tif: tifffile.TiffFile, axes: str) -> tuple[dict, dict, dict | None, str]:
    """Pixel sizes, units and channel names of an ImageJ or OME TIFF."""
    scales: dict[str, float] = {}
    units: dict[str, str] = {}
    omero = None
    kind = "TIFF"
    if tif.is_ome and tif.ome_metadata:
        kind = "OME-TIFF"
        try:
            image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
        except (KeyError, IndexError, TypeError, ValueError):
            pixels = {}
        for a, key in (("x", "PhysicalSizeX"), ("y", "PhysicalSizeY"), ("z", "PhysicalSizeZ"),
                       ("t", "TimeIncrement")):
            if key in pixels:
                scales[a] = float(pixels[key])
                default = "s" if a == "t" else "µm"
                units[a] = _ngff_unit(str(pixels.get(key + "Unit", default)))
        channels = pixels.get("Channel", [])
        channels = channels if isinstance(channels, list) else [channels]
        names = [str(ch.get("Name", f"channel {i}")) for i, ch in enumerate(channels)
                 if isinstance(ch, dict)]
        if "c" in axes and names:
            omero = {"channels": [{"label": n, "active": True} for n in names]}
    elif tif.is_imagej:
        kind = "ImageJ TIFF"
        meta = tif.imagej_metadata or {}
        unit = _ngff_unit(str(meta.get("unit", "")).replace("\\u00B5", "µ")) or None
        page = tif.pages.first
        for a, tag in (("x", "XResolution"), ("y", "YResolution")):
            res = page.tags.get(tag)
            if res is not None and res.value[0]:
                scales[a] = res.value[1] / res.value[0]
                if unit:
                    units[a] = unit
        if "spacing" in meta:
            scales["z"] = float(meta["spacing"])
            if unit:
                units["z"] = unit
        if meta.get("finterval"):
            scales["t"], units["t"] = float(meta["finterval"]), "second"
        labels = meta.get("Labels")
        if "c" in axes and isinstance(labels, list):
            n = tif.series[0].shape[axes.index("c")]
            if len(labels) >= n:
                omero = {"channels": [{"label": str(v), "active": True} for v in labels[:n]]}
    return scales, {a: u for a, u in units.items() if u}, omero, kind


_UNITS = {"µm": "micrometer", "um": "micrometer", "micron": "micrometer", "nm": "nanometer",
          "mm": "millimeter", "cm": "centimeter", "m": "meter", "s": "second", "sec": "second",
          "ms": "millisecond", "min": "minute", "h": "hour"}


def _ngff_unit(unit: str) -> str:
    """An NGFF (UDUNITS-2) unit name from a TIFF unit; '' when unknown."""
    unit = unit.strip()
    if unit in _UNITS.values():
        return unit
    return _UNITS.get(unit, _UNITS.get(unit.lower(), ""))


class _TiffLog(logging.Filter):
    """Holds back what tifffile logs while a file is opened: its errors (a page or value
    beyond the end of the file, a series that does not fit its pages) mean the file is
    damaged, and are reported as one; anything else is passed on afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger("tifffile")

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def __enter__(self) -> _TiffLog:
        self.logger.addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeFilter(self)

    def damage(self) -> str | None:
        """The first error tifffile logged, without the object it names; None if none."""
        for record in self.records:
            if record.levelno >= logging.ERROR:
                text = record.getMessage()
                if text.startswith("<") and "> " in text:
                    text = text.split("> ", 1)[1]
                return text.splitlines()[0][:200] if text else "error"
        return None

    def replay(self) -> None:
        for record in self.records:
            self.logger.handle(record)


def _last_page_end(series) -> int:
    """The end of the last page's pixel data in the file (0 when unknown)."""
    try:
        page = series.pages[-1]
        return max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
    except (AttributeError, IndexError, TypeError, ValueError, OSError,
            tifffile.TiffFileError):
        return 0


def _open_tiff(path: Path, axes: str | None, ngff: NgffFormat | None) -> Image:
    log = _TiffLog()
    try:
        with log, tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            damage = log.damage()
            file_size = path.stat().st_size
            if damage is None and _last_page_end(series) > file_size:
                damage = f"its last page ends at byte {_last_page_end(series)}"
            if damage is not None:
                raise FM2SError(f"'{path}' is damaged or truncated ({file_size} bytes; "
                                f"tifffile: {damage}): restore it from a copy")
            offset = series.dataoffset if len(series.levels) == 1 else None
            size = math.prod(series.shape) * series.dtype.itemsize
            if offset is not None and file_size < offset + size:
                raise FM2SError(f"'{path}' is truncated ({file_size} bytes, its image "
                                f"needs {offset + size}): the file is damaged; restore it from "
                                "a copy")
            found = series.axes
            shape, dtype = tuple(series.shape), series.dtype
            level_shapes = [tuple(lv.shape) for lv in series.levels]
            if axes is None:
                unknown = [a for a in found if a not in _TIFF_AXES]
                if unknown:
                    if "S" in found:
                        raise FM2SError(f"'{path}' is an RGB image (dimensions '{found}'): "
                                        "fm2s-tile denoises single-channel images; save each "
                                        "channel as a grayscale image")
                    raise ParameterError(
                        "axes", None, f"'{path}' has dimensions '{found}' (shape {shape}); "
                        f"fm2s-tile cannot tell what '{''.join(unknown)}' is: say what they "
                        f"are, e.g. {'tczyx'[-len(shape):]}")
                axes = "".join(_TIFF_AXES[a] for a in found)
            stored = axes.lower()
            # ImageJ stores TZCYX: read the planes in tczyx order (a lazy transpose)
            axes = "".join(sorted(stored, key=lambda a: "tczyx".index(a) if a in "tczyx" else 9))
            axes = check_axes(axes if stored.endswith("yx") else stored, len(shape), f"'{path}'")
            order = [stored.index(a) for a in axes]
            scales, units, omero, kind = _tiff_metadata(tif, stored)
    except FM2SError:
        raise
    except (OSError, ValueError, IndexError, struct.error, tifffile.TiffFileError) as exc:
        raise FM2SError(f"cannot read '{path}' as TIFF ({exc}): the file is damaged, truncated "
                        "or not an image") from None
    log.replay()  # tifffile's warnings about a readable file, as it would have logged them
    reader = _TiffPlanes(str(path), 0, shape, dtype, offset)
    chunks = (1,) * (len(shape) - 2) + _plane_chunks(shape)
    data = da.from_array(reader, chunks=chunks, asarray=True,
                         name=f"tiff-{uuid.uuid5(uuid.NAMESPACE_URL, str(path.resolve()))}",
                         meta=np.empty((0,) * len(shape), dtype)).transpose(order)
    shape = data.shape
    level_shapes = [tuple(lv[i] for i in order) for lv in level_shapes]
    ms = _multiscale_for(axes, scales, units, path.name)
    if len(level_shapes) > 1:  # an OME-TIFF pyramid: keep its levels
        base = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
        ms["datasets"] = [
            {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [
                s * shape[j] / lv[j] for j, s in enumerate(base)]}]}
            for i, lv in enumerate(level_shapes)]
    return Image(data, axes, str(path), kind, ngff or V05, ms, level_shapes, omero=omero,
                 plane_file=TIFF if axes == "yx" else None)


def _plane_chunks(shape: tuple[int, ...], side: int = 4096) -> tuple[int, int]:
    """YX chunks of a TIFF plane read lazily: bands of whole rows, at most ``side`` rows
    unless the plane is small (a large 2D image is never read in one piece)."""
    h, w = shape[-2:]
    rows = h if h * w <= side * side else max(1, side * side // w)
    return (min(h, rows), w)


def _open_png(path: Path, ngff: NgffFormat | None) -> Image:
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(path) as im:
            im.load()
            if im.mode == "P" or len(im.getbands()) > 1:
                raise FM2SError(f"'{path}' is a {im.mode} (colour) image: fm2s-tile denoises "
                                "single-channel images; save it as grayscale")
            pixels = np.asarray(im)
            if im.mode == "I" and pixels.min() >= 0 and pixels.max() <= 65535:
                pixels = pixels.astype(np.uint16)
            elif im.mode == "1":
                pixels = pixels.astype(np.uint8) * 255
    except FM2SError:
        raise
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as exc:
        raise FM2SError(f"cannot read '{path}' as PNG ({exc}): the file is damaged, "
                        "truncated or not an image") from None
    data = da.from_array(pixels, chunks=pixels.shape,
                         name=f"png-{uuid.uuid5(uuid.NAMESPACE_URL, str(path))}")
    return Image(data, "yx", str(path), "PNG", ngff or V05,
                 _multiscale_for("yx", {}, {}, path.name), [pixels.shape], plane_file=PNG)


def open_image(source: str | Path, axes: str | None = None, ngff: str | None = None,
               storage_options: dict | None = None) -> Image:
    """Open any input lazily: OME-Zarr image, zarr array, TIFF stack, 2D PNG or TIFF.

    Parameters
    ----------
    source
        Local path (made absolute here, so that tasks on other processes or machines
        find it) or URL (zarr only): http(s), ``s3://bucket/key`` or any protocol whose
        fsspec package is installed.
    axes
        Axis letters for data without axes metadata (plain zarr, generic TIFF).
    ngff
        NGFF version of the output for input that is not OME-Zarr (default: 0.4 for a
        zarr v2 array, 0.5 otherwise). OME-Zarr input keeps its own version.
    storage_options
        fsspec options of a URL (``endpoint_url``, ``anon``, ``profile``, ``key``,
        ``secret``); credentials not given come from the environment.

    Raises
    ------
    FM2SError
        Missing or damaged input, unreadable metadata, unsupported axes, pixel type or
        NGFF version, planes smaller than 8 x 8.
    """
    source = str(source)
    fmt = ngff_format(ngff) if ngff is not None else None
    if is_url(source):
        if not is_http(source):  # a missing bucket, wrong credentials: said before any work
            check_store(location(source, storage_options), "input")
        image = _open_zarr(source.rstrip("/"), axes, fmt, storage_options)
    else:
        path = Path(source).absolute()
        if not path.exists():
            raise FM2SError(f"input '{source}' does not exist: check the path")
        if path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
            image = _open_tiff(path, axes, fmt)
        elif path.suffix.lower() == ".png" and path.is_file():
            if axes is not None and axes.lower() != "yx":
                raise ParameterError("axes", axes, "a PNG image is one yx plane: leave it out")
            image = _open_png(path, fmt)
        elif path.is_dir():
            image = _open_zarr(str(path), axes, fmt)
        else:
            raise FM2SError(f"'{source}' is neither a zarr folder nor a TIFF or PNG file: pass "
                            "an OME-Zarr image, a zarr array, a TIFF or PNG file")
    check_plane_shape(image.data.shape, f"'{source}'")
    check_pixel_type(image.data.dtype, f"'{source}'")
    return image
