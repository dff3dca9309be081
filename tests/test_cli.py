import numpy as np
import onnxruntime as ort
import pytest
import tifffile
from conftest import read_image, write_image  # noqa: I001
from typer.testing import CliRunner

from fm2s.cli import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_the_commands():
    res = _invoke("--help")
    assert res.exit_code == 0
    for name in ("train-and-apply", "apply", "demo"):
        assert name in res.output
    res = _invoke("train-and-apply", "--help")
    assert "confocal" in res.output and "--seed" in res.output


def test_version_prints_the_package_version():
    from fm2s import __version__

    res = _invoke("--version")
    assert res.exit_code == 0
    assert res.output == f"fm2s-tile {__version__}\n"


@pytest.fixture
def small_png(tmp_path, noisy_and_truth):
    noisy, _ = noisy_and_truth
    img = np.clip(noisy.astype(np.int64) - 80, 0, 255).astype(np.uint8)
    path = tmp_path / "cells.png"
    write_image(path, img)
    return path


def test_train_and_apply_then_apply_reproduces_it(tmp_path, small_png):
    before = small_png.read_bytes()
    out, model = tmp_path / "out.png", tmp_path / "m.onnx"
    res = _invoke("train-and-apply", small_png, "-o", out, "--save-model", model, "--seed", 3,
                  "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output
    assert "steps on cpu" in res.output and "warning" not in res.output
    assert small_png.read_bytes() == before  # input untouched
    denoised = read_image(out)
    assert denoised.dtype == np.uint8 and denoised.shape == read_image(small_png).shape

    out2 = tmp_path / "again.png"
    res = _invoke("apply", model, small_png, "-o", out2, "--provider", "cpu")
    assert res.exit_code == 0, res.output
    diff = np.abs(read_image(out2).astype(int) - denoised.astype(int))
    assert diff.max() <= 1

    # the ONNX file alone, run on raw pixel values, gives the same image
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    raw = read_image(small_png).astype(np.float32)[None, None]
    direct = np.clip(np.rint(sess.run(None, {"raw": raw})[0][0, 0]), 0, 255)
    assert np.abs(direct - denoised).max() <= 1

    # same seed, same result
    out3 = tmp_path / "seeded.png"
    _invoke("train-and-apply", small_png, "-o", out3, "--seed", 3, "--device", "cpu", "-q")
    assert np.array_equal(read_image(out3), denoised)


def test_default_output_and_float_tiff(tmp_path, noisy_and_truth):
    noisy, _ = noisy_and_truth
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, noisy.astype(np.float32) / 7.0)
    res = _invoke("train-and-apply", src, "--device", "cpu", "-q", "--recipe", "v2")
    assert res.exit_code == 0, res.output
    out = read_image(tmp_path / "img.fm2s.tif")
    assert out.dtype == np.float32 and out.shape == noisy.shape


def _assert_clean_failure(res, tmp_path, before):
    assert res.exit_code != 0
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("case", ["missing", "truncated", "extension", "rgb", "tiny",
                                  "recipe", "microscope", "seed", "device", "model_ext",
                                  "same_as_input", "exists", "no_folder", "out_ext",
                                  "out_float_png", "train_planes", "tile",
                                  "workers_and_scheduler", "scheduler", "views",
                                  "fp16_without_cuda"])
