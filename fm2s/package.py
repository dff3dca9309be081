"""bioimage.io model packages (spec 0.5): write one from a trained model, read its ONNX
weights back for ``apply``.

A package is a zip of ``rdf.yaml`` (the description), the ONNX model fm2s-tile exports,
TorchScript weights traced from the same torch module (``parent: onnx``), test input and
output tensors (a crop of a training plane and the ONNX model's output on it), a cover
image and a generated documentation file. Reading a package needs zipfile and pyyaml
alone; writing one is the training side: torch is imported in :func:`torchscript` only.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._version import __version__
from .errors import FM2SError
from .pixels import MIN_SIDE

if TYPE_CHECKING:
    from .model import TrainedModel

#: the description's format: 0.5.4 is read by every 0.5 consumer (deepImageJ / JDLL,
#: bioimageio.core); newer spec libraries update it on load
FORMAT_VERSION = "0.5.4"
RDF_NAME = "rdf.yaml"
ONNX_NAME = "weights.onnx"
TORCHSCRIPT_NAME = "weights_torchscript.pt"
TEST_INPUT_NAME = "test_input.npy"
TEST_OUTPUT_NAME = "test_output.npy"
SAMPLE_INPUT_NAME = "sample_input.tif"
SAMPLE_OUTPUT_NAME = "sample_output.tif"
COVER_NAME = "cover.png"
DOC_NAME = "README.md"
#: side of the test tensors (a square crop of a training plane; smaller planes give less)
TEST_SIDE = 64
#: side of each half of the cover (raw | denoised)
COVER_SIDE = 256
INPUT_ID, OUTPUT_ID = "raw", "denoised"
TAGS = ["denoising", "fluorescence-light-microscopy", "fm2s", "zero-shot", "self-supervised",
        "onnx", "torchscript", "2d"]
CITATION = {
    "text": "Liu et al. 2024, FM2S: Self-Supervised Fluorescence Microscopy Denoising With "
            "Single Noisy Image, arXiv 2412.10031",
    "doi": "10.48550/arXiv.2412.10031",
}
_NOT_A_PACKAGE = ("pass a bioimage.io package written by fm2s-tile --save-model NAME.zip, or "
                  "an .onnx model")


def is_package(path: str | Path) -> bool:
    """Whether a model path names a bioimage.io package (a ``.zip``)."""
    return Path(path).suffix.lower() == ".zip"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _tif(array: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(array, np.float32), photometric="minisblack")
    return buf.getvalue()


def package_name(stem: str) -> str:
    """The description's ``name`` for a package file named ``stem``: the characters
    bioimage.io allows (letters, digits, ``_+- ()``), at most 64 of them."""
    clean = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "_+- ()") else "-"
                    for ch in stem).strip()
    return f"FM2S denoiser {clean}".strip()[:64]


def _source_name(source: str | None) -> str | None:
    """The last part of a path or URL: a package does not carry the folders of the
    machine it was written on."""
    if not source:
        return None
    return str(source).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or None


def min_side(halo: int) -> int:
    """The smallest Y and X a package declares: a plane fm2s-tile denoises, with pixels
    left once the output halo is cropped from both sides."""
    return max(MIN_SIDE, 2 * halo + 1)


def input_crop(planes: np.ndarray, halo: int, side: int = TEST_SIDE) -> np.ndarray:
    """The test input: a centred square crop (``side``, or the plane's smaller side) of the
    middle plane of ``planes`` (a 2D image or a K x H x W stack), raw values as float32,
    mirrored out to :func:`min_side` when the plane is smaller than that."""
    planes = np.asarray(planes)
    plane = planes if planes.ndim == 2 else planes[planes.shape[0] // 2]
    s = min(side, *plane.shape)
    y0, x0 = (plane.shape[0] - s) // 2, (plane.shape[1] - s) // 2
    crop = np.asarray(plane[y0:y0 + s, x0:x0 + s], dtype=np.float32)
    short = max(0, min_side(halo) - s)
    if short:
        crop = np.pad(crop, ((0, short), (0, short)), mode="symmetric")
    return crop


def cover_png(raw: np.ndarray, denoised: np.ndarray, side: int = COVER_SIDE) -> bytes:
    """A PNG of ``raw`` | ``denoised`` side by side (2:1), both shown with the raw crop's
    p0.5-p99.5 contrast, each scaled to ``side`` x ``side`` pixels."""
    from PIL import Image

    lo, hi = np.percentile(raw, (0.5, 99.5))
    hi = hi if hi > lo else lo + 1.0
    halves = []
    for array in (raw, denoised):
        grey = np.clip((np.asarray(array, np.float64) - lo) / (hi - lo) * 255.0, 0, 255)
        img = Image.fromarray(np.rint(grey).astype(np.uint8))
        halves.append(img.resize((side, side), Image.Resampling.NEAREST))
    cover = Image.new("L", (2 * side, side))
    cover.paste(halves[0], (0, 0))
    cover.paste(halves[1], (side, 0))
    buf = io.BytesIO()
    cover.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def torchscript(model: TrainedModel, side: int = 32) -> tuple[bytes, str]:
    """TorchScript of the module the ONNX model is exported from (``raw`` in, ``denoised``
    out, the default clamp: the training range), traced on a ``side`` x ``side`` plane,
    and the torch version that wrote it."""
    import torch

    from .export import Denoiser

    denoiser = Denoiser(model.net, model.normalization, views=model.config.views).cpu().eval()
    example = torch.zeros(1, 1, side, side)
    buf = io.BytesIO()
    # TorchScript is deprecated in torch, and it is the format bioimage.io consumers run
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(denoiser, (example,), check_trace=False)
        torch.jit.save(traced, buf)
    return buf.getvalue(), torch.__version__.split("+")[0]


def _opset(onnx_bytes: bytes) -> int:
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    return max(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def describe(model: TrainedModel, *, source: str | None = None, channel: int | None = None,
             training_planes: list[int] | None = None) -> dict:
    """What the package records of the model: fm2s version, recipe, preset, seed, views,
    steps, normalization, percentiles, halo, training planes, source and channel."""
    config = model.config
    return {
        "fm2s_version": __version__, "recipe": config.recipe, "preset": config.microscope,
        "seed": config.seed, "views": config.views, "steps": config.total_steps,
        "halo": model.halo,
        "normalization": {"offset": model.normalization.offset,
                          "scale": model.normalization.scale,
                          "formula": model.normalization.describe()},
        "percentiles": {"p1": model.percentiles[0], "p99": model.percentiles[1]},
        "source": _source_name(source), "channel": channel,
        "training_planes": training_planes,
        "device": model.device, "train_seconds": round(model.seconds, 3),
        "noise": (model.noise_record() or {}).get("decision"),
    }


def documentation(facts: dict, name: str) -> str:
    """The package's README.md, from :func:`describe`'s record."""
    norm, pct = facts["normalization"], facts["percentiles"]
    lo, hi = norm["offset"], norm["offset"] + norm["scale"]
    where = f"`{facts['source']}`" if facts.get("source") else "the image it was trained on"
    if facts.get("channel") is not None:
        where += f", channel {facts['channel']}"
    planes = facts.get("training_planes")
    planes_text = (f"{len(planes)} plane(s) (indices {', '.join(map(str, planes))} of the "
                   "channel's t x z planes)" if planes else "the image given")
    noise_text = f": {facts['noise'].removeprefix('auto: ')}" if facts.get("noise") else ""
    return f"""# {name}

An **FM2S** denoiser (Liu et al. 2024, *FM2S: Self-Supervised Fluorescence Microscopy
Denoising With Single Noisy Image*, arXiv 2412.10031), trained zero-shot by
[fm2s-tile](https://pypi.org/project/fm2s-tile/) {facts['fm2s_version']} on {where} alone:
no other training data, no pretrained weights.

**This model is specific to the data it was trained on.** It learned the noise and the
structures of {planes_text} of that image. Use it on that image and on images from the same
microscope, settings and sample; for anything else, train a new one (about 20 s per channel
on two CPU cores: `fm2s-tile train-and-apply IMAGE --save-model NAME.zip`).

## Inputs and outputs

- input `{INPUT_ID}`: float32, axes batch, channel (1), y, x: **raw pixel values**, no
  preprocessing (the normalization is inside the model). Y and X: any size from
  {min_side(facts['halo'])} pixels.
- output `{OUTPUT_ID}`: float32, same axes and size, the denoised image in the same units.
  Each output pixel depends on the input pixels up to {facts['halo']} pixels away (the halo):
  tiles overlapping by that much give the same result as the whole image.

## How it was made

| | |
|---|---|
| recipe | `{facts['recipe']}` ({facts['steps']} training steps) |
| noise model | `{facts['preset']}`{noise_text} |
| seed | {facts['seed']} |
| test-time views | {facts['views']} (averaged inside the model) |
| normalization | {norm['formula']} (offset {lo:g}, scale {norm['scale']:g}) |
| training range | {lo:g} .. {hi:g} (p1 {pct['p1']:g}, p99 {pct['p99']:g}) |
| output clamp | the training range (fm2s-tile widens it per plane) |
| halo | {facts['halo']} pixels |
| training planes | {planes_text} |
| trained on | {facts['device']} in {facts['train_seconds']:g} s |

Weights: `{ONNX_NAME}` (ONNX, the model fm2s-tile exports; its optional second input `clamp`
defaults to the training range) and `{TORCHSCRIPT_NAME}` (TorchScript, traced from the same
torch module, `raw` only). Test tensors (`{TEST_INPUT_NAME}`, `{TEST_OUTPUT_NAME}`, and the
same as TIFF in `{SAMPLE_INPUT_NAME}`, `{SAMPLE_OUTPUT_NAME}`): a {TEST_SIDE} x {TEST_SIDE} crop
(or the whole plane) of a training plane and the ONNX model's output on it. Cover: that crop,
raw | denoised, with the same contrast.

## Validation

FM2S is self-supervised: there is no clean reference for this image, so no quality figure
is given here. Its ONNX weights are the model fm2s-tile applied, and its test output is
their output on the test input; fm2s-tile's own tests run `bioimageio test` (both weights
reproduce the test output) on the packages it writes: `bioimageio test PACKAGE.zip` checks
this one. The FM2S
recipes reach 31-32 dB PSNR on the FMD benchmark images (fm2s-tile README, Benchmarks);
judge this model on the cover and on your own data.

## Use

- fm2s-tile: `fm2s-tile apply PACKAGE.zip IMAGE` (tiled, any size, OME-Zarr, zarr, TIFF, PNG;
  planes outside the training range are mapped into it and back).
- bioimageio.core: `bioimageio predict PACKAGE.zip --inputs IMAGE` (or `bioimageio.core.predict`).
- deepImageJ (Fiji): install the package from its zip file, then run it on an image.

Inside the image every tool computes the same values. At the image's edges, bioimageio.core
mirrors the image by the halo before the model and crops it after (other tools may pad
otherwise), while fm2s-tile, as FM2S, lets the network pad zeros: the outermost
{facts['halo']} pixels differ between them. Planes much brighter or dimmer than the training
range are denoised less well by other tools, which send the raw values as they are
(fm2s-tile maps them into the training range and back).

## License and citation

MIT (fm2s-tile). Cite the FM2S paper: doi 10.48550/arXiv.2412.10031.
"""


def _file(name: str, files: dict[str, bytes]) -> dict:
    """A file description: its name in the package and its SHA-256."""
    return {"source": name, "sha256": _sha256(files[name])}


def _tensor(tensor_id: str, description: str, halo: int, files: dict[str, bytes],
            output: bool) -> dict:
    """The description of the input (``output=False``) or the output tensor."""
    test, sample = ((TEST_OUTPUT_NAME, SAMPLE_OUTPUT_NAME) if output
                    else (TEST_INPUT_NAME, SAMPLE_INPUT_NAME))
    return {"id": tensor_id, "description": description, "axes": _axes(halo, output=output),
            "test_tensor": _file(test, files), "sample_tensor": _file(sample, files),
            "data": {"type": "float32"}}


def _axes(halo: int, output: bool) -> list[dict]:
    names = [OUTPUT_ID] if output else [INPUT_ID]
    axes: list[dict] = [{"type": "batch"}, {"type": "channel", "channel_names": names}]
    for axis in ("y", "x"):
        if output:
            axes.append({"type": "space", "id": axis,
                         "size": {"tensor_id": INPUT_ID, "axis_id": axis}, "halo": halo})
        else:
            axes.append({"type": "space", "id": axis,
                         "size": {"min": min_side(halo), "step": 1}})
    return axes


def rdf(name: str, facts: dict, files: dict[str, bytes], opset: int,
        torch_version: str) -> dict:
    """The package's description (``rdf.yaml`` content) for ``files`` by name."""
    halo = int(facts["halo"])
    where = facts.get("source") or ""
    if facts.get("channel") is not None:
        where += f"{', ' if where else ''}channel {facts['channel']}"
    description = ("FM2S zero-shot denoiser trained by fm2s-tile on one image "
                   + (f"({where[:300]}) " if where else "")
                   + "alone: raw pixel values in, denoised values out; specific to data like "
                   "what it was trained on.")
    return {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": name,
        "description": description,
        "authors": [{"name": f"fm2s-tile {__version__} (automatic export)"}],
        "packaged_by": [{"name": f"fm2s-tile {__version__}"}],
        "cite": [CITATION],
        "license": "MIT",
        "tags": TAGS,
        "documentation": DOC_NAME,
        "covers": [COVER_NAME],
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": [_tensor(INPUT_ID, "raw pixel values (no preprocessing: the normalization "
                                     "is inside the model)", halo, files, output=False)],
        "outputs": [_tensor(OUTPUT_ID, "the denoised image, in the input's units", halo, files,
                            output=True)],
        "weights": {
            "onnx": {**_file(ONNX_NAME, files), "opset_version": opset},
            "torchscript": {**_file(TORCHSCRIPT_NAME, files), "parent": "onnx",
                            "pytorch_version": torch_version},
        },
        "config": {"fm2s": json.loads(json.dumps(facts))},
    }


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buf.getvalue()


