"""Collections of images: an HCS plate (NGFF 0.4 and 0.5), a bioformats2raw layout, or
several inputs (a folder, a glob, a list of paths). Their images are listed from the
metadata (plate -> wells -> fields; ``OME/series`` or the numbered groups), so a plate
or export behind http is listed as one on disk; only a folder of files is listed from
its directory.

Reading here is metadata only: the images themselves are opened by
:func:`fm2s.readers.open_image`, one at a time, by the job that denoises them.
"""

from __future__ import annotations

import copy
import fnmatch
import glob
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FM2SError, ParameterError
from .formats import NGFF, NgffFormat, is_zarr_name, plane_file_of
from .readers import TIFF_SUFFIXES
from .stores import is_http, is_url
from .writers import fm2s_path

PLATE, EXPORT, IMAGES = "HCS plate", "bioformats2raw layout", "images"

#: the OME-XML of a bioformats2raw layout, carried over as it is
OME_XML = "OME/METADATA.ome.xml"

_ZARR_META = ("zarr.json", ".zattrs", ".zgroup", ".zarray")


@dataclass(frozen=True)
class Member:
    """One image of a collection.

    ``name`` is what a user selects and reads (``B/3/0``, series ``1``, ``cells.png``);
    ``source`` where it is read; ``path`` where its output goes inside the collection's
    output (None: beside its input, by the single-image rules).
    """

    name: str
    source: str
    path: str | None


@dataclass(frozen=True)
class Collection:
    """Images denoised in one run, and the layout their outputs are written in.

    ``attrs`` are the root group's attributes of the output (the input's plate or layout
    metadata, selection applied), written once every image is complete; ``groups`` the
    attributes of the groups between the root and the images (wells, ``OME``), by path;
    ``files`` other files carried over as they are (the OME-XML), by path; ``beside``:
    images listed one by one (a list, a glob), whose outputs lie beside their inputs
    unless an output folder is given.
    """

    kind: str
    source: str
    members: list[Member]
    ngff: NgffFormat | None = None
    attrs: dict = field(default_factory=dict)
    groups: dict[str, dict] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    beside: bool = False

    @property
    def is_zarr(self) -> bool:
        """Whether the output is one zarr hierarchy (a plate or a layout), not a folder."""
        return self.kind != IMAGES


def _join(source: str, path: str) -> str:
    return f"{source.rstrip('/')}/{path}"


def _attrs(source: str, storage_options: dict | None = None) -> dict | None:
    """A zarr group's attributes (None: not a zarr group)."""
    import zarr

    options = {"storage_options": storage_options} if storage_options else {}
    try:
        node = zarr.open_group(store=source, mode="r", **options)
    except Exception:  # zarr raises several types for "not a group"
        return None
    return node.attrs.asdict()


def _version(attrs: dict, source: str) -> tuple[dict, NgffFormat]:
    """The OME metadata of a group's attributes and its NGFF version."""
    if "ome" in attrs:
        meta, version = attrs["ome"], str(attrs["ome"].get("version", ""))
    else:
        meta = attrs
        inner = attrs.get("plate") or attrs.get("well") or {}
        version = str(inner.get("version", "0.4")) if isinstance(inner, dict) else "0.4"
    if version not in NGFF:
        raise FM2SError(f"'{source}' is OME-Zarr {version}: fm2s-tile reads NGFF 0.4 and 0.5; "
                        "convert it first")
    return meta, NGFF[version]


#: the ome-zarr-models class of plate and well metadata: (module, class) in v04 / v05
_MODELS = {"plate": ("plate", "Plate"), "well": ("well_types", "WellMeta")}


