"""Image volumes in and out: OME-Zarr (NGFF 0.4 on zarr v2, 0.5 on zarr v3), plain zarr
arrays and TIFF stacks, read lazily as dask arrays; OME-Zarr written with the input's
metadata and a pyramid regenerated from the denoised data.

Everything here is I/O: the denoising itself happens on dask arrays (:mod:`fm2s.tiling`).
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
import zarr

from .api import cast_like
from .errors import FM2SError

AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
NGFF_VERSIONS = ("0.4", "0.5")
TIFF_SUFFIXES = (".tif", ".tiff")
WRITE_CHUNK = 1024  # YX chunk side of the output; every other axis has chunk 1
_TIFF_AXES = {"T": "t", "Z": "z", "C": "c", "Y": "y", "X": "x"}


def is_url(source: str) -> bool:
    """Whether ``source`` is an http(s) URL."""
    return str(source).startswith(("http://", "https://"))


def check_axes(axes: str, ndim: int, where: str) -> str:
    """Validate an axes string such as ``tczyx`` against an array's dimensions."""
    axes = axes.lower()
    order = "tczyx"
    if len(axes) != ndim:
        raise FM2SError(f"{where} has {ndim} dimensions but axes '{axes}' name {len(axes)}: "
                        f"give one letter per dimension, e.g. --axes {order[-ndim:]}")
    if (not set(axes) <= set(order) or len(set(axes)) != len(axes)
            or not axes.endswith("yx") or list(axes) != sorted(axes, key=order.index)):
        raise FM2SError(f"axes '{axes}' of {where} are not an ordered subset of t, c, z, y, x "
                        "ending in y, x: fm2s-tile reads tczyx-ordered data (e.g. tyx, czyx)")
    return axes


@dataclass
class Volume:
    """A lazily read image volume and the metadata its denoised copy carries.

    Attributes
    ----------
    data
        Level 0 as a dask array, dimensions in the order of ``axes``.
    axes
        Axis letters, an ordered subset of ``tczyx`` ending in ``yx``.
    source
        Path or URL it was read from.
    kind
        What was found (``OME-Zarr``, ``zarr array``, ``ImageJ TIFF``, ``OME-TIFF``, ``TIFF``).
    ngff
        NGFF version the output is written in.
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
    """

    data: da.Array
    axes: str
    source: str
    kind: str
    ngff: str
    multiscale: dict
    level_shapes: list[tuple[int, ...]]
    omero: dict | None = None
    extra: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        """Number of channels (1 without a c axis)."""
        return self.data.shape[self.axes.index("c")] if "c" in self.axes else 1

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


def _open_zarr(source: str, axes: str | None, ngff: str | None) -> Volume:
    try:
        node = zarr.open(store=source, mode="r")
    except Exception as exc:  # zarr raises several types for "not zarr"
        raise FM2SError(f"cannot open '{source}' as zarr ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'no zarr metadata'}): "
                        "pass an OME-Zarr image, a zarr array, a TIFF or PNG file") from None
    notes: list[str] = []
    if isinstance(node, zarr.Array):
        if axes is None:
            if node.ndim != 2:
                raise FM2SError(f"'{source}' is a plain zarr array of shape {node.shape} without "
                                "axes metadata: say what its dimensions are with --axes, "
                                f"e.g. --axes {'tczyx'[-node.ndim:]}")
            axes = "yx"
        axes = check_axes(axes, node.ndim, f"'{source}'")
        fmt = node.metadata.zarr_format
        name = Path(source.rstrip("/")).name
        return Volume(da.from_zarr(node), axes, source, "zarr array",
                      ngff or ("0.4" if fmt == 2 else "0.5"),
                      _multiscale_for(axes, {}, {}, name), [node.shape],
                      notes=["no OME metadata: scale 1 on every axis, one pyramid level"])
    attrs = node.attrs.asdict()
    if "multiscales" not in attrs and "ome" not in attrs and "bioformats2raw.layout" in attrs:
        notes.append("bioformats2raw layout: reading its first image, series '0'")
        source = source.rstrip("/") + "/0"
        try:
            node = zarr.open_group(store=source, mode="r")
        except Exception:
            raise FM2SError(f"'{source}' (series 0 of a bioformats2raw layout) cannot be "
                            "opened: pass the path of one image") from None
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
    if version not in NGFF_VERSIONS:
        raise FM2SError(f"'{source}' is OME-Zarr {version}: fm2s-tile reads NGFF 0.4 and 0.5; "
                        "convert it first (e.g. with ome-zarr-py or bioformats2raw)")
    if len(multiscales) > 1:
        notes.append(f"{len(multiscales)} multiscales: denoising the first, '{ms.get('name')}'")
    try:
        axis_names = [str(a["name"] if isinstance(a, dict) else a).lower() for a in ms["axes"]]
        levels = [node[d["path"]] for d in ms["datasets"]]
    except (KeyError, TypeError) as exc:
        raise FM2SError(f"'{source}' has incomplete OME-Zarr metadata (missing {exc}): "
                        "check the image with an OME-Zarr validator") from None
    if any(a not in AXIS_TYPES for a in axis_names):
        raise FM2SError(f"'{source}' has axes {axis_names}: fm2s-tile reads axes named t, c, z, "
                        "y, x; rename them or convert the image")
    names = check_axes("".join(axis_names), levels[0].ndim, f"'{source}'")
    if axes is not None and axes.lower() != names:
        raise FM2SError(f"--axes {axes} contradicts the input's OME metadata (axes {names}): "
                        "leave --axes out for OME-Zarr input")
    extra = {k: v for k, v in attrs.items() if k not in ("ome", "multiscales", "omero", "fm2s")}
    return Volume(da.from_zarr(levels[0]), names, source, "OME-Zarr", version, ms,
                  [lv.shape for lv in levels], omero=copy.deepcopy(meta.get("omero")),
                  extra=extra, notes=notes)