def build_package(model: TrainedModel, planes: np.ndarray, *, onnx: bytes | None = None,
                  name: str = "FM2S denoiser", source: str | None = None,
                  channel: int | None = None, training_planes: list[int] | None = None
                  ) -> bytes:
    """A bioimage.io model package (zip bytes) of a model just trained.

    Parameters
    ----------
    model
        The trained model (the training side: its torch network is traced).
    planes
        The planes it was trained on (2D, or K x H x W, raw values): the test input is a
        crop of the middle one.
    onnx
        The model's ONNX bytes as saved elsewhere (default: exported now), so that the
        package holds the very model a run used.
    name
        The package's name (see :func:`package_name`), also its README's title.
    source, channel, training_planes
        Where the training planes came from, for the documentation.

    Returns
    -------
    bytes
        The zip: rdf.yaml, ONNX and TorchScript weights, test tensors, cover, README.md.
    """
    import yaml

    from .runtime import OnnxDenoiser

    onnx = model.to_bytes() if onnx is None else onnx
    crop = input_crop(planes, model.halo)
    denoised = OnnxDenoiser(onnx, provider="cpu", verify=False)(crop)
    facts = describe(model, source=source, channel=channel, training_planes=training_planes)
    scripted, torch_version = torchscript(model)
    files = {
        ONNX_NAME: onnx,
        TORCHSCRIPT_NAME: scripted,
        TEST_INPUT_NAME: _npy(crop[None, None]),
        TEST_OUTPUT_NAME: _npy(denoised[None, None].astype(np.float32)),
        SAMPLE_INPUT_NAME: _tif(crop),
        SAMPLE_OUTPUT_NAME: _tif(denoised),
        COVER_NAME: cover_png(crop, denoised),
        DOC_NAME: documentation(facts, name).encode(),
    }
    description = rdf(name, facts, files, _opset(onnx), torch_version)
    text = yaml.safe_dump(description, sort_keys=False, allow_unicode=True, width=100)
    return _zip({RDF_NAME: text.encode(), **files})


