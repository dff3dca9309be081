"""Volumes end to end: OME-Zarr / TIFF / http in, OME-Zarr out, through the command line."""

import json
import re
import shlex
import sys

import numpy as np
import pytest
import tifffile
import zarr
from conftest import tree_bytes, write_image, write_ngff
from typer.testing import CliRunner

from fm2s.cli import app
from fm2s.jobs import resolve_models, train_and_apply, training_planes
from fm2s.runtime import OnnxDenoiser

runner = CliRunner()
QUICK = {"samples": 4, "warmup_steps": 1}  # a short schedule: these tests check plumbing


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _attrs(path):
    attrs = zarr.open_group(path, mode="r").attrs.asdict()
    return attrs.get("ome", attrs), attrs


def _validate(path, version):
    if version == "0.4":
        from ome_zarr_models.v04.image import Image
    else:
        from ome_zarr_models.v05.image import Image
    return Image.from_zarr(zarr.open_group(path, mode="r"))


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_in_ome_zarr_out(tmp_path, stack_uint16, version):
    src = write_ngff(tmp_path / "in.ome.zarr", stack_uint16, "tczyx", version, levels=3,
                     scale={"t": 2.0, "z": 0.5, "y": 0.1, "x": 0.1},
                     axes_units={"t": "second", "z": "micrometer", "y": "micrometer",
                                 "x": "micrometer"})
    root = zarr.open_group(src, mode="a")
    meta_key = "ome" if version == "0.5" else None
    omero = {"channels": [
        {"label": "dapi", "color": "0000FF",
         "window": {"start": 0, "end": 300, "min": 0, "max": 65535}},
        {"label": "gfp", "color": "00FF00",
         "window": {"start": 10, "end": 900, "min": 0, "max": 65535}}]}
    if meta_key:
        root.attrs["ome"] = {**root.attrs["ome"], "omero": omero}
    else:
        root.attrs["omero"] = omero
    before = tree_bytes(src, skip_metadata=False)
    out = tmp_path / "out.ome.zarr"
    report = train_and_apply(src, out, device="cpu", train_planes=2,
                                     save_model=tmp_path / "m.onnx", **QUICK)
    assert report.levels == 3 and report.output_format == f"OME-Zarr NGFF {version}"
    assert report.channels[1].training_planes == [0, 5]
    assert tree_bytes(src, skip_metadata=False) == before  # input untouched

    _validate(out, version)  # an independent validator accepts it
    (mi, _), (mo, attrs) = _attrs(src), _attrs(out)
    msi, mso = mi["multiscales"][0], mo["multiscales"][0]
    assert mso["axes"] == msi["axes"]
    assert [d["coordinateTransformations"] for d in mso["datasets"]] == \
        [d["coordinateTransformations"] for d in msi["datasets"]]
    assert mo["omero"] == omero
    levels_in = [zarr.open_array(src / d["path"]) for d in msi["datasets"]]
    levels_out = [zarr.open_array(out / d["path"]) for d in mso["datasets"]]
    assert [a.shape for a in levels_out] == [a.shape for a in levels_in]
    assert all(a.dtype == np.uint16 for a in levels_out)
    assert levels_out[0].chunks == (1, 1, 1, 75, 133)  # one plane per chunk
    denoised = levels_out[0][:]
    assert np.std(np.diff(denoised.astype(float), axis=-1)) < \
        0.5 * np.std(np.diff(stack_uint16.astype(float), axis=-1))  # much smoother
    prov = attrs["fm2s"]
    assert len(prov["channels"]) == 2 and prov["channels"][1]["model_file"].endswith("m_c1.onnx")
    assert prov["channels"][0]["training_planes"] == [0, 5]  # 2 of the 6 t x z planes
    assert (tmp_path / "m_c0.onnx").exists() and (tmp_path / "m_c1.onnx").exists()

    # the ome-zarr-py reader sees the same pyramid
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(out)))()))
    assert len(node.data) == 3

    # apply with the saved per-channel models reproduces the output exactly
    again = tmp_path / "again.ome.zarr"
    res = _invoke("apply", tmp_path / "m.onnx", src, "-o", again, "--provider", "cpu", "-q")
    assert res.exit_code == 0, res.output
    assert np.array_equal(zarr.open_array(again / mso["datasets"][0]["path"])[:], denoised)