def _validate(key: str, meta: dict, fmt: NgffFormat, where: str) -> None:
    """Check plate or well metadata against the NGFF schema (ome-zarr-models)."""
    import importlib
    import warnings

    import pydantic

    package = "v04" if fmt.zarr_format == 2 else "v05"
    module, name = _MODELS[key]
    model = getattr(importlib.import_module(f"ome_zarr_models.{package}.{module}"), name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.model_validate(meta[key])
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise FM2SError(f"'{where}' has {key} metadata that is not valid NGFF "
                        f"{fmt.version} ({loc}: {first['msg']}): fix its metadata") from None


def _with_meta(fmt: NgffFormat, meta: dict, extra: dict) -> dict:
    """Group attributes of ``fmt`` holding the OME metadata ``meta`` (and ``extra``)."""
    if fmt.zarr_format == 3:
        return {**extra, "ome": {"version": fmt.version, **meta}}
    return {**extra, **meta}


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _plate(source: str, attrs: dict, patterns: tuple[str, ...]) -> Collection:
    meta, fmt = _version(attrs, source)
    _validate("plate", meta, fmt, source)
    plate = copy.deepcopy(meta["plate"])
    members, groups, wells = [], {}, []
    for well in plate["wells"]:
        wpath = str(well["path"])
        wattrs = _attrs(_join(source, wpath))
        if wattrs is None:
            raise FM2SError(f"'{source}': well '{wpath}' of its plate metadata cannot be "
                            "opened as a zarr group: check the plate with an OME-Zarr validator")
        wmeta, wfmt = _version(wattrs, _join(source, wpath))
        if "well" not in wmeta:
            raise FM2SError(f"'{_join(source, wpath)}' has no well metadata: check the plate "
                            "with an OME-Zarr validator")
        _validate("well", wmeta, wfmt, _join(source, wpath))
        images = [im for im in wmeta["well"]["images"]
                  if _matches(f"{wpath}/{im['path']}", patterns)]
        if not images:
            continue
        wells.append(well)
        members += [Member(f"{wpath}/{im['path']}", _join(source, f"{wpath}/{im['path']}"),
                           f"{wpath}/{im['path']}") for im in images]
        well_meta = {**copy.deepcopy(wmeta), "well": {**wmeta["well"], "images": images}}
        well_meta.pop("version", None)
        extra = {k: v for k, v in wattrs.items() if k not in ("ome", "well", "fm2s")}
        groups[wpath] = _with_meta(fmt, well_meta, extra)
    plate["wells"] = wells
    root = {k: v for k, v in meta.items() if k != "version"}
    root["plate"] = plate
    extra = {k: v for k, v in attrs.items() if k not in ("ome", "plate", "fm2s")}
    collection = Collection(PLATE, source, members, fmt, _with_meta(fmt, root, extra), groups)
    if "bioformats2raw.layout" in meta:  # a plate exported by bioformats2raw: its OME-XML
        return _with_ome_xml(collection, source, attrs, fmt)
    return collection


def _with_ome_xml(collection: Collection, source: str, attrs: dict,
                  fmt: NgffFormat) -> Collection:
    ome = _attrs(_join(source, "OME"))
    if ome is None:
        return collection
    groups = {**collection.groups, "OME": ome}
    return Collection(collection.kind, source, collection.members, fmt, collection.attrs,
                      groups, {OME_XML: _join(source, OME_XML)})


def _series(source: str, attrs: dict) -> tuple[list[str], dict | None]:
    """The series of a bioformats2raw layout: from ``OME/series``, else the numbered groups
    from 0 up to the first one missing; and the ``OME`` group's attributes."""
    ome = _attrs(_join(source, "OME"))
    listed = None
    if ome is not None:
        listed = ome.get("ome", ome).get("series")
    if isinstance(listed, list) and listed:
        return [str(s) for s in listed], ome
    series = []
    while _attrs(_join(source, str(len(series)))) is not None:
        series.append(str(len(series)))
    return series, ome


def _export(source: str, attrs: dict, patterns: tuple[str, ...]) -> Collection:
    fmt = NGFF["0.5"] if "ome" in attrs else NGFF["0.4"]
    series, ome = _series(source, attrs)
    if not series:
        raise FM2SError(f"'{source}' is a bioformats2raw layout without series (no OME/series "
                        "and no group '0'): check the export")
    chosen = [s for s in series if _matches(s, patterns)]
    members = [Member(s, _join(source, s), s) for s in chosen]
    root = {k: v for k, v in attrs.items() if k != "fm2s"}
    groups, files = {}, {}
    if ome is not None:
        ome = copy.deepcopy(ome)
        inner = ome.get("ome", ome)
        if "series" in inner:
            inner["series"] = chosen
        groups["OME"] = ome
        files[OME_XML] = _join(source, OME_XML)
    return Collection(EXPORT, source, members, fmt, root, groups, files)


def _is_zarr_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in _ZARR_META)


def _is_image_file(path: Path) -> bool:
    lower = path.name.lower()
    if path.is_dir():
        return is_zarr_name(lower) and _is_zarr_dir(path)
    return path.is_file() and (lower.endswith(TIFF_SUFFIXES) or plane_file_of(lower) is not None)