def _rdf_member(names: list[str]) -> str | None:
    if RDF_NAME in names:
        return RDF_NAME
    found = [n for n in names if "/" not in n and n.endswith("bioimageio.yaml")]
    return found[0] if len(found) == 1 else None


def read_package(path: str | Path) -> tuple[bytes, dict]:
    """The ONNX weights (bytes, sha256-checked) and the description of a bioimage.io
    model package.

    Raises
    ------
    FM2SError
        Not a zip, no ``rdf.yaml``, not a model description, no ONNX weights, or weights
        whose sha256 differs from the description's (one line naming the problem and the fix).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FM2SError(f"model package '{path}' does not exist: check the path")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            member = _rdf_member(names)
            if member is None:
                raise FM2SError(f"'{path}' is a zip without rdf.yaml, not a bioimage.io model "
                                f"package: {_NOT_A_PACKAGE}")
            try:
                description = yaml.safe_load(archive.read(member))
            except yaml.YAMLError as exc:
                raise FM2SError(f"'{path}': its {member} is not valid YAML "
                                f"({str(exc).splitlines()[0]}): {_NOT_A_PACKAGE}") from None
            if not isinstance(description, dict) or description.get("type") != "model":
                raise FM2SError(f"'{path}' describes no model (its {member} has no "
                                f"'type: model'): {_NOT_A_PACKAGE}")
            weights = description.get("weights")
            onnx = weights.get("onnx") if isinstance(weights, dict) else None
            source = onnx.get("source") if isinstance(onnx, dict) else None
            if not isinstance(source, str):
                formats = ", ".join(weights) if isinstance(weights, dict) and weights else "none"
                raise FM2SError(f"'{path}' is a bioimage.io model package without ONNX weights "
                                f"(it has {formats}): {_NOT_A_PACKAGE}")
            source = source.removeprefix("./")
            if source not in names:
                raise FM2SError(f"'{path}' names ONNX weights '{source}' that the zip does not "
                                f"hold: {_NOT_A_PACKAGE}")
            data = archive.read(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise FM2SError(f"'{path}' is not a readable zip ({exc}): {_NOT_A_PACKAGE}") from None
    expected = onnx.get("sha256")
    if expected and str(expected).lower() != _sha256(data):
        raise FM2SError(f"'{path}': the ONNX weights '{source}' do not match the sha256 in its "
                        f"{member} (a damaged or edited package): write it again with "
                        "fm2s-tile --save-model NAME.zip")
    return data, description


def model_bytes(path: str | Path) -> bytes:
    """The ONNX model a model path holds: a ``.zip`` package's ONNX weights, else the file."""
    path = Path(path)
    if is_package(path):
        return read_package(path)[0]
    if not path.is_file():
        raise FM2SError(f"model file '{path}' does not exist: check the path")
    return path.read_bytes()