def test_float32_output(tmp_path, stack_uint16, quick_model):
    src = write_ngff(tmp_path / "in.ome.zarr", stack_uint16[:, :1], "tczyx", "0.5", levels=1)
    res = _invoke("apply", quick_model, src, "--dtype", "float32", "-q", "--provider", "cpu")
    assert res.exit_code == 0, res.output
    out = zarr.open_array(tmp_path / "in.fm2s.ome.zarr" / "s0")
    assert out.dtype == np.float32 and not np.all(out[:] == np.rint(out[:]))


def test_tile_size_does_not_change_a_byte(tmp_path, stack_uint16, quick_model):
    src = write_ngff(tmp_path / "in.ome.zarr", stack_uint16, "tczyx", "0.4", levels=2)
    outs = []
    for tile in (64, 4096):
        out = tmp_path / f"t{tile}.ome.zarr"
        res = _invoke("apply", quick_model, src, "-o", out, "--tile", tile, "-q")
        assert res.exit_code == 0, res.output
        outs.append(tree_bytes(out))
    assert outs[0] == outs[1] and len(outs[0]) > 2 * 2 * 3


def test_cli_train_and_apply_default_recipe(tmp_path, stack_uint16, monkeypatch):
    """The whole command with the default recipe, on a one-channel z-stack."""
    src = write_ngff(tmp_path / "z.ome.zarr", stack_uint16[0, 0], "zyx", "0.5", levels=2)
    args = ["train-and-apply", str(src), "--device", "cpu", "--save-model",
            str(tmp_path / "z model.onnx"), "--seed", "2"]
    # the command line as the shell hands it to the program (CliRunner leaves pytest's)
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/fm2s-tile", *args])
    res = _invoke(*args)
    assert res.exit_code == 0, res.output
    # auto names the synthesis it chose (its own measured one, or a preset), 3 x 2D planes
    assert re.search(r"model fast/[a-z]+ trained on 3 plane\(s\), \d+ steps", res.output)
    # the noise measured on the training planes and the choice made, printed and recorded
    assert "auto: white noise" in res.output and "compared 5 noise syntheses" in res.output
    assert (tmp_path / "z model.onnx").exists()
    out = tmp_path / "z.fm2s.ome.zarr"
    _validate(out, "0.5")
    _, attrs = _attrs(out)
    # the recorded command is the one run, quoted so that it can be pasted into a shell
    assert attrs["fm2s"]["command"] == shlex.join(["fm2s-tile", *args])
    assert shlex.split(attrs["fm2s"]["command"])[1:] == args
    channel = attrs["fm2s"]["channels"][0]
    assert channel["seed"] == 2
    assert channel["noise"]["decision"] in res.output
    assert channel["noise"]["measured"]["gain"] > 0 and not channel["noise"]["correlated"]
    saved = OnnxDenoiser(tmp_path / "z model.onnx", provider="cpu")
    assert json.loads(saved.metadata["noise"]) == channel["noise"]