def test_bad_input_gets_one_line_and_writes_nothing(tmp_path, small_png, case):
    from PIL import Image

    args = {"input": small_png, "extra": []}
    if case == "missing":
        args["input"] = tmp_path / "nope.png"
    elif case == "truncated":
        bad = tmp_path / "bad.png"
        bad.write_bytes(small_png.read_bytes()[:200])
        args["input"] = bad
    elif case == "extension":
        bad = tmp_path / "img.jpg"
        bad.write_bytes(b"\xff\xd8\xff")
        args["input"] = bad
    elif case == "rgb":
        bad = tmp_path / "rgb.png"
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad)
        args["input"] = bad
    elif case == "tiny":
        bad = tmp_path / "tiny.png"
        Image.fromarray(np.zeros((4, 40), np.uint8)).save(bad)
        args["input"] = bad
    elif case == "recipe":
        args["extra"] = ["--recipe", "best"]
    elif case == "microscope":
        args["extra"] = ["--microscope", "sem"]
    elif case == "seed":
        args["extra"] = ["--seed", "-4"]
    elif case == "device":
        args["extra"] = ["--device", "tpu"]
    elif case == "model_ext":
        args["extra"] = ["--save-model", str(tmp_path / "m.txt")]
    elif case == "same_as_input":
        args["extra"] = ["-o", str(small_png), "--overwrite"]
    elif case == "exists":
        (tmp_path / "taken.png").write_bytes(small_png.read_bytes())
        args["extra"] = ["-o", str(tmp_path / "taken.png")]
    elif case == "no_folder":
        args["extra"] = ["-o", str(tmp_path / "nowhere" / "out.png")]
    elif case == "out_ext":
        args["extra"] = ["-o", str(tmp_path / "o.jpg")]
    elif case == "out_float_png":
        args["extra"] = ["-o", str(tmp_path / "o.png"), "--dtype", "float32"]
    elif case == "train_planes":
        args["extra"] = ["--train-planes", "0"]
    elif case == "tile":
        args["extra"] = ["--tile", "3"]
    elif case == "workers_and_scheduler":
        args["extra"] = ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]
    elif case == "scheduler":
        args["extra"] = ["--scheduler", "nonsense"]
    elif case == "views":
        args["extra"] = ["--views", "3"]
    elif case == "fp16_without_cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            pytest.skip("this onnxruntime has CUDA")
        args["extra"] = ["--precision", "fp16"]
    before = sorted(p.name for p in tmp_path.iterdir())
    res = _invoke("train-and-apply", args["input"], *args["extra"])
    _assert_clean_failure(res, tmp_path, before)


def test_apply_with_a_bad_model(tmp_path, small_png):
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"not a model")
    before = sorted(p.name for p in tmp_path.iterdir())
    _assert_clean_failure(_invoke("apply", bad, small_png), tmp_path, before)
    _assert_clean_failure(_invoke("apply", tmp_path / "none.onnx", small_png), tmp_path, before)


def test_fp16_apply_without_cuda_names_the_flag_and_the_way_out(tmp_path, small_png,
                                                                  quick_model):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    before = sorted(p.name for p in tmp_path.iterdir())
    res = _invoke("apply", quick_model, small_png, "--precision", "fp16")
    _assert_clean_failure(res, tmp_path, before)
    assert "--precision fp16: runs on onnxruntime's CUDA provider only" in res.output
    assert "use fp32" in res.output
    res = _invoke("apply", quick_model, small_png, "--provider", "cuda")
    _assert_clean_failure(res, tmp_path, before)
    assert "--provider cuda:" in res.output and "onnxruntime-gpu" in res.output


def test_parameter_errors_are_worded_as_flags(tmp_path, small_png):
    res = _invoke("train-and-apply", small_png, "--tile", "3")
    assert "--tile 3: too small" in res.output
    res = _invoke("apply", tmp_path / "m.onnx,b.onnx", small_png)
    assert res.output.startswith("error: MODEL ")


def test_png_to_tiff_and_float_output(tmp_path, small_png, quick_model):
    """Writers follow the output's extension: a PNG in, a float32 TIFF out."""
    out = tmp_path / "out.tif"
    res = _invoke("apply", quick_model, small_png, "-o", out, "--dtype", "float32", "-q")
    assert res.exit_code == 0, res.output
    back = read_image(out)
    assert back.dtype == np.float32 and back.shape == read_image(small_png).shape
    assert "fm2s" in tifffile.TiffFile(out).pages[0].description