def _images(source: str, paths: list[Path], patterns: tuple[str, ...],
            beside: bool = False) -> Collection:
    members = [Member(p.name, str(p.absolute()), None) for p in paths
               if _matches(p.name, patterns)]
    names = [m.name for m in members]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FM2SError(f"two inputs are named '{twice[0]}': their outputs would collide; "
                        "denoise them in separate runs")
    return Collection(IMAGES, source, members, beside=beside)


def _selection(images: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (images or "").split(",") if p.strip())


def open_collection(sources: list[str] | tuple[str, ...] | str,
                    images: str | None = None,
                    storage_options: dict | None = None) -> Collection | None:
    """The collection ``sources`` name, or None when they name one image.

    Parameters
    ----------
    sources
        One path or URL: an HCS plate, a bioformats2raw layout, a folder of images (PNG,
        TIFF, OME-Zarr) or a glob pattern of them; or several paths of images.
    images
        Comma-separated patterns (``fnmatch``) of the images to take: fields of a plate
        (``B/3/*``), series of a layout (``0,2``), file names of a folder (``*_1.png``).
        Default: all.
    storage_options
        fsspec options of a URL (endpoint, credentials).

    Raises
    ------
    FM2SError
        Unreadable or invalid plate, well or layout metadata; no image selected.
    """
    sources = [sources] if isinstance(sources, str | Path) else [str(s) for s in sources]
    patterns = _selection(images)
    if not sources:
        raise ParameterError("source", None, "give an input")
    collection = None
    if len(sources) > 1:
        collection = _images(", ".join(sources), [Path(s) for s in sources], patterns,
                             beside=True)
        missing = [s for s in sources if not Path(s).exists()]
        if missing:
            raise FM2SError(f"input '{missing[0]}' does not exist: check the path")
    else:
        source = sources[0]
        local = None if is_url(source) else Path(source)
        if local is not None and not local.exists() and glob.has_magic(source):
            found = sorted(Path(p) for p in glob.glob(source))
            found = [p for p in found if _is_image_file(p)]
            if not found:
                raise FM2SError(f"no image matches '{source}' (PNG, TIFF or OME-Zarr): check "
                                "the pattern")
            collection = _images(source, found, patterns, beside=True)
        elif local is not None and local.is_dir() and not _is_zarr_dir(local):
            found = sorted(p for p in local.iterdir()
                           if not p.name.startswith(".") and _is_image_file(p))
            if not found:
                raise FM2SError(f"folder '{source}' holds no image (PNG, TIFF or OME-Zarr): "
                                "pass a folder of images, a plate or an image")
            collection = _images(str(local.absolute()), found, patterns)
        elif local is None or local.is_dir():
            source = source.rstrip("/") if is_url(source) else str(local.absolute())
            attrs = _attrs(source, storage_options)
            if attrs is None:
                return None
            meta = attrs.get("ome", attrs)
            if is_url(source) and not is_http(source) and (
                    "plate" in meta or ("bioformats2raw.layout" in meta
                                        and "multiscales" not in meta)):
                raise FM2SError(f"'{source}' is a plate or a bioformats2raw layout on object "
                                "storage, which fm2s-tile does not read yet: pass one image "
                                "inside it, or copy it to a local folder")
            if "plate" in meta:
                collection = _plate(source, attrs, patterns)
            elif "bioformats2raw.layout" in meta and "multiscales" not in meta:
                collection = _export(source, attrs, patterns)
    if collection is None:
        if patterns:
            raise ParameterError("images", images, "selects images of a plate, a "
                                 "bioformats2raw layout or a folder: this input is one image")
        return None
    if not collection.members:
        raise ParameterError("images", images, f"selects no image of '{collection.source}': "
                             "check the patterns (e.g. 'B/3/*' for the fields of well B/3)")
    return collection


def read_file(source: str) -> bytes:
    """A file's bytes, from a local path or a URL (fsspec)."""
    if is_url(source):
        import fsspec

        with fsspec.open(source, "rb") as f:
            return f.read()
    return Path(source).read_bytes()


def default_collection_output(collection: Collection) -> Path | None:
    """``plate.ome.zarr`` -> ``plate.fm2s.ome.zarr``; a folder ``caps`` -> ``caps.fm2s``;
    a URL: its name in the current folder. Images listed one by one (a list, a glob) have
    no collection output (None): each output lies beside its input."""
    if collection.beside:
        return None
    return fm2s_path(collection.source, other=".fm2s.ome.zarr" if collection.is_zarr
                     else ".fm2s")


__all__ = ["PLATE", "EXPORT", "IMAGES", "OME_XML", "Member", "Collection", "open_collection",
           "read_file", "default_collection_output"]