class _TiffPlanes:
    """Picklable lazy reader of one TIFF series (tifffile's zarr interface, opened per process)."""

    def __init__(self, path: str, series: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.series, self.shape, self.dtype = path, series, shape, np.dtype(dtype)
        self.ndim = len(shape)
        self._array = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_array", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._array, self._lock = None, threading.Lock()

    def __getitem__(self, index):
        with self._lock:
            if self._array is None:
                store = tifffile.imread(self.path, aszarr=True, series=self.series, level=0)
                self._array = zarr.open(store, mode="r")
            return self._array[index]


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


def _open_tiff(path: Path, axes: str | None, ngff: str | None) -> Volume:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            found = series.axes
            shape, dtype = tuple(series.shape), series.dtype
            level_shapes = [tuple(lv.shape) for lv in series.levels]
            if axes is None:
                unknown = [a for a in found if a not in _TIFF_AXES]
                if unknown:
                    raise FM2SError(
                        f"'{path}' has dimensions '{found}' (shape {shape}); fm2s-tile cannot "
                        f"tell what '{''.join(unknown)}' is: pass --axes, e.g. --axes "
                        f"{'tczyx'[-len(shape):]}" + (" (an RGB image cannot be denoised as "
                                                       "one channel)" if "S" in found else ""))
                axes = "".join(_TIFF_AXES[a] for a in found)
            stored = axes.lower()
            # ImageJ stores TZCYX: read the planes in tczyx order (a lazy transpose)
            axes = "".join(sorted(stored, key=lambda a: "tczyx".index(a) if a in "tczyx" else 9))
            axes = check_axes(axes if stored.endswith("yx") else stored, len(shape), f"'{path}'")
            order = [stored.index(a) for a in axes]
            scales, units, omero, kind = _tiff_metadata(tif, stored)
    except FM2SError:
        raise
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
        raise FM2SError(f"cannot read '{path}' as TIFF ({exc}): the file is damaged, truncated "
                        "or not an image") from None
    reader = _TiffPlanes(str(path), 0, shape, dtype)
    data = da.from_array(reader, chunks=(1,) * (len(shape) - 2) + shape[-2:], asarray=True,
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
    return Volume(data, axes, str(path), kind, ngff or "0.5", ms, level_shapes, omero=omero)


def open_volume(source: str | Path, axes: str | None = None, ngff: str | None = None) -> Volume:
    """Open an OME-Zarr image, a zarr array or a TIFF stack lazily.

    Parameters
    ----------
    source
        Local path or http(s) URL (zarr only) of the input.
    axes
        Axis letters for data without axes metadata (plain zarr, generic TIFF).
    ngff
        NGFF version of the output for input that is not OME-Zarr (default: 0.4 for a
        zarr v2 array, 0.5 otherwise). OME-Zarr input keeps its own version.

    Raises
    ------
    FM2SError
        Missing input, unreadable metadata, unsupported axes or NGFF version.
    """
    source = str(source)
    if ngff is not None and ngff not in NGFF_VERSIONS:
        raise FM2SError(f"NGFF version {ngff!r} is not one fm2s-tile writes: use 0.4 or 0.5")
    if is_url(source):
        return _open_zarr(source.rstrip("/"), axes, ngff)
    path = Path(source)
    if not path.exists():
        raise FM2SError(f"input '{path}' does not exist: check the path")
    if path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
        return _open_tiff(path, axes, ngff)
    if not path.is_dir():
        raise FM2SError(f"'{path}' is neither a zarr folder nor a TIFF stack: pass an "
                        "OME-Zarr image, a zarr array, a TIFF or PNG file")
    return _open_zarr(str(path), axes, ngff)


def default_output(source: str) -> Path:
    """Output path next to the input: ``cells.ome.zarr`` -> ``cells.fm2s.ome.zarr``.

    TIFF stacks give ``<stem>.fm2s.ome.zarr``; a URL gives the name in the current folder.
    """
    name = Path(str(source).rstrip("/")).name
    path = Path(name) if is_url(source) else Path(str(source).rstrip("/"))
    lower = name.lower()
    for ext in (".ome.zarr", ".zarr"):
        if lower.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".fm2s" + ext)
    for ext in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if lower.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".fm2s.ome.zarr")
    return path.with_name(name + ".fm2s.ome.zarr")


