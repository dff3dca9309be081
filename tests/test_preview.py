"""The preview figure (``--preview PATH.png``): the renderer on synthetic arrays, then the
option end to end (apply through the command line, train-and-apply with a short schedule)."""

from __future__ import annotations

import math
import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import read_image, write_image, write_ngff
from scipy import ndimage
from typer.testing import CliRunner

from fm2s.cli import app
from fm2s.preview import (
    CROP,
    PANEL,
    channel_names,
    figure,
    find_crop,
    layout,
    pixel_size,
    png_bytes,
    render,
    scale_bar,
)
from fm2s.sample import synthetic_image

runner = CliRunner()
QUICK = {"samples": 4, "warmup_steps": 1}  # a short schedule: these tests check plumbing
MICRONS = {"y": "micrometer", "x": "micrometer", "z": "micrometer", "t": "second"}


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _panels(rgb: np.ndarray, channels: int, height: int, width: int) -> list[list[np.ndarray]]:
    """The three panels of each row, reduced back to one pixel per image pixel."""
    lay = layout(channels, height, width)
    assert rgb.shape[:2] == lay.shape
    rows = []
    for row in range(channels):
        panels = []
        for col in range(3):
            y0, x0, y1, x1 = lay.box(row, col)
            panel = rgb[y0:y1, x0:x1]
            assert panel.shape[:2] == (height * lay.zoom, width * lay.zoom)
            small = panel[::lay.zoom, ::lay.zoom]
            # nearest neighbours: every pixel is a zoom x zoom block of one value
            assert np.array_equal(np.kron(small[..., 0], np.ones((lay.zoom, lay.zoom),
                                                                 np.uint8)), panel[..., 0])
            panels.append(small[..., 0].astype(float))
        rows.append(panels)
    return rows


def _roughness(panel: np.ndarray) -> float:
    """Mean absolute difference of horizontal neighbours: high for noise."""
    return float(np.mean(np.abs(np.diff(panel, axis=1))))


def _noisy_pair(rng, channels: int, shape=(64, 80)) -> tuple[np.ndarray, np.ndarray]:
    raws, truths = [], []
    for _ in range(channels):
        noisy, truth = synthetic_image(shape, rng)
        raws.append(noisy.astype(float))
        truths.append(truth.astype(float))
    return np.stack(raws), np.stack(truths)


# --------------------------------------------------------------------------------------
# the renderer, on synthetic arrays


def test_three_panels_per_channel_that_differ(rng):
    raw, truth = _noisy_pair(rng, 2)
    rgb = render(raw, truth, ["dapi", "gfp"], (0.1, "micrometer"))
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    lay = layout(2, 64, 80)
    assert lay.zoom == math.ceil(PANEL / 80)  # a small crop is enlarged
    assert rgb.shape[1] >= 3 * 80 * lay.zoom and rgb.shape[0] >= 2 * 64 * lay.zoom
    rows = _panels(rgb, 2, 64, 80)
    for (r, d, res), x, t in zip(rows, raw, truth):
        assert _roughness(r) > 2 * _roughness(d)  # raw is noisy, the denoised smooth
        assert abs(res.mean() - 127.5) < 8  # the residual: mid-gray around 0
        assert abs(np.corrcoef(res.ravel(), t.ravel())[0, 1]) < 0.2  # without structure
        assert abs(np.corrcoef(r.ravel(), t.ravel())[0, 1]) > 0.3
        # raw and denoised share one window: the denoised's 0.5 and 99.8 percentiles
        lo, hi = np.percentile(t, [0.5, 99.8])
        for panel, data in ((r, x), (d, t)):
            shown = np.clip(np.rint((data - lo) * 255 / (hi - lo)), 0, 255)
            assert np.abs(panel - shown).max() <= 1
    assert not np.array_equal(rows[0][0], rows[1][0])  # one row per channel, each its own


def test_the_residual_is_shown_over_three_robust_sigmas(rng):
    clean = ndimage.gaussian_filter(rng.uniform(0, 1000, (96, 96)), 4)
    noise = rng.normal(0, 7.0, clean.shape)
    (_, _, res), = _panels(render(clean + noise, clean), 1, 96, 96)
    assert abs(res.mean() - 127.5) < 2
    assert res.std() == pytest.approx(127.5 / 3, rel=0.1)
    assert np.corrcoef(res.ravel(), noise.ravel())[0, 1] > 0.95


def test_a_constant_image_renders():
    flat = np.full((2, 20, 30), 7.0)
    rows = _panels(render(flat, flat), 2, 20, 30)
    assert all(np.ptp(p) == 0 for row in rows for p in row)