def test_imagej_hyperstack_end_to_end(tmp_path, stack_uint16):
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, stack_uint16.transpose(0, 2, 1, 3, 4), imagej=True,
                     resolution=(5.0, 5.0), metadata={"axes": "TZCYX", "spacing": 0.5,
                                                      "unit": "um", "finterval": 3.0})
    res = _invoke("info", path)
    assert res.exit_code == 0 and "ImageJ TIFF" in res.output and "2 x 2 x 3 x 75 x 133" in \
        res.output
    report = train_and_apply(path, device="cpu", **QUICK)
    out = tmp_path / "hyper.fm2s.ome.zarr"
    assert report.output == str(out)
    _validate(out, "0.5")
    ms, _ = _attrs(out)
    assert ms["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == \
        pytest.approx([3.0, 1.0, 0.5, 0.2, 0.2])
    assert zarr.open_array(out / "0").shape == stack_uint16.shape


def test_http_ome_zarr_end_to_end(tmp_path, http_server, stack_uint16, monkeypatch):
    root, url = http_server
    write_ngff(root / "remote.ome.zarr", stack_uint16[:, 0], "tzyx", "0.4", levels=2)
    res = _invoke("info", f"{url}/remote.ome.zarr")
    assert res.exit_code == 0, res.output
    assert "NGFF 0.4" in res.output and "levels: 2" in res.output
    monkeypatch.chdir(tmp_path)
    report = train_and_apply(f"{url}/remote.ome.zarr", device="cpu", **QUICK)
    out = tmp_path / "remote.fm2s.ome.zarr"  # a URL's output goes to the current folder
    assert report.output == str(out)
    _validate(out, "0.4")
    assert zarr.open_array(out / "s1").shape == (2, 3, 37, 66)


def test_sample_command_writes_valid_ome_zarr(tmp_path):
    res = _invoke("sample", tmp_path / "s.ome.zarr", "--seed", 3)
    assert res.exit_code == 0, res.output
    for name in ("s.ome.zarr", "s.truth.ome.zarr"):
        _validate(tmp_path / name, "0.5")
    noisy = zarr.open_array(tmp_path / "s.ome.zarr" / "0")
    truth = zarr.open_array(tmp_path / "s.truth.ome.zarr" / "0")
    assert noisy.dtype == np.uint16 and noisy.shape == truth.shape and noisy.ndim == 5
    res = _invoke("sample", tmp_path / "s.ome.zarr")
    assert res.exit_code == 1 and "exists" in res.output


def test_training_planes_spread_evenly():
    assert training_planes(40, 8) == [0, 6, 11, 17, 22, 28, 33, 39]
    assert training_planes(3, 8) == [0, 1, 2]
    assert training_planes(10, 1) == [4]


def test_resolve_models(tmp_path, quick_model):
    assert resolve_models(quick_model, 3) == [quick_model]
    with pytest.raises(Exception, match="2 models for 3"):
        resolve_models(f"{quick_model},{quick_model}", 3)
    with pytest.raises(Exception, match="does not exist"):
        resolve_models(tmp_path / "none.onnx", 2)


def _one_line_error(res):
    lines = res.output.strip().splitlines()
    return res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: ") \
        and "Traceback" not in res.output


@pytest.mark.parametrize("extra,match", [
    (["--tile", "4"], "--tile 4: too small"),
    (["-o", "{tmp}/out.tif"], "holds one 2D plane"),
    (["-o", "{tmp}/out.h5"], "unknown extension"),
    (["-o", "{tmp}/in.ome.zarr/inner.zarr"], "nest in the input"),
    (["-o", "{tmp}/nofolder/out.ome.zarr"], "does not exist"),
    (["--axes", "czyx"], "contradicts"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "excludes workers"),
    (["--workers", "0"], "positive number of worker processes"),
    (["--save-model", "{tmp}/m.txt"], "ending in .onnx"),
    (["--ngff", "0.3"], "0.3"),
])
def test_bad_volume_options_get_one_line_and_write_nothing(tmp_path, stack_uint16, extra, match):
    src = write_ngff(tmp_path / "in.ome.zarr", stack_uint16, "tczyx", "0.5", levels=1)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = _invoke("train-and-apply", src, *[e.format(tmp=tmp_path) for e in extra])
    assert _one_line_error(res), res.output
    assert match in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_apply_checks_the_model_count(tmp_path, stack_uint16, quick_model):
    src = write_ngff(tmp_path / "in.ome.zarr", stack_uint16, "tczyx", "0.5", levels=1)
    res = _invoke("apply", f"{quick_model},{quick_model},{quick_model}", src)
    assert _one_line_error(res) and "3 models for 2 channel(s)" in res.output
    assert not (tmp_path / "in.fm2s.ome.zarr").exists()


def test_info_on_a_2d_image(tmp_path, noisy_and_truth):
    write_image(tmp_path / "a.tif", noisy_and_truth[0])
    res = _invoke("info", tmp_path / "a.tif")
    assert res.exit_code == 0 and "2D TIFF image" in res.output
    assert "axes yx, shape 64 x 80, uint16" in res.output and "a.fm2s.tif" in res.output


def test_progress_weights_cover_every_voxel_once(quick_model, stack_uint16):
    import dask.array as da

    from fm2s.jobs import _block_weights
    from fm2s.tiling import denoise_array

    lazy = denoise_array(da.from_array(stack_uint16), [quick_model.read_bytes()], 5, tile=64,
                         chunk=48, block=0)
    tiles, voxels = _block_weights(lazy, 64)
    assert len(tiles) == len(lazy.to_delayed().ravel()) == lazy.npartitions
    assert sum(voxels) == stack_uint16.size
    # per plane of 75 x 133: blocks 75 x 96 and 75 x 37 (their 5-pixel halo on the inner
    # sides is read, not computed), run as 2 x 2 and 2 x 1 tiles of 64 pixels
    assert lazy.chunks[-2:] == ((75,), (96, 37))
    assert tiles == [4, 2] * 12


def test_same_plane_same_output_in_any_container(tmp_path, noisy_and_truth):
    """An 8-bit plane as a PNG and as a one-plane OME-Zarr trains and denoises the same."""
    plane = np.clip(noisy_and_truth[0].astype(np.int64) - 80, 0, 255).astype(np.uint8)
    png = write_image(tmp_path / "cells.png", plane)
    zarr_in = write_ngff(tmp_path / "cells.ome.zarr", plane, "yx", "0.5", levels=1)
    a = train_and_apply(png, device="cpu", seed=4)
    b = train_and_apply(zarr_in, device="cpu", seed=4)
    assert a.channels[0].steps == b.channels[0].steps == 725  # both a single plane
    assert a.output.endswith("cells.fm2s.png") and b.output.endswith("cells.fm2s.ome.zarr")
    from conftest import read_image

    out_png = read_image(tmp_path / "cells.fm2s.png")
    out_zarr = zarr.open_array(tmp_path / "cells.fm2s.ome.zarr" / "s0")[:]
    assert out_png.dtype == out_zarr.dtype == np.uint8
    assert np.array_equal(out_png, out_zarr)
    assert not np.array_equal(out_png, plane)


def test_the_same_planes_as_t_or_z_give_the_same_output(tmp_path):
    """Four planes as a timelapse (tyx, NGFF 0.4) and as a z-stack (zyx, NGFF 0.5): the same
    training planes, model and denoised bytes (tests/test_fmd_stack.py on FMD captures)."""
    from fm2s.readers import open_image
    from fm2s.sample import synthetic_stack

    noisy, _ = synthetic_stack((1, 1, 4, 48, 56), np.random.default_rng(5))
    planes = noisy[0, 0]
    outs = []
    for axes, version in (("tyx", "0.4"), ("zyx", "0.5")):
        src = write_ngff(tmp_path / f"{axes}.ome.zarr", planes, axes, version, levels=1)
        report = train_and_apply(src, device="cpu", seed=2, samples=4)
        assert report.channels[0].training_planes == [0, 1, 2, 3]
        outs.append(np.asarray(open_image(report.output).data))
    assert outs[0].dtype == planes.dtype and outs[0].shape == planes.shape
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], planes)