def write_chunks(shape: tuple[int, ...], side: int = WRITE_CHUNK) -> tuple[int, ...]:
    """Output chunks: one plane in every non-YX axis, up to ``side`` pixels in Y and X."""
    return (1,) * (len(shape) - 2) + tuple(min(n, side) for n in shape[-2:])


def _compressor(zarr_format: int):
    if zarr_format == 2:
        from numcodecs import Blosc

        return Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)
    return zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")


class OutputImage:
    """An OME-Zarr image being written: a hidden folder beside the target until :meth:`commit`.

    A failed or interrupted run leaves nothing at the output path (call :meth:`abort`).
    """

    def __init__(self, path: Path, volume: Volume, dtype: np.dtype) -> None:
        self.path = Path(path)
        self.volume = volume
        self.zarr_format = 2 if volume.ngff == "0.4" else 3
        self.tmp = self.path.with_name(f".{self.path.name}.part-{uuid.uuid4().hex[:8]}")
        self.group = zarr.open_group(self.tmp, mode="w-", zarr_format=self.zarr_format)
        self.arrays = []
        for dataset, shape in zip(volume.multiscale["datasets"], volume.level_shapes):
            kwargs = ({"chunk_key_encoding": {"name": "v2", "separator": "/"}}
                      if self.zarr_format == 2 else {"dimension_names": list(volume.axes)})
            self.arrays.append(self.group.create_array(
                dataset["path"], shape=shape, chunks=write_chunks(shape), dtype=dtype,
                compressors=_compressor(self.zarr_format), fill_value=0, **kwargs))

    def attributes(self, provenance: dict) -> dict:
        """Group attributes: the input's NGFF metadata in the output's version, plus provenance."""
        ms = copy.deepcopy(self.volume.multiscale)
        ms["type"] = "mean"
        ms["metadata"] = {"description": "levels after the first: block means of the denoised "
                                         "level above, computed by fm2s-tile"}
        image: dict = {"multiscales": [ms]}
        if self.volume.omero is not None:
            image["omero"] = self.volume.omero
        if self.volume.ngff == "0.4":
            ms["version"] = "0.4"
            attrs = dict(image)
        else:
            attrs = {"ome": {"version": "0.5", **image}}
        return {**copy.deepcopy(self.volume.extra), **attrs, "fm2s": provenance}

    def commit(self, provenance: dict, overwrite: bool = False) -> None:
        """Write the metadata and move the finished image to its path."""
        self.group.attrs.update(self.attributes(provenance))
        old = None
        if self.path.exists():
            if not overwrite:
                raise FM2SError(f"output '{self.path}' appeared while writing: it was left as "
                                "it is; pass --overwrite to replace it")
            old = self.path.with_name(f".{self.path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()

    def abort(self) -> None:
        """Remove the partial output."""
        shutil.rmtree(self.tmp, ignore_errors=True)


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


def describe(volume: Volume) -> str:
    """Several lines saying what was found (``fm2s-tile info``)."""
    shape = volume.data.shape
    x = " x ".join(str(n) for n in shape)
    chunks = " x ".join(str(c[0]) for c in volume.data.chunks)
    nbytes = math.prod(shape) * volume.data.dtype.itemsize
    version = (f"NGFF {volume.ngff}" if volume.kind == "OME-Zarr"
               else f"written as OME-Zarr NGFF {volume.ngff}")
    lines = [f"{volume.source}: {volume.kind} ({version})",
             f"  axes {volume.axes}, shape {x}, {volume.data.dtype}, chunks {chunks}, "
             f"{nbytes / 1e9:.3g} GB",
             f"  levels: {len(volume.level_shapes)} ("
             + ", ".join("x".join(map(str, s)) for s in volume.level_shapes) + ")"]
    transforms = volume.multiscale["datasets"][0].get("coordinateTransformations", [])
    scale = next((t.get("scale") for t in transforms if t.get("type") == "scale"), None)
    if scale:
        units = {a.get("name"): a.get("unit", "") for a in volume.multiscale["axes"]
                 if isinstance(a, dict)}
        lines.append("  scale: " + ", ".join(f"{a} {s:g} {units.get(a) or ''}".rstrip()
                                             for a, s in zip(volume.axes, scale) if a != "c"))
    labels = [c.get("label", "") for c in (volume.omero or {}).get("channels", [])]
    planes = volume.planes_per_channel
    lines.append(f"  channels: {volume.channels}" + (f" ({', '.join(labels)})" if labels else "")
                 + f"; {planes} plane(s) of {shape[-2]} x {shape[-1]} per channel")
    lines += [f"  note: {n}" for n in volume.notes]
    return "\n".join(lines)
