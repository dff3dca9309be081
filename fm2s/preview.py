"""The preview figure of a run (``--preview PATH.png``): a representative crop of one plane
of the raw input, of its denoised copy and of their difference, one row per channel, for a
person to judge the result at a glance.

Pure computation: arrays (numpy, or dask arrays read lazily) and the image's metadata in,
an RGB ``uint8`` array (and its PNG bytes) out. The jobs choose the paths.

What the figure shows:

- **The plane**: the middle plane of every axis other than c, y and x (index ``n // 2`` of
  t and of z), the same for every channel.
- **The crop**: up to :data:`CROP` x :data:`CROP` pixels (the whole plane if it is
  smaller), the window of that size where the denoised plane has the most structure (the
  largest variance of its channels, each scaled to its own range), searched on the plane
  read with a stride (at most :data:`SEARCH` pixels a side); the same crop for every
  channel. Only that plane is read, and only the crop of the raw input.
- **Contrast**: raw and denoised share one window, percentiles 0.5 and 99.8 of the
  denoised crop, so they compare directly; the residual (raw - denoised) is shown
  symmetric around 0 (mid-gray) over +-3 robust sigma (1.4826 median absolute deviation).
  A smaller crop is enlarged with nearest neighbours, by a whole factor (at most
  :data:`MAX_ZOOM`), until its longer side is at least :data:`PANEL` pixels.
- **Scale bar**: the x pixel size and unit of the level-0 dataset of the NGFF multiscale
  (its scale, times the multiscale's own scale if any); a length of 1, 2 or 5 x 10^n about
  a fifth of the panel width, labelled (``10 µm``); without a unit, in pixels (``50 px``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

#: the largest side of the crop, in pixels of the image
CROP = 192
#: smaller crops are enlarged (nearest neighbours, whole factors) to at least this many pixels
PANEL = 192
#: the largest enlargement
MAX_ZOOM = 16
#: the longest side of the strided plane on which the crop is searched
SEARCH = 512
#: percentiles of the denoised crop that set the raw and denoised window
WINDOW = (0.5, 99.8)
#: the residual is shown over +-this many robust sigmas
RESIDUAL_SIGMAS = 3.0

COLUMNS = ("raw", "denoised", "raw - denoised")

_BACKGROUND, _TEXT, _BAR = 24, 235, 255
_PAD, _FONT = 6, 13
_TITLE, _LABEL, _FOOTER = 22, 20, 30

#: NGFF (UDUNITS-2) length units in metres
_METRES = {"angstrom": 1e-10, "nanometer": 1e-9, "micrometer": 1e-6, "millimeter": 1e-3,
           "centimeter": 1e-2, "meter": 1.0, "kilometer": 1e3}
_SYMBOLS = ((1e-9, "nm"), (1e-6, "µm"), (1e-3, "mm"), (1.0, "m"))


@dataclass(frozen=True)
class Layout:
    """Where things lie in the figure of ``channels`` rows of three ``height`` x ``width``
    crops, each enlarged ``zoom`` times.

    Attributes
    ----------
    channels, height, width
        Rows, and the crop's size in image pixels.
    zoom
        Whole enlargement factor of the panels.
    """

    channels: int
    height: int
    width: int
    zoom: int

    @property
    def panel(self) -> tuple[int, int]:
        """(height, width) of one panel in the figure."""
        return self.height * self.zoom, self.width * self.zoom

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the figure."""
        ph, pw = self.panel
        return (_TITLE + self.channels * (_LABEL + ph) + _FOOTER,
                _PAD + len(COLUMNS) * (pw + _PAD))

    def box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) of the panel of channel ``row``, column ``column`` (0 raw, 1
        denoised, 2 residual)."""
        ph, pw = self.panel
        y0 = _TITLE + row * (_LABEL + ph) + _LABEL
        x0 = _PAD + column * (pw + _PAD)
        return y0, x0, y0 + ph, x0 + pw


def layout(channels: int, height: int, width: int) -> Layout:
    """The layout of a figure of ``channels`` rows of ``height`` x ``width`` crops."""
    zoom = max(1, min(MAX_ZOOM, math.ceil(PANEL / max(height, width))))
    return Layout(channels, height, width, zoom)


def preview_plane(axes: str, shape: tuple[int, ...]) -> tuple:
    """The index of the plane shown: ``n // 2`` along t and z, every channel, whole y and x.

    Parameters
    ----------
    axes
        Axis letters (an ordered subset of ``tczyx`` ending in ``yx``).
    shape
        The image's shape.
    """
    return tuple(slice(None) if a in "cyx" else n // 2 for a, n in zip(axes, shape))


def _channels_first(plane: np.ndarray, axes: str) -> np.ndarray:
    """A (C, H, W) float64 array from a plane read with :func:`preview_plane`."""
    plane = np.asarray(plane, dtype=np.float64)
    return plane if "c" in axes else plane[None]


def _box_sums(a: np.ndarray, wh: int, ww: int) -> np.ndarray:
    """Sums of ``a`` over every ``wh`` x ``ww`` window inside it (integral image)."""
    s = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
    s[1:, 1:] = a.cumsum(0).cumsum(1)
    return s[wh:, ww:] - s[:-wh, ww:] - s[wh:, :-ww] + s[:-wh, :-ww]


def find_crop(planes: np.ndarray, stride: int, shape: tuple[int, int],
              size: int = CROP) -> tuple[slice, slice]:
    """The ``size`` x ``size`` window (the whole plane where it is smaller) with the most
    structure: the largest summed variance of the channels, each scaled to its own range.

    Parameters
    ----------
    planes
        (C, h, w): the denoised plane of each channel read with ``stride`` along y and x
        (``plane[..., ::stride, ::stride]``).
    stride
        The step the planes were read with.
    shape
        (H, W) of the full plane.
    size
        Largest side of the crop.

    Returns
    -------
    tuple of slice
        The crop's rows and columns in the full plane.
    """
    H, W = shape
    ch, cw = min(size, H), min(size, W)
    if (ch, cw) == (H, W):
        return slice(0, H), slice(0, W)
    wh, ww = max(1, ch // stride), max(1, cw // stride)
    score = None
    for p in np.asarray(planes, dtype=np.float64):
        lo, hi = np.percentile(p, WINDOW)
        p = (p - lo) / (hi - lo) if hi > lo else np.zeros_like(p)
        n = wh * ww
        var = _box_sums(p * p, wh, ww) / n - (_box_sums(p, wh, ww) / n) ** 2
        score = var if score is None else score + var
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)
    y0, x0 = min(int(iy) * stride, H - ch), min(int(ix) * stride, W - cw)
    return slice(y0, y0 + ch), slice(x0, x0 + cw)


def pixel_size(multiscale: dict | None, axes: str) -> tuple[float, str | None]:
    """The x pixel size of level 0 and its unit (None without one) from NGFF metadata.

    The scale of the first dataset's ``coordinateTransformations``, times the
    multiscale's own scale if it has one; the unit of the x axis. Without either, 1 pixel.
    """
    if not multiscale or "x" not in axes:
        return 1.0, None
    i = axes.index("x")

    def scale_of(transforms) -> float:
        for t in transforms or []:
            if isinstance(t, dict) and t.get("type") == "scale" and isinstance(
                    t.get("scale"), list) and len(t["scale"]) == len(axes):
                return float(t["scale"][i])
        return 1.0

    datasets = multiscale.get("datasets") or [{}]
    size = scale_of(datasets[0].get("coordinateTransformations")) * scale_of(
        multiscale.get("coordinateTransformations"))
    axis = (multiscale.get("axes") or [None] * len(axes))[i]
    unit = axis.get("unit") if isinstance(axis, dict) else None
    if not unit or not (math.isfinite(size) and size > 0):
        return 1.0, None
    return size, str(unit)


def scale_bar(size: float, unit: str | None, width: int) -> tuple[float, str]:
    """A scale bar for a crop ``width`` image pixels wide of pixels ``size`` ``unit`` wide.

    Returns
    -------
    tuple
        Its length in image pixels and its label: the length of 1, 2 or 5 x 10^n nearest
        to a fifth of the width (``(50.0, '5 µm')``); in pixels without a unit.
    """
    if unit is None:
        size = 1.0
    target = width * size / 5
    base = 10.0 ** math.floor(math.log10(target))
    length = min((m * base for m in (1, 2, 5, 10)), key=lambda v: abs(math.log(v / target)))
    if unit is None:
        label = f"{length:g} px"
    elif unit in _METRES:
        metres = length * _METRES[unit]
        factor, symbol = next(((f, s) for f, s in reversed(_SYMBOLS) if metres >= f * 0.999),
                              _SYMBOLS[0])
        label = f"{float(f'{metres / factor:.3g}'):g} {symbol}"
    else:
        label = f"{length:g} {unit}"
    return length / size, label


def channel_names(omero: dict | None, channels: int) -> list[str]:
    """Channel labels from OME (``omero``) metadata, else ``channel k``."""
    entries = (omero or {}).get("channels") if isinstance(omero, dict) else None
    entries = entries if isinstance(entries, list) else []
    names = []
    for k in range(channels):
        entry = entries[k] if k < len(entries) and isinstance(entries[k], dict) else {}
        label = str(entry.get("label") or "").strip()
        names.append(label or f"channel {k}")
    return names


def _gray(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip(np.rint((x - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def windows(raw: np.ndarray, denoised: np.ndarray) -> tuple[float, float, float]:
    """The display window (lo, hi) of raw and denoised, and the residual's half-width."""
    lo, hi = (float(v) for v in np.percentile(denoised, WINDOW))
    if not hi > lo:
        lo, hi = float(min(raw.min(), denoised.min())), float(max(raw.max(), denoised.max()))
        hi = hi if hi > lo else lo + 1.0
    r = raw - denoised
    sigma = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    if not sigma > 0:
        sigma = float(r.std()) or 1.0
    return lo, hi, RESIDUAL_SIGMAS * sigma