@pytest.mark.parametrize("size, unit, width, length, label", [
    (0.1, "micrometer", 192, 50, "5 µm"),
    (0.1, "micrometer", 256, 50, "5 µm"),
    (0.65, "micrometer", 192, 20 / 0.65, "20 µm"),
    (0.02, "micrometer", 256, 50, "1 µm"),
    (5.0, "nanometer", 300, 40, "200 nm"),
    (2.0, "millimeter", 100, 25, "50 mm"),
    (300.0, "nanometer", 1000, 50_000 / 300, "50 µm"),
    (1.0, None, 192, 50, "50 px"),
    (0.1, None, 256, 50, "50 px"),  # a scale without a unit is not a length
    (1.0, "parsec", 100, 20, "20 parsec"),
])
def test_scale_bar(size, unit, width, length, label):
    got_length, got_label = scale_bar(size, unit, width)
    assert got_label == label
    assert got_length == pytest.approx(length)
    assert width / 10 <= got_length <= width / 2.5


def test_pixel_size_from_the_ngff_multiscale():
    ms = {"axes": [{"name": "c"}, {"name": "y", "unit": "micrometer"},
                   {"name": "x", "unit": "micrometer"}],
          "datasets": [{"path": "0", "coordinateTransformations": [
              {"type": "scale", "scale": [1.0, 0.2, 0.25]}]},
              {"path": "1", "coordinateTransformations": [
                  {"type": "scale", "scale": [1.0, 0.4, 0.5]}]}]}
    assert pixel_size(ms, "cyx") == (0.25, "micrometer")  # x, level 0
    ms["coordinateTransformations"] = [{"type": "scale", "scale": [1.0, 2.0, 2.0]}]
    assert pixel_size(ms, "cyx") == (0.5, "micrometer")
    ms["axes"][2].pop("unit")
    assert pixel_size(ms, "cyx") == (1.0, None)
    assert pixel_size(None, "yx") == (1.0, None)


def test_channel_names_from_omero():
    omero = {"channels": [{"label": "membrane"}, {"label": ""}, {"color": "FF0000"}]}
    assert channel_names(omero, 4) == ["membrane", "channel 1", "channel 2", "channel 3"]
    assert channel_names(None, 1) == ["channel 0"]