def test_a_bright_plane_is_not_clipped_at_the_training_planes(tmp_path):
    """Plane 4 of 9, three times brighter than the two training planes (0 and 8): its
    output keeps its brightness, and it is denoised about as well as its neighbours."""
    from fm2s.sample import psnr, synthetic_stack

    noisy, truth = synthetic_stack((1, 1, 9, 64, 80), np.random.default_rng(11))
    noisy, truth = noisy[0, 0].astype(np.float64), truth[0, 0].astype(np.float64)
    noisy[4] *= 3
    truth[4] *= 3
    noisy = noisy.astype(np.uint16)
    src = write_ngff(tmp_path / "z.ome.zarr", noisy, "zyx", "0.5", levels=1)
    report = train_and_apply(src, device="cpu", train_planes=2, samples=40)
    assert report.channels[0].training_planes == [0, 8]
    assert report.channels[0].mapped_planes == 1 and "1 of 9 plane(s)" in report.warnings[0]
    out = zarr.open_array(tmp_path / "z.fm2s.ome.zarr" / "s0")[:]
    assert out[4].max() > 2 * noisy[[0, 8]].max()
    gains = [psnr(out[i], truth[i]) - psnr(noisy[i], truth[i]) for i in range(9)]
    assert gains[4] > 0.5 * np.mean(gains[3:6:2]) > 0, gains
    prov = _attrs(tmp_path / "z.fm2s.ome.zarr")[1]["fm2s"]
    assert prov["channels"][0]["data_range"] == [float(noisy.min()), float(noisy.max())]
    assert "range_rule" in prov


