"""Output formats as objects: the NGFF versions (0.4 on zarr v2, 0.5 on zarr v3) and the
single-plane file formats (PNG, TIFF). Readers and writers ask these, not version strings."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import FM2SError, ParameterError


@dataclass(frozen=True)
class NgffFormat:
    """One NGFF version: where its metadata lives and how its arrays are laid out."""

    version: str
    zarr_format: int

    def group_attrs(self, multiscale: dict, omero: dict | None,
                    source: str | None = None) -> dict:
        """Group attributes holding one multiscale (and channel metadata), validated
        (``source``: the input they come from, for the message of an invalid one)."""
        image: dict = {"multiscales": [multiscale]}
        if omero is not None:
            image["omero"] = omero
        if self.zarr_format == 2:
            image["multiscales"] = [{**multiscale, "version": self.version}]
            attrs = image
        else:
            attrs = {"ome": {"version": self.version, **image}}
        self.validate(attrs, source)
        return attrs

    def validate(self, attrs: dict, source: str | None = None) -> None:
        """Check group attributes against the NGFF schema (ome-zarr-models); ``source``: the
        input they come from (read, not yet written), for the message."""
        import pydantic

        if self.zarr_format == 2:
            from ome_zarr_models.v04.image import ImageAttrs

            image = attrs
        else:
            from ome_zarr_models.v05.image import ImageAttrs

            image = attrs["ome"]
        try:
            ImageAttrs.model_validate({k: v for k, v in image.items() if k != "omero"
                                       or self.zarr_format == 2})
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            if source is not None:
                raise FM2SError(f"'{source}' has OME-Zarr metadata that is not valid NGFF "
                                f"{self.version} ({where}: {first['msg']}): fix its metadata "
                                "or convert the image") from None
            raise FM2SError(f"the input's OME-Zarr metadata cannot be written as NGFF "
                            f"{self.version} ({where}: {first['msg']}): fix the input's "
                            "metadata") from None

    def array_options(self, axes: str) -> dict:
        """Keyword arguments of ``zarr.create_array`` for an image array of this version."""
        if self.zarr_format == 2:
            return {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
        return {"dimension_names": list(axes)}

    def compressor(self):
        """Blosc-zstd in this zarr version's codec type."""
        if self.zarr_format == 2:
            from numcodecs import Blosc

            return Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)
        import zarr

        return zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")


V04 = NgffFormat("0.4", 2)
V05 = NgffFormat("0.5", 3)
NGFF = {f.version: f for f in (V04, V05)}


def ngff_format(version: str | None, default: NgffFormat = V05,
                name: str = "ngff") -> NgffFormat:
    """The :class:`NgffFormat` of a version string (None: ``default``)."""
    if version is None:
        return default
    if str(version) not in NGFF:
        raise ParameterError(name, version, "fm2s-tile writes NGFF 0.4 and 0.5: choose one")
    return NGFF[str(version)]


@dataclass(frozen=True)
class PlaneFile:
    """A single-plane image file format (PNG or TIFF)."""

    name: str
    suffixes: tuple[str, ...]
    dtypes: tuple[str, ...]


PNG = PlaneFile("PNG", (".png",), ("uint8", "uint16"))
TIFF = PlaneFile("TIFF", (".tif", ".tiff"), ())  # any integer or float type
PLANE_FILES = (PNG, TIFF)


def plane_file_of(name: str) -> PlaneFile | None:
    """The plane-file format a file name asks for (by its extension), or None."""
    lower = name.lower()
    if lower.endswith((".ome.tif", ".ome.tiff")):
        return None  # an OME-TIFF stack is read as a volume
    return next((f for f in PLANE_FILES if lower.endswith(f.suffixes)), None)


def is_zarr_name(name: str) -> bool:
    """Whether a path names a zarr store (``.zarr``, ``.ome.zarr``)."""
    return name.rstrip("/").lower().endswith(".zarr")


__all__ = ["NgffFormat", "V04", "V05", "NGFF", "ngff_format", "PlaneFile", "PNG", "TIFF",
           "plane_file_of", "is_zarr_name"]