class _Counting:
    """An array that records the (t, z) planes read from it."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.planes: set[tuple[int, int]] = set()

    def __getitem__(self, index):
        def span(i, n):
            return range(*i.indices(n)) if isinstance(i, slice) else [int(i)]

        ts, zs = span(index[0], self.shape[0]), span(index[2], self.shape[2])
        self.planes |= {(t, z) for t in ts for z in zs}
        return self.data[index]


def test_the_crop_lies_on_structure_and_only_its_plane_is_read(rng):
    shape = (3, 2, 3, 520, 1040)  # t, c, z, y, x: the search reads the plane with a stride 3
    den = np.full(shape, 100.0, np.float32)
    den[1, 1, 1, 300:450, 700:850] += ndimage.gaussian_filter(rng.uniform(0, 1, (150, 150)),
                                                              2) * 400
    raw = den.copy()
    raw[1, :, 1] += rng.normal(0, 3, raw[1, :, 1].shape).astype(np.float32)
    rows, cols = find_crop(den[1, :, 1, ::3, ::3], 3, shape[-2:])
    assert (rows.stop - rows.start, cols.stop - cols.start) == (CROP, CROP)
    overlap = (max(0, min(rows.stop, 450) - max(rows.start, 300))
               * max(0, min(cols.stop, 850) - max(cols.start, 700)))
    assert overlap > 0.8 * 150 * 150  # the crop holds the structure

    readers = [_Counting(a) for a in (raw, den)]
    lazy = [da.from_array(r, chunks=(1, 1, 1, 260, 520)) for r in readers]
    omero = {"channels": [{"label": "a"}, {"label": "b"}]}
    rgb = figure(*lazy, "tczyx", None, omero)
    assert readers[0].planes == readers[1].planes == {(1, 1)}  # middle t, middle z only
    expected = render(raw[1, :, 1, rows, cols], den[1, :, 1, rows, cols])
    got, want = (_panels(x, 2, CROP, CROP) for x in (rgb, expected))
    assert all(np.array_equal(g, w) for gr, wr in zip(got, want) for g, w in zip(gr, wr))


def test_the_preview_module_needs_no_torch():
    code = "import sys, fm2s.preview; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_png_bytes_are_grayscale_when_the_figure_is():
    from io import BytesIO

    from PIL import Image

    rgb = render(*_noisy_pair(np.random.default_rng(0), 1))
    with Image.open(BytesIO(png_bytes(rgb))) as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), rgb[..., 0])
    colour = rgb.copy()
    colour[0, 0] = (255, 0, 0)
    with Image.open(BytesIO(png_bytes(colour))) as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), colour)


# --------------------------------------------------------------------------------------
# the option, end to end


@pytest.fixture
def labelled_stack(tmp_path, stack_uint16):
    """A t=2, c=2, z=3 OME-Zarr with channel labels and a pixel size of 0.1 µm."""
    path = write_ngff(tmp_path / "in.ome.zarr", stack_uint16, "tczyx", "0.5",
                      scale={"t": 2.0, "z": 0.5, "y": 0.1, "x": 0.1}, axes_units=MICRONS)
    root = zarr.open_group(path, mode="a")
    root.attrs["ome"] = {**root.attrs["ome"], "omero": {"channels": [
        {"label": "dapi", "color": "0000FF"}, {"label": "gfp", "color": "00FF00"}]}}
    return path


def test_apply_writes_a_preview_row_per_channel(tmp_path, labelled_stack, stack_uint16,
                                                quick_model):
    out, preview = tmp_path / "out.ome.zarr", tmp_path / "preview.png"
    res = _invoke("apply", quick_model, labelled_stack, "-o", out, "--preview", preview, "-q")
    assert res.exit_code == 0, res.output
    assert f"  preview: {preview}" in res.output.splitlines()
    rgb = read_image(preview)
    h, w = stack_uint16.shape[-2:]
    rows = _panels(rgb if rgb.ndim == 3 else np.stack([rgb] * 3, -1), 2, h, w)
    level0 = zarr.open_group(out, mode="r").attrs["ome"]["multiscales"][0]["datasets"][0]
    clean = zarr.open_group(out, mode="r")[level0["path"]][1, :, 1]  # the middle plane
    for c, (r, d, res_panel) in enumerate(rows):
        assert _roughness(r) > 1.3 * _roughness(d)
        assert not np.array_equal(res_panel, r) and not np.array_equal(res_panel, d)
        # the denoised panel shows the written output
        assert np.corrcoef(d.ravel(), clean[c].astype(float).ravel())[0, 1] > 0.95
    assert not np.array_equal(rows[0][0], rows[1][0])


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_2d_image_with_a_plane_file_output(tmp_path, quick_model, suffix):
    noisy, _ = synthetic_image((40, 56), np.random.default_rng(3))
    src = write_image(tmp_path / "cells.png", noisy)
    out, preview = tmp_path / f"out{suffix}", tmp_path / "p.png"
    res = _invoke("apply", quick_model, src, "-o", out, "--preview", preview, "-q")
    assert res.exit_code == 0, res.output
    (r, d, _), = _panels(np.stack([read_image(preview)] * 3, -1), 1, 40, 56)
    assert _roughness(r) > 1.3 * _roughness(d)


def test_train_and_apply_writes_a_preview(tmp_path):
    from fm2s.jobs import train_and_apply

    stack = np.stack([synthetic_image((48, 64), np.random.default_rng(k))[0] for k in range(3)])
    src = write_ngff(tmp_path / "zyx.ome.zarr", stack, "zyx", "0.4", levels=1,
                     scale={"z": 1.0, "y": 0.3, "x": 0.3}, axes_units=MICRONS)
    preview = tmp_path / "fig.png"
    report = train_and_apply(src, tmp_path / "out.ome.zarr", device="cpu", preview=preview,
                             **QUICK)
    assert report.preview == str(preview)
    (r, d, _), = _panels(np.stack([read_image(preview)] * 3, -1), 1, 48, 64)
    assert _roughness(r) > 1.3 * _roughness(d)


@pytest.mark.parametrize("case", ["jpg", "no_folder", "exists", "folder", "is_output",
                                  "is_input", "in_output"])
@pytest.mark.parametrize("command", ["train-and-apply", "apply"])
def test_a_bad_preview_path_is_refused_before_any_work(tmp_path, quick_model, command, case):
    noisy, _ = synthetic_image((40, 56), np.random.default_rng(3))
    src = write_image(tmp_path / "cells.png", noisy)
    out = tmp_path / "out.png"
    preview = {"jpg": tmp_path / "p.jpg", "no_folder": tmp_path / "nowhere" / "p.png",
               "exists": tmp_path / "old.png", "folder": tmp_path / "dir.png",
               "is_output": out, "is_input": src,
               "in_output": tmp_path / "out.ome.zarr" / "p.png"}[case]
    if case == "in_output":
        out = tmp_path / "out.ome.zarr"
    if case == "exists":
        preview.write_bytes(b"keep")
    if case == "folder":
        preview.mkdir()
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    model = [quick_model] if command == "apply" else []
    res = _invoke(command, *model, src, "-o", out, "--preview", preview, "--device" if
                  command == "train-and-apply" else "--provider", "cpu")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --preview {preview}: "), res.output
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    if case == "exists":
        assert preview.read_bytes() == b"keep"