def test_apply_to_data_of_another_range_is_not_flattened(tmp_path, quick_model, stack_uint16):
    """int16 data thousands below the model's range is mapped into it: the output follows
    the data (shifting the data shifts the output by as much) and keeps the structure of
    the in-range result, instead of coming out flat at the model's clamp."""
    data = stack_uint16[0, 0].astype(np.int16)
    outs = {}
    for shift in (0, 3000, 4000):
        src = write_ngff(tmp_path / f"s{shift}.ome.zarr", data - np.int16(shift), "zyx", "0.5",
                         levels=1)
        res = _invoke("apply", quick_model, src, "-q")
        assert res.exit_code == 0, res.output
        assert ("plane(s) lie outside" in res.output) == (shift > 0)
        outs[shift] = zarr.open_array(tmp_path / f"s{shift}.fm2s.ome.zarr" / "s0")[:]
    assert all(o.dtype == np.int16 for o in outs.values())
    assert np.abs((outs[3000].astype(int) + 3000) - (outs[4000].astype(int) + 4000)).max() <= 1
    assert np.corrcoef(outs[3000].ravel(), outs[0].ravel())[0, 1] > 0.8  # flat: about 0
    assert np.std(np.diff(outs[3000].astype(float), axis=-1)) < \
        0.5 * np.std(np.diff(data.astype(float), axis=-1))


def test_progress_shows_tiles_and_rate(tmp_path, quick_model, stack_uint16):
    from io import StringIO

    from rich.console import Console

    from fm2s.jobs import apply
    from fm2s.progress import ProgressDisplay

    src = write_ngff(tmp_path / "in.ome.zarr", stack_uint16, "tczyx", "0.5", levels=2)
    screen = StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    apply(quick_model, src, provider="cpu", tile=32, progress=ProgressDisplay(console))
    text = screen.getvalue()
    tiles = 12 * -(-75 // 32) * -(-133 // 32)  # 12 planes of 75 x 133 in tiles of 32
    assert "denoising" in text and f"/{tiles} tiles" in text and "Mvoxel/s" in text
    assert "pyramid level 1" in text and "chunks" in text
    quiet = StringIO()
    apply(quick_model, src, tmp_path / "q.ome.zarr", provider="cpu",
          progress=ProgressDisplay(Console(file=quiet, force_terminal=True), quiet=True))
    assert quiet.getvalue() == ""


def test_the_channels_of_a_stack_trained_together(tmp_path, stack_uint16):
    """batched=True (CUDA's default): a stack's two channel models train as one program,
    each the model its channel gets alone up to float rounding; the default on a CPU trains
    them one at a time."""
    from fm2s.readers import open_image

    src = write_ngff(tmp_path / "in.ome.zarr", stack_uint16, "tczyx", "0.5", levels=1)
    together = train_and_apply(src, tmp_path / "together.ome.zarr", device="cpu",
                               batched=True, **QUICK)
    apart = train_and_apply(src, tmp_path / "apart.ome.zarr", device="cpu", **QUICK)
    assert [c.batched for c in together.channels] == [2, 2]
    assert [c.batched for c in apart.channels] == [1, 1]
    a = np.asarray(open_image(together.output).data, np.int64)
    b = np.asarray(open_image(apart.output).data, np.int64)
    assert np.abs(a - b).max() <= 2 and np.mean(a != b) < 0.01
    prov = zarr.open_group(together.output, mode="r").attrs["fm2s"]
    assert [c["batched"] for c in prov["channels"]] == [2, 2]