def _font(size: int):
    """DejaVu Sans where the system has it, else Pillow's own font."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow before 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _has_glyph(font, char: str) -> bool:
    """Whether ``font`` draws ``char`` (not as the box of a missing glyph)."""
    def mask(c: str) -> tuple:
        m = font.getmask(c)
        return m.size, bytes(m)

    try:
        return mask(char) != mask("\U000f0000")  # a private-use character: no font has it
    except (UnicodeError, ValueError):  # pragma: no cover - a bitmap font without Unicode
        return False


def _ascii(text: str, font) -> str:
    """``text`` with µ and ± spelt out where the font lacks them."""
    for char, plain in (("µ", "u"), ("±", "+-")):
        if char in text and not _has_glyph(font, char):
            text = text.replace(char, plain)
    return text


def render(raw: np.ndarray, denoised: np.ndarray, names: list[str] | None = None,
           pixel: tuple[float, str | None] = (1.0, None), note: str = "") -> np.ndarray:
    """The figure of crops of ``raw`` and ``denoised``, as an (H, W, 3) ``uint8`` array.

    Parameters
    ----------
    raw, denoised
        (C, h, w) or (h, w): the same crop of the input and of its denoised copy.
    names
        A label per channel (default ``channel k``).
    pixel
        The pixel size and its unit (None: pixels), for the scale bar.
    note
        A line written under the panels (where the crop lies).

    Returns
    -------
    numpy.ndarray
        One row per channel of three panels (raw, denoised, raw - denoised) under column
        titles, each row under its label; the scale bar and ``note`` below.
    """
    from PIL import Image, ImageDraw

    raw = np.asarray(raw, dtype=np.float64)
    denoised = np.asarray(denoised, dtype=np.float64)
    if raw.ndim == 2:
        raw, denoised = raw[None], denoised[None]
    if raw.shape != denoised.shape or raw.ndim != 3:
        raise ValueError(f"raw {raw.shape} and denoised {denoised.shape} are not the same "
                         "(C, h, w) crop")
    names = names or channel_names(None, raw.shape[0])
    lay = layout(*raw.shape)
    canvas = np.full(lay.shape, _BACKGROUND, np.uint8)
    texts = []
    for row, (r, d) in enumerate(zip(raw, denoised)):
        lo, hi, half = windows(r, d)
        panels = (_gray(r, lo, hi), _gray(d, lo, hi), _gray(r - d, -half, half))
        for col, panel in enumerate(panels):
            y0, x0, y1, x1 = lay.box(row, col)
            canvas[y0:y1, x0:x1] = np.kron(panel, np.ones((lay.zoom, lay.zoom), np.uint8))
        texts.append((lay.box(row, 0)[0] - _LABEL + 3, _PAD,
                      f"{names[row]}: window {lo:.4g} to {hi:.4g}; residual ±{half:.3g}"))
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    font = _font(_FONT)
    for col, title in enumerate(COLUMNS):
        y0, x0, _, x1 = lay.box(0, col)
        width = draw.textlength(title, font=font)
        draw.text(((x0 + x1 - width) / 2, 4), title, fill=_TEXT, font=font)
    for y, x, text in texts:
        draw.text((x, y), _ascii(text, font), fill=_TEXT, font=font)
    length, label = scale_bar(*pixel, raw.shape[2])
    label = _ascii(label, font)
    bar = max(1, round(length * lay.zoom))
    top = lay.shape[0] - _FOOTER + 8
    draw.rectangle((_PAD, top + 4, _PAD + bar - 1, top + 8), fill=_BAR)
    draw.text((_PAD + bar + 8, top), label, fill=_TEXT, font=font)
    if note:
        x = _PAD + bar + 16 + draw.textlength(label, font=font)
        draw.text((x, top), note, fill=_TEXT, font=font)
    return np.asarray(image.convert("RGB"))


def figure(raw, denoised, axes: str, multiscale: dict | None = None,
           omero: dict | None = None, size: int = CROP) -> np.ndarray:
    """The preview figure of an image and its denoised copy (see the module's notes).

    Parameters
    ----------
    raw, denoised
        The input and its denoised copy, same shape, dimensions in the order of ``axes``:
        numpy or dask arrays (a dask array is read only where the figure needs it: one
        plane of ``denoised``, strided, and the crop of both).
    axes
        Axis letters, an ordered subset of ``tczyx`` ending in ``yx``.
    multiscale, omero
        The image's NGFF multiscale (pixel size and unit) and channel metadata (names).
    size
        Largest side of the crop.

    Returns
    -------
    numpy.ndarray
        The figure, (H, W, 3) ``uint8`` (:func:`render`).
    """
    if tuple(raw.shape) != tuple(denoised.shape):
        raise ValueError(f"raw {tuple(raw.shape)} and denoised {tuple(denoised.shape)} differ")
    index = preview_plane(axes, tuple(raw.shape))
    H, W = raw.shape[-2:]
    stride = max(1, math.ceil(max(H, W) / SEARCH))
    coarse = _channels_first(denoised[index[:-2] + (slice(None, None, stride),) * 2], axes)
    ys, xs = find_crop(coarse, stride, (H, W), size)
    crop = index[:-2] + (ys, xs)
    raw_crop = _channels_first(raw[crop], axes)
    denoised_crop = _channels_first(denoised[crop], axes)
    where = " ".join(f"{a}={i}" for a, i in zip(axes, index) if a in "tz")
    note = (f"{where + ', ' if where else ''}y {ys.start}:{ys.stop}, x {xs.start}:{xs.stop} "
            f"of {H} x {W}")
    zoom = layout(1, ys.stop - ys.start, xs.stop - xs.start).zoom
    if zoom > 1:
        note += f", shown x{zoom}"
    return render(raw_crop, denoised_crop, channel_names(omero, raw_crop.shape[0]),
                  pixel_size(multiscale, axes), note)


def png_bytes(rgb: np.ndarray) -> bytes:
    """``rgb`` as PNG bytes (grayscale when its three channels are equal: smaller)."""
    from PIL import Image

    rgb = np.asarray(rgb, dtype=np.uint8)
    gray = rgb.ndim == 3 and bool(np.all(rgb[..., 0] == rgb[..., 1])
                                  and np.all(rgb[..., 1] == rgb[..., 2]))
    image = Image.fromarray(rgb[..., 0] if gray else rgb)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
